"""veu-server: the verifier compliance teams run."""

__version__ = "0.1.0"
