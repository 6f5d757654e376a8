"""Per-image feature stages: a short base wiring small engine pieces, each with one job.

- which ids to compute: engine/resume.py (resume by keys, read failures whose cause is gone);
- the rows a chunk is computed from, and batches prepared ahead: engine/inputs.py;
- running a batch with isolation and out-of-memory bisection: engine/batches.py;
- writing one part per chunk, atomically: PartDir.write (engine/store.py).

A concrete stage declares its name, its inputs (the first one drives: its rows are the work), its
config class, its output schema and how to turn a batch of input rows into output rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.engine import batches, errors, inputs, keyindex, locations, resume
from pipeline.engine.config import pinned
from pipeline.engine.executors import Executor, InProcessExecutor
from pipeline.engine.imageio import DEFAULT_MAX_PIXELS
from pipeline.engine.progress import Progress
from pipeline.engine.schemas import STATUS_ERROR, STATUS_OK
from pipeline.engine.stage import MANIFEST, STAGES, ChunkResult, RunStats, Stage, part_summary
from pipeline.engine.store import PartDir, Store

log = logging.getLogger(__name__)

SystemicError = batches.SystemicError  # what stops a run (the CLI prints it as one line)
PASSES = 3  # passes over the work before images still without a row fail the run
ORDER_WINDOW = 16  # chunks read together and sorted by a stage's batch_order before they are cut


class IncompleteRunError(RuntimeError):
    """Images still have no row after every pass: the run failed, whatever the workers said."""


class WorkerMismatchError(RuntimeError):
    """A worker would compute another configuration than the driver's: it refuses the task."""


