"""veu-agent: the attester that runs on every data-center host."""

__version__ = "0.1.0"
