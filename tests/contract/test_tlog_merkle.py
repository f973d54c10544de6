"""RFC 9162 hashing and proofs: the Certificate Transparency reference tree, every proof of every
size up to 64, sampled sizes up to 10^5, mutated proofs and hostile arguments."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.tlog import (
    LogProofError,
    empty_root,
    leaf_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from server.log.merkle import Tree, consistency_ranges, inclusion_ranges, new_nodes, root_nodes

# The RFC 6962 reference tree of Certificate Transparency, as transparency-dev/merkle tests it
# (proof/verify_test.go: ``leaves``, ``roots``, ``inclusionProofs``, ``consistencyProofs``;
# the same vectors as certificate-transparency-go's merkletree tests).
LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
]  # fmt: skip
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf number counted from 1, tree size, proof)
INCLUSION = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


def reference() -> Tree:
    tree = Tree()
    for data in LEAVES:
        tree.append(leaf_hash(data))
    return tree


def h(hexes: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


def grown(size: int, tag: bytes = b"") -> Tree:
    tree = Tree()
    for i in range(size):
        tree.append(leaf_hash(tag + i.to_bytes(8, "big")))
    return tree


def naive_root(hashes: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 §2.1.1, recursively: the definition, not our code."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + naive_root(hashes[:k]) + naive_root(hashes[k:])).digest()


def test_reference_roots() -> None:
    tree = reference()
    assert tree.root(0) == empty_root()
    assert empty_root().hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    for size in range(1, 9):
        assert tree.root(size).hex() == ROOTS[size - 1]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_reference_inclusion(leaf: int, size: int, proof: list[str]) -> None:
    tree = reference()
    assert tree.inclusion(leaf - 1, size) == h(proof)
    verify_inclusion(leaf - 1, size, leaf_hash(LEAVES[leaf - 1]), h(proof), tree.root(size))


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_reference_consistency(size1: int, size2: int, proof: list[str]) -> None:
    tree = reference()
    assert tree.consistency(size1, size2) == h(proof)
    verify_consistency(size1, size2, h(proof), tree.root(size1), tree.root(size2))


def mutations(proof: list[bytes], root: bytes) -> list[list[bytes]]:
    """The corruptions transparency-dev's tests apply: garbage or roots at either end, one bit
    flipped in each hash, a hash removed, a hash inserted."""
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    out = [[*proof, root], [root, *proof], [*proof, some], [some, *proof]]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        out.append(flipped)
    if proof:
        out.append(proof[:-1])
    if len(proof) > 1:
        out.append([proof[0], some, *proof[1:]])
    return out


def test_every_proof_up_to_64() -> None:
    tree = grown(64)
    roots = [tree.root(n) for n in range(65)]
    leaves = tree.levels[0]
    for size in range(1, 65):
        assert roots[size] == naive_root(leaves[:size])
        for index in range(size):
            proof = tree.inclusion(index, size)
            verify_inclusion(index, size, leaves[index], proof, roots[size])
            for bad in mutations(proof, roots[size]):
                with pytest.raises(LogProofError):
                    verify_inclusion(index, size, leaves[index], bad, roots[size])
            for wrong_index in {index - 1, index + 1, index ^ 2} - {index}:
                if wrong_index >= 0:
                    with pytest.raises(LogProofError):
                        verify_inclusion(wrong_index, size, leaves[index], proof, roots[size])
            with pytest.raises(LogProofError):
                verify_inclusion(index, size * 2, leaves[index], proof, roots[size])
            with pytest.raises(LogProofError):
                verify_inclusion(index, size, leaf_hash(b"WrongLeaf"), proof, roots[size])
    for size2 in range(65):
        for size1 in range(size2 + 1):
            proof = tree.consistency(size1, size2)
            verify_consistency(size1, size2, proof, roots[size1], roots[size2])
            if not proof:
                continue
            for bad in [*mutations(proof, roots[size1]), []]:
                with pytest.raises(LogProofError):
                    verify_consistency(size1, size2, bad, roots[size1], roots[size2])
            with pytest.raises(LogProofError):
                verify_consistency(size1, size2, proof, roots[size2], roots[size1])
            with pytest.raises(LogProofError):
                verify_consistency(size1 + 1, size2, proof, roots[size1], roots[size2])
            if size1 > 1:
                with pytest.raises(LogProofError):
                    verify_consistency(size1 - 1, size2, proof, roots[size1], roots[size2])


def test_incremental_nodes_match_the_tree() -> None:
    """The store's append (new_nodes over the right edge) builds the same nodes as the tree."""
    tree = grown(300)
    nodes: dict[tuple[int, int], bytes] = {}
    size = 0
    for batch in (1, 2, 5, 64, 100, 128):
        leaves = tree.levels[0][size : size + batch]
        frontier = {n: nodes[n] for n in root_nodes(size)}
        nodes.update(new_nodes(size, leaves, frontier))
        size += batch
        assert naive_root(tree.levels[0][:size]) == tree.root(size)
        from server.log.merkle import tree_root

        assert tree_root(size, nodes) == tree.root(size)


