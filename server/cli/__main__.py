"""``python -m server.cli``: the same as the ``veu-server`` console script."""

from server.cli import main

raise SystemExit(main())
