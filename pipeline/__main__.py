"""`python -m pipeline ...` is the `item` command (for checkouts that are not pip-installed)."""

from pipeline.app.cli import main

main()
