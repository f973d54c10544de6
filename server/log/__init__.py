"""The transparency log: every accepted snapshot (and signed evidence refused as a fork, a
replay or a rollback) is one leaf of an RFC 9162 Merkle tree whose signed checkpoints anyone can
check with the log's public key.

- :mod:`server.log.merkle`: tree heads and proof generation (verification is
  :mod:`contract.tlog`, shared with relying parties);
- :mod:`server.log.entries`: what a leaf says (canonical JSON);
- :mod:`server.log.note`: the log key and signed checkpoints (C2SP signed-note);
- :mod:`server.log.integrate`: integrating leaves and signing checkpoints (one writer), and
  proofs, tiles and bundles from the database;
- :mod:`server.log.tiles`: C2SP tlog-tiles paths and entry bundles;
- :mod:`server.log.check`: ``veu-server log verify``;
- :mod:`server.log.witness`: following another verifier's log and cosigning it.

It sits beside :mod:`server.compliance`: it imports :mod:`server.store`, and
:mod:`server.ingest` (which appends the leaves) and the edges import it.
"""
