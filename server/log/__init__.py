"""The transparency log: every accepted snapshot (and signed evidence refused as a fork or a
replay) is one leaf of an RFC 9162 Merkle tree whose signed checkpoints anyone can check.

- :mod:`server.log.merkle`: tree heads and proof generation (verification is
  :mod:`contract.tlog`, shared with relying parties);
"""