BIG = grown(100_000, b"big")
BIG_ROOTS: dict[int, bytes] = {}


def big_root(size: int) -> bytes:
    if size not in BIG_ROOTS:
        BIG_ROOTS[size] = BIG.root(size)
    return BIG_ROOTS[size]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_sampled_up_to_100000(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 100_000))
    index = data.draw(st.integers(0, size - 1))
    proof = BIG.inclusion(index, size)
    verify_inclusion(index, size, BIG.levels[0][index], proof, big_root(size))
    flip = data.draw(st.integers(0, max(0, len(proof) - 1)))
    if proof:
        bad = list(proof)
        bad[flip] = bytes([bad[flip][0] ^ 1]) + bad[flip][1:]
        with pytest.raises(LogProofError):
            verify_inclusion(index, size, BIG.levels[0][index], bad, big_root(size))
    size1 = data.draw(st.integers(0, size))
    cproof = BIG.consistency(size1, size)
    verify_consistency(size1, size, cproof, big_root(size1), big_root(size))
    if cproof:
        bad = list(cproof)
        bad[flip % len(bad)] = bytes(32)
        with pytest.raises(LogProofError):
            verify_consistency(size1, size, bad, big_root(size1), big_root(size))


HUGE = 1 << 64
ZERO = bytes(32)


@pytest.mark.parametrize(
    ("index", "size"),
    [(0, 0), (1, 1), (5, 3), (-1, 4), (HUGE, HUGE + 1), (0, HUGE), (True, 2), (1.0, 2)],
)
def test_hostile_inclusion_arguments(index: object, size: object) -> None:
    with pytest.raises(LogProofError) as err:
        root_from_inclusion(index, size, ZERO, [])  # type: ignore[arg-type]
    assert err.value.code == "log_bad_argument"
    with pytest.raises(LogProofError):
        inclusion_ranges(index, size)  # type: ignore[arg-type]


@pytest.mark.parametrize(("size1", "size2"), [(5, 3), (-1, 3), (0, HUGE), (HUGE, HUGE)])
def test_hostile_consistency_arguments(size1: int, size2: int) -> None:
    with pytest.raises(LogProofError) as err:
        verify_consistency(size1, size2, [], ZERO, ZERO)
    assert err.value.code == "log_bad_argument"
    with pytest.raises(LogProofError):
        consistency_ranges(size1, size2)


def test_hostile_hashes_and_lengths() -> None:
    with pytest.raises(LogProofError):
        verify_inclusion(0, 2, b"short", [ZERO], ZERO)
    with pytest.raises(LogProofError):
        verify_inclusion(0, 2, ZERO, [b"x" * 31], ZERO)
    with pytest.raises(LogProofError):
        verify_inclusion(0, 2, ZERO, [ZERO] * 1000, ZERO)  # a proof longer than any tree's
    with pytest.raises(LogProofError):
        verify_consistency(1, 2, [ZERO] * 1000, ZERO, ZERO)
    # Equal sizes: roots must match and the proof be empty; the empty tree is consistent with all.
    verify_consistency(3, 3, [], ZERO, ZERO)
    with pytest.raises(LogProofError, match="split view"):
        verify_consistency(3, 3, [], ZERO, b"\x01" * 32)
    with pytest.raises(LogProofError):
        verify_consistency(3, 3, [ZERO], ZERO, ZERO)
    verify_consistency(0, 5, [], ZERO, b"\x01" * 32)
    with pytest.raises(LogProofError):
        verify_consistency(0, 5, [ZERO], ZERO, b"\x01" * 32)
