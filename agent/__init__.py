"""veu-agent: the attester that runs on every data-center host."""
