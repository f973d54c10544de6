"""veu-server: the verifier compliance teams run."""
