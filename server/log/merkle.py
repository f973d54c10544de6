"""RFC 9162 Merkle trees: tree heads and the generation of inclusion and consistency proofs.

Verification lives in :mod:`contract.tlog` (a relying party needs it without the verifier) and
is re-exported here; this module adds what only the log's operator does: computing a tree head
and the proofs (RFC 9162 §2.1.3.1 ``PATH`` and §2.1.4.1 ``SUBPROOF``).

A tree is addressed by its *perfect nodes*: ``(level, index)`` is the hash of leaves
``[index * 2^level, (index + 1) * 2^level)``. Every hash a proof or a tree head needs is a
subtree ``MTH(D[a:b])`` that RFC 9162's split (at the largest power of two below the size)
reaches; :func:`nodes_of` names the perfect nodes it is made of, :func:`range_hash` folds them.
So a store can fetch every node of a proof in one query (:func:`inclusion_nodes`), and an
in-memory :class:`Tree` (tests, the benchmark) answers the same functions.

Why hand-written, not a library (December 2026, judged from their documentation and the PyPI
index, not benchmarked): ``pymerkle`` (7.0) counts leaves from one and has its own proof objects
and serialization behind an abstract storage class (one would adapt our tables to it and
translate every proof), with no signed notes, checkpoints or tiles; ``merkletools`` (2018,
unmaintained) hashes without RFC 6962's leaf and node prefixes (0x00, 0x01), so its roots
differ; ``sigstore``'s Merkle code is private (``sigstore._internal``) and only verifies Rekor
inclusion; ``tlog-scales`` and
``aics-tlog`` are months old, single-author and unvetted. The algorithms are ~150 lines of
``hashlib``, checked against the Certificate Transparency reference vectors and, as an
independent oracle, Go's ``sumdb/tlog`` (tests/contract/).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from contract.tlog import (
    MAX_TREE_SIZE,
    LogProofError,
    empty_root,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "LogProofError",
    "Node",
    "Tree",
    "consistency_nodes",
    "consistency_proof",
    "consistency_ranges",
    "empty_root",
    "inclusion_nodes",
    "inclusion_proof",
    "inclusion_ranges",
    "leaf_hash",
    "new_nodes",
    "node_hash",
    "nodes_of",
    "range_hash",
    "root_from_inclusion",
    "root_nodes",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]

#: A perfect node: (level, index) = the hash of leaves [index << level, (index + 1) << level).
Node = tuple[int, int]
Range = tuple[int, int]


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _bad(detail: str) -> LogProofError:
    return LogProofError(detail, code="log_bad_argument")


def _size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREE_SIZE:
        raise _bad(f"{name} must be an integer from 0 to 2^63-1")
    return value


def nodes_of(start: int, end: int) -> list[Node]:
    """The perfect nodes that make up the RFC 9162 subtree ``MTH(D[start:end])``, left to
    right (``start`` is aligned as RFC 9162's split leaves it)."""
    out: list[Node] = []
    while start < end:
        n = end - start
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            out.append((level, start >> level))
            break
        k = _split(n)
        level = k.bit_length() - 1
        out.append((level, start >> level))
        start += k
    return out


def range_hash(start: int, end: int, node: Callable[[Node], bytes]) -> bytes:
    """``MTH(D[start:end])`` from its perfect nodes (right to left, as the tree joins them)."""
    if start == end:
        return empty_root()
    parts = [node(n) for n in nodes_of(start, end)]
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[size])`` as the subtree ranges of its hashes, from
    the leaf up."""
    _size("index", index)
    _size("size", size)
    if index >= size:
        raise _bad(f"index {index} is not in a tree of {size} leaves")
    out: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    out.reverse()
    return out


def consistency_ranges(size1: int, size2: int) -> list[Range]:
    """RFC 9162 §2.1.4.1 ``PROOF(size1, D[size2])`` as subtree ranges, in proof order."""
    _size("size1", size1)
    _size("size2", size2)
    if size1 > size2:
        raise _bad(f"size1 {size1} is larger than size2 {size2}")
    if size1 == 0 or size1 == size2:
        return []
    out: list[Range] = []
    start, end, complete = 0, size2, True
    m = size1
    while True:
        n = end - start
        if m == n:
            if not complete:
                out.append((start, end))
            break
        k = _split(n)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
            m -= k
            complete = False
    out.reverse()
    return out


def root_nodes(size: int) -> list[Node]:
    """The perfect nodes the root of a tree of ``size`` leaves is made of."""
    return nodes_of(0, _size("size", size))


def inclusion_nodes(index: int, size: int) -> list[Node]:
    """Every perfect node an inclusion proof needs (fetch these, then :func:`inclusion_proof`)."""
    return [n for a, b in inclusion_ranges(index, size) for n in nodes_of(a, b)]


def consistency_nodes(size1: int, size2: int) -> list[Node]:
    return [n for a, b in consistency_ranges(size1, size2) for n in nodes_of(a, b)]


def _lookup(nodes: Mapping[Node, bytes] | Callable[[Node], bytes]) -> Callable[[Node], bytes]:
    if callable(nodes):
        return nodes
    table = nodes

    def get(n: Node) -> bytes:
        try:
            return table[n]
        except KeyError:
            raise LookupError(f"the tree has no node {n}") from None

    return get


def tree_root(size: int, nodes: Mapping[Node, bytes] | Callable[[Node], bytes]) -> bytes:
    return range_hash(0, _size("size", size), _lookup(nodes))


def inclusion_proof(
    index: int, size: int, nodes: Mapping[Node, bytes] | Callable[[Node], bytes]
) -> list[bytes]:
    get = _lookup(nodes)
    return [range_hash(a, b, get) for a, b in inclusion_ranges(index, size)]


def consistency_proof(
    size1: int, size2: int, nodes: Mapping[Node, bytes] | Callable[[Node], bytes]
) -> list[bytes]:
    get = _lookup(nodes)
    return [range_hash(a, b, get) for a, b in consistency_ranges(size1, size2)]


def new_nodes(
    size: int, leaves: Sequence[bytes], frontier: Mapping[Node, bytes]
) -> dict[Node, bytes]:
    """Append leaf hashes to a tree of ``size`` leaves whose right edge is ``frontier`` (at
    least the nodes of :func:`root_nodes`); answers every perfect node that appending creates
    (the leaves' level-0 nodes included)."""
    _size("size", size)
    if size + len(leaves) > MAX_TREE_SIZE:
        raise _bad("the tree would grow past 2^63-1 leaves")
    made: dict[Node, bytes] = {}
    edge = dict(frontier)
    for offset, h in enumerate(leaves):
        index = size + offset
        level = 0
        made[(0, index)] = h
        edge[(0, index)] = h
        while index & 1:
            left = edge[(level, index - 1)]
            h = node_hash(left, h)
            index >>= 1
            level += 1
            made[(level, index)] = h
            edge[(level, index)] = h
    return made


class Tree:
    """An in-memory tree of every perfect node (tests, benchmarks, a witness's replay)."""

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        h = leaf
        level = 0
        while True:
            if level == len(self.levels):
                self.levels.append([])
            row = self.levels[level]
            row.append(h)
            if len(row) % 2:
                return
            h = node_hash(row[-2], h)
            level += 1

    def node(self, n: Node) -> bytes:
        level, index = n
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return tree_root(self.size if size is None else self._within(size), self.node)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self.size if size is None else self._within(size), self.node)

    def consistency(self, size1: int, size2: int | None = None) -> list[bytes]:
        return consistency_proof(
            size1, self.size if size2 is None else self._within(size2), self.node
        )

    def _within(self, size: int) -> int:
        if not 0 <= size <= self.size:
            raise _bad(f"size {size} is past the tree's {self.size} leaves")
        return size
