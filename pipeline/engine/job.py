"""Whole-dataset jobs: work that reads what the stages before it stored and produces one result.

Fitting a head, evaluating, comparing baselines, deriving perturbed copies, ingesting a folder:
none of them is per-image work resumed by keys, so none takes ids, an executor or a retry flag.
A job says how to `compute` its result; `run` times it and counts what it did.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable

from pipeline.engine.stage import RunStats, Stage

Progress = Callable[[int], None]


class Job(Stage):
    """A step over a whole dataset. Subclasses implement `compute(stats, progress)`.

    `compute` fills `stats` (rows done, errors) and may report progress in rows; whatever else it
    produces (a model folder, tables) it keeps on the instance for the caller.
    """

    @abstractmethod
    def compute(self, stats: RunStats, progress: Progress | None) -> None: ...

    def run(self, progress: Progress | None = None) -> RunStats:
        start = time.perf_counter()
        stats = RunStats(self.name, self.label())
        self.compute(stats, progress)
        stats.seconds = time.perf_counter() - start
        return stats

    def label(self) -> str:
        """What the run reports in place of a fingerprint (most jobs: their fingerprint)."""
        return self.fingerprint
