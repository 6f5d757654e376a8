"""Progress for the CLI: a tqdm bar with total, rate and ETA on a terminal; elsewhere (CI logs, nohup,
a pipe) a one-line log message every `every` seconds and at the end. Log lines go through tqdm's
logging redirect while a bar is open, so they never break it."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("item")


class ProgressBar:
    """Implements the engine's Progress protocol (`start(total)`, `advance(n)`) for one stage.

    Args:
        desc: the stage's name.
        unit: what a row is ("img", "file", "method").
        every: seconds between log lines when stderr is not a terminal.
        tty: force terminal (True) or log (False) mode; None: ask stderr.
    """

    def __init__(self, desc: str, unit: str = "img", every: float = 30.0, tty: bool | None = None) -> None:
        self.desc, self.unit, self.every = desc, unit, every
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.total: int | None = None
        self.done = 0
        self.bar = None
        self._t0 = self._last = time.monotonic()

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self._t0 = self._last = time.monotonic()
        if self.tty and total:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, total=total, unit=self.unit, dynamic_ncols=True, leave=False)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif not self.tty and time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            log.info("%s", self.line())

    def line(self) -> str:
        """`caption: 512/2000 (25.6%), 12.3 img/s, ETA 2m01s` (what the log mode prints)."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}/{self.total if self.total is not None else '?'}"
        if self.total:
            text += f" ({100 * self.done / self.total:.1f}%)"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            left = int((self.total - self.done) / rate)
            text += f", ETA {left // 60}m{left % 60:02d}s"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
