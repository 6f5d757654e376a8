"""Whole-dataset jobs: work that reads what the stages before it stored and produces one result.

Fitting a head, evaluating, comparing baselines, deriving perturbed copies, ingesting a folder:
none of them is per-image work resumed by keys, so none takes ids, an executor or a retry flag.
A job says how to `compute` its result; `run` times it, counts what it did and passes progress on.
"""

from __future__ import annotations

import time
from abc import abstractmethod

from pipeline.engine.progress import Progress
from pipeline.engine.stage import RunStats, Stage


class Job(Stage):
    """A step over a whole dataset. Subclasses implement `compute(stats)`.

    `compute` fills `stats` (rows done, errors), says how many rows it will go through with
    `begin(total)` and calls `advance(n)` as it gets through them, for the caller's progress bar.
    Whatever else it produces (a model folder, tables, derived files) it keeps on the instance.
    """

    _progress: Progress | None = None

    @abstractmethod
    def compute(self, stats: RunStats) -> None: ...

    def run(self, progress: Progress | None = None) -> RunStats:
        start = time.perf_counter()
        stats = RunStats(self.name, self.label())
        self._progress = progress
        try:
            self.compute(stats)
        finally:
            self._progress = None
        stats.seconds = time.perf_counter() - start
        return stats

    def begin(self, total: int) -> None:
        """This run goes through `total` rows (sets the caller's progress bar, if any)."""
        if self._progress is not None:
            self._progress.start(total)

    def advance(self, n: int) -> None:
        """`n` more rows done (moves the caller's progress bar, if any)."""
        if self._progress is not None:
            self._progress.advance(n)

    def label(self) -> str:
        """What the run reports in place of a fingerprint (most jobs: their fingerprint)."""
        return self.fingerprint
