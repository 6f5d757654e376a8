"""How a stage tells its caller how far it is: `start(total)` once, then `advance(n)` as rows finish.

The engine only calls these; the CLI draws them (a tqdm bar on a terminal, a periodic log line
elsewhere), and library callers may pass None for no progress at all.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int) -> None:
        """The number of rows (images, files) this run will go through."""

    def advance(self, n: int) -> None:
        """`n` more rows done."""