class FeatureStage(Stage):
    """A stage whose output is one row per image under features/<name>/<fingerprint>/.

    Subclasses set `inputs` (the first is the driver), `driver_columns`, `lookup_columns` (small
    columns of the other inputs, joined by image_id), and implement `schema` and `process`.
    """

    per_image = True
    reads_images: ClassVar[bool] = False  # its batches are prepared from image files (a feed can help)
    default_batch_size: ClassVar[int] = 16  # per model call, on an 80 GB GPU (runtime.batch_sizes overrides)
    driver_columns: ClassVar[tuple[str, ...]] = ()
    lookup_columns: ClassVar[dict[str, tuple[str, ...]]] = {}

    @property
    @abstractmethod
    def schema(self) -> pa.Schema: ...

    @abstractmethod
    def process(self, batch: pa.Table) -> list[dict[str, Any]] | pa.Table:
        """Turn input rows (all with status ok upstream) into output rows, one per input row.

        A row the stage cannot compute (an undecodable image) is returned with its error columns
        (`errors.error_fields`: status "error", a kind, a message). An exception escaping here fails
        the batch: the base retries halves to isolate it.
        """

    def setup(self) -> None:
        """Load what the stage needs (models) before its first chunk; a failure here stops the run."""

    def preparer(self) -> inputs.ImageRows | None:
        """What prepares a batch for `process` (CPU work: read, decode, preprocess), picklable so that
        feed processes can run it; None: nothing to prepare. Called after `setup` (it may carry the
        loaded model's processors, never the model)."""
        return None

    def prepare(self, batch: pa.Table) -> list[Any] | None:
        """One prepared item per row, passed to `process(batch, prepared)`; None calls `process(batch)`."""
        preparer = self.preparer()
        return preparer(batch) if preparer is not None else None

    def image_rows(self, transform=None, columns: tuple[str, ...] = (), fallback: bool = True) -> inputs.ImageRows:
        """An ImageRows with this run's limits (the ones the manifest's writer checked files against: its
        config's `max_image_pixels` and `read_limits()`, so a stage never reads or decodes what ingest
        would have refused)."""
        writer = self.pipeline.stages.get(STAGES.producer(MANIFEST))
        max_pixels = getattr(writer, "max_image_pixels", DEFAULT_MAX_PIXELS)
        limits = writer.read_limits() if hasattr(writer, "read_limits") else locations.LIMITS
        return inputs.ImageRows(max_pixels, self.runtime.loader_threads, transform, columns, fallback, limits)

    def summary(self) -> dict[str, Any]:
        return part_summary(self.name, self.fingerprint, self.store.features(self.name, self.fingerprint))

    @property
    def output(self) -> PartDir:
        return self.store.features(self.name, self.fingerprint, self.schema)

    def todo(self, ids: Iterable[str] | None = None, retry_errors: bool = False) -> list[str]:
        """Driver ids without a row in the output, in driver order (see engine/resume.py)."""
        source = self.input_dir(self.inputs[0])
        if not source.exists():
            hint = "`item ingest PATH`" if self.inputs[0] == MANIFEST else f"`item {self.inputs[0]}`"
            raise FileNotFoundError(
                f"{self.name} reads {self.inputs[0]} rows from {source.path}, and there are "
                f"none for this configuration: run {hint} first"
            )
        return resume.todo(source, self.output, self.store.manifest, ids, retry_errors)

    def unwritten(self, ids: Iterable[str], before: set[tuple[str, int, int]]) -> list[str]:
        """Those of `ids` without a row in a part written since `before` (the output's part signatures
        when the run began): lost chunks, including images whose old error row a retry (or a read
        failure computed again) was meant to replace."""
        wanted = list(ids)
        out = self.output
        index = out.index()
        fresh = [index.part(i)[0] for i, sig in enumerate(out.signature()) if sig not in before]
        written = keyindex.KeySet(np.concatenate(fresh) if fresh else np.zeros((0, keyindex.WORDS), np.uint64))
        has_row = written.contains(keyindex.encode(wanted)[0])
        return [i for i, has in zip(wanted, has_row, strict=True) if not has]

    def run(
        self,
        ids: Iterable[str] | None = None,
        executor: Executor | None = None,
        progress: Progress | None = None,
        retry_errors: bool = False,
    ) -> RunStats:
        out = self.output
        new = not out.path.is_dir()
        if new and not self.todo(ids):  # nothing to do: leave no empty folder behind
            return RunStats(self.name, self.fingerprint)
        try:
            with out.lock(f"{self.name} [{self.fingerprint}]"):
                return self._run_locked(ids, executor, progress, retry_errors)
        except BaseException:
            # A run that failed before its first part (a model that cannot load) leaves no empty
            # configuration folder behind for `status` to list.
            if new and not out.parts():
                for leftover in ("config.json", ".lock"):
                    (out.path / leftover).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out.path.rmdir()
                    out.path.parent.rmdir()  # features/<stage>/, if this was its only configuration
            raise
        finally:
            self.close_feed()

    def _run_locked(self, ids, executor, progress, retry_errors: bool) -> RunStats:
        start = time.perf_counter()
        fp = self.fingerprint
        stats = RunStats(self.name, fp)
        todo = self.todo(ids, retry_errors)
        stats.todo = len(todo)
        if not todo:
            log.debug("%s [%s]: nothing to compute", self.name, fp)
            self._compact()  # a run killed before it compacted left superseded rows: finish its job
            stats.seconds = time.perf_counter() - start
            return stats
        out = self.output
        before = set(out.signature())
        out.write_config(self.identity())
        log.debug("%s [%s]: %d image(s) to compute", self.name, fp, len(todo))
        if progress is not None:
            progress.start(len(todo))
        executor = executor or InProcessExecutor()
        for attempt in range(PASSES):
            # In this process the chunk reports each batch as it finishes; a remote chunk, when it is done.
            task = ChunkTask(self, on_rows=progress.advance if progress is not None else None)
            for result in executor.map(task, self.chunks(set(todo))):
                stats.add(result)
                if progress is not None and not result.reported:
                    progress.advance(result.ok + result.error)
            # A distributed run can lose a chunk (a worker died after its retries ran out): check by keys.
            todo = self.unwritten(todo, before)
            if not todo:
                break
            log.warning("%s [%s]: %d image(s) still missing after pass %d", self.name, fp, len(todo), attempt + 1)
        self._compact()
        self.output.upgrade()  # parts written before the error columns beside new ones: one schema to scan
        if todo:  # never a success with rows missing: downstream stages would skip these images
            raise IncompleteRunError(
                f"{self.name} [{fp}]: {len(todo)} image(s) still have no row after {PASSES} passes "
                "(workers lost their chunks, or wrote them elsewhere); run the command again"
            )
        stats.seconds = time.perf_counter() - start
        return stats

    def _compact(self) -> None:
        """Exactly one row per image in the output folder once a run ends (see PartDir.compact)."""
        out = self.store.features(self.name, self.fingerprint, self.schema)
        if out.path.is_dir():
            out.compact(errors_only_for=self.store.manifest.index())

    def chunks(self, todo: set[str]) -> Iterator[tuple[str, pa.Table]]:
        """(part name, driver rows of `todo` with the lookup columns of the other inputs joined in)."""
        dirs = {name: self.input_dir(name) for name in (self.inputs[0], *self.lookup_columns)}
        order = self.batch_order if type(self).batch_order is not FeatureStage.batch_order else None
        yield from inputs.chunks(
            dirs, self.inputs[0], self.driver_columns, self.lookup_columns, todo, self.chunk_size, order, ORDER_WINDOW
        )

    def run_chunk(self, item: tuple[str, pa.Table], on_rows: Callable[[int], None] | None = None) -> ChunkResult:
        """Compute one chunk and write it as one part file named `item[0]` (what an executor's worker runs).

        `on_rows(n)` is called as rows finish (per batch), when the caller is in this process.
        """
        name, chunk = item
        self.setup()
        producers = {n: STAGES.producer(n) for n in self.inputs}
        good, failed = inputs.split_upstream_errors(chunk, producers)
        out = [self._rows_table(failed)] if failed else []
        if on_rows is not None and failed:
            on_rows(len(failed))
        good = self.batch_order(good)
        step = self.sizer.current
        work = [good.slice(start, step) for start in range(0, good.num_rows, step)]
        for batch, prepared in self.preparation.batches(work):
            out.append(
                batches.run_isolated(self._process_table, batch, prepared, self._failed_row, self.name, self.sizer)
            )
            if on_rows is not None:
                on_rows(batch.num_rows)
        table = pa.concat_tables(out) if out else self.schema.empty_table()
        written = self.output.write(table, metadata=self.identity(), name=name)
        columns = (table.column(c).to_pylist() for c in ("status", "error_kind", "error_stage"))
        groups = errors.tally(*columns, self.name)
        n_error = sum(groups.values())
        return ChunkResult(
            table.num_rows - n_error, n_error, written is not None, groups, reported=on_rows is not None
        )

    def _process_table(self, batch: pa.Table, prepared: list[Any] | None) -> pa.Table:
        result = self.process(batch) if prepared is None else self.process(batch, prepared)
        return result if isinstance(result, pa.Table) else self._rows_table(result)

    def _failed_row(self, image_id: str, e: Exception) -> pa.Table:
        error = errors.RowError("model_error", f"{type(e).__name__}: {e}")
        return self._rows_table([{"image_id": image_id, **errors.error_fields(error)}])

    @cached_property
    def preparation(self) -> inputs.Preparation:
        """How this stage's batches are prepared (feed processes, a loader thread, or in line)."""
        return inputs.Preparation(self.preparer, self.prepare, self.runtime, self.reads_images)

    def close_feed(self) -> None:
        """Stop the feed processes (after a run; a dask worker's cached stage keeps its feed)."""
        if "preparation" in self.__dict__:
            self.preparation.close()

    def batch_order(self, rows: pa.Table) -> pa.Table:
        """Rows in the order they are batched (rows are keyed: results do not depend on it). A stage
        whose model wants like inputs together (one resized shape) sorts them here: applied to windows
        of ORDER_WINDOW chunks before they are cut into chunks, and to each chunk's rows."""
        return rows

    @property
    def batch_size(self) -> int:
        """Per model call (runtime.batch_sizes / batch_size, else the stage's default_batch_size)."""
        return self.runtime.batch_size_of(self.name, self.default_batch_size)

    @property
    def batch_rows(self) -> int:
        """Rows handed to `process` at once: the batch size (a stage whose batch counts something else,
        embed's crops, says how many rows that makes)."""
        return self.batch_size

    @cached_property
    def sizer(self) -> batches.BatchSize:
        """Rows per `process` call as this stage runs: lowered for the rest of the run when a batch runs
        out of memory (kept across chunks: the stage instance lives as long as its worker)."""
        return batches.BatchSize(self.batch_rows)

    @property
    def chunk_size(self) -> int:
        """Rows per part file."""
        return self.runtime.chunk_size

    def _rows_table(self, rows: list[dict[str, Any]]) -> pa.Table:
        """Rows as a table of the stage's schema; an error row names this stage unless it came from upstream."""
        for row in rows:
            row.setdefault("status", STATUS_OK)
            row.setdefault("error", None)
            failed = row["status"] == STATUS_ERROR
            row["error_kind"] = row.get("error_kind") or ("unknown" if failed else None)
            row["error_stage"] = row.get("error_stage") or (self.name if failed else None)
        return pa.Table.from_pylist(rows, schema=self.schema)


# Stages by (name, fingerprint, data root) in this process: a dask worker builds each stage, and so
# loads its model, once, however many chunks it runs. The driver registers its own instances.
_STAGE_CACHE: dict[tuple[str, str, str], FeatureStage] = {}
_STAGE_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}


class ChunkTask:
    """The picklable work function an executor ships: the stage's class, the driver's configuration
    pinned (hub revisions resolved to the commits the driver resolved), the fingerprint the rows must
    carry and the absolute data root; never a model. The class pickles by reference, so a worker
    imports its module (and the `stages` package registers every stage) on its own. A worker whose
    stage would compute another fingerprint (another cache, another code version) refuses the task:
    its rows would land where the driver never looks. `on_rows` (progress) stays in this process."""

    def __init__(self, stage: FeatureStage, on_rows: Callable[[int], None] | None = None) -> None:
        self.cls = type(stage)
        self.config = pinned(stage.pipeline)
        self.root = str(Path(stage.store.root).resolve())
        self.fingerprint = stage.fingerprint
        self.key = (stage.name, stage.fingerprint, self.root)
        self.on_rows = on_rows
        _STAGE_CACHE[self.key] = stage  # this process's chunks run on the stage that runs (its settings, its feed)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_rows": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def stage(self) -> FeatureStage:
        if self.key not in _STAGE_CACHE:
            stage = self.cls(self.config, Store(self.root))
            if stage.fingerprint != self.fingerprint:
                raise WorkerMismatchError(
                    f"{stage.name}: this worker ({socket.gethostname()}, pid {os.getpid()}) computes "
                    f"configuration {stage.fingerprint}, the driver asked for {self.fingerprint}: its code "
                    f"or its configuration differs ({json.dumps(stage.identity(), sort_keys=True)[:300]})"
                )
            _STAGE_CACHE[self.key] = stage
        return _STAGE_CACHE[self.key]

    def __call__(self, item: tuple[str, pa.Table]) -> ChunkResult:
        # A worker with several threads may run two chunks of one stage at once: they share its model,
        # which is not thread-safe, so they take turns.
        with _STAGE_LOCKS.setdefault(self.key, threading.Lock()):
            return self.stage().run_chunk(item, self.on_rows)
