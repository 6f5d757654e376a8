"""Per-image feature stages: resume by keys, chunking, error rows, batching with isolation, atomic writes.

A concrete stage declares its name, its inputs (the first one drives: its rows are the work), its
config class and how to turn a batch of input rows into output rows. Everything else is here.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine import devices, locations
from pipeline.engine.executors import Executor, InProcessExecutor
from pipeline.engine.imageio import load_images
from pipeline.engine.keyindex import KeyIndex, KeySet
from pipeline.engine.progress import Progress
from pipeline.engine.schemas import STATUS_ERROR, STATUS_OK
from pipeline.engine.stage import (
    MANIFEST,
    MANIFEST_STAGE,
    ChunkResult,
    RunStats,
    Stage,
    error_reason_kind,
    is_stage_name,
    part_summary,
)
from pipeline.engine.store import PartDir, Store, part_name

log = logging.getLogger(__name__)


MISSING_FILE = "cannot read file: FileNotFoundError"  # how imageio reports a file that is not there
CHANGED_FILE = "file changed since ingest:"  # ... and a path that holds other bytes (it names the path)


class SystemicError(RuntimeError):
    """Every row of a batch failed the same way: a model or code problem, not bad input. Stops the run."""


class FeatureStage(Stage):
    """A stage whose output is one row per image under features/<name>/<fingerprint>/.

    Subclasses set `inputs` (the first is the driver), `driver_columns`, `lookup_columns` (small
    columns of the other inputs, joined by image_id), and implement `schema` and `process`.
    """

    per_image = True
    driver_columns: ClassVar[tuple[str, ...]] = ()
    lookup_columns: ClassVar[dict[str, tuple[str, ...]]] = {}

    @property
    @abstractmethod
    def schema(self) -> pa.Schema: ...

    @abstractmethod
    def process(self, batch: pa.Table) -> list[dict[str, Any]] | pa.Table:
        """Turn input rows (all with status ok upstream) into output rows, one per input row.

        A row the stage cannot compute (an undecodable image) is returned with status "error" and a
        reason. An exception escaping here fails the batch: the base retries halves to isolate it.
        """

    def setup(self) -> None:
        """Load what the stage needs (models) before its first chunk; a failure here stops the run."""

    def prepare(self, batch: pa.Table) -> list[Any] | None:
        """CPU work for a batch (decode, preprocess), one item per row, run ahead in a loader thread.

        Its result is passed to `process(batch, prepared)`; None (the default) calls `process(batch)`.
        """
        return None

    def summary(self) -> dict[str, Any]:
        return part_summary(self.name, self.fingerprint, self.store.features(self.name, self.fingerprint))

    @property
    def output(self) -> PartDir:
        return self.store.features(self.name, self.fingerprint, self.schema)

    def todo(self, ids: Iterable[str] | None = None, retry_errors: bool = False) -> list[str]:
        """Driver ids without a row in the output, in driver order (optionally only `ids`).

        With `retry_errors`, ids whose rows are all errors are computed again too (the new row
        supersedes the old one for every reader).
        """
        source = self.input_dir(self.inputs[0])
        if not source.exists():
            hint = "`item ingest PATH`" if self.inputs[0] == MANIFEST else f"`item {self.inputs[0]}`"
            raise FileNotFoundError(
                f"{self.name} reads {self.inputs[0]} rows from {source.path}, and there are "
                f"none for this configuration: run {hint} first"
            )
        driver = source.index()
        out = self.output.index()
        if retry_errors:
            done: KeySet = KeySet(out.codes[out.ok])
        else:
            again = self._readable_again(out)
            done = KeySet(out.codes[~KeySet.of(again).contains(out.codes)]) if again else out
        mask = ~done.contains(driver.codes)
        if ids is not None:
            mask &= KeySet.of(pa.array(list(ids), pa.string())).contains(driver.codes)
        return list(dict.fromkeys(driver.ids(np.nonzero(mask)[0]).to_pylist()))

    def _readable_again(self, out: KeyIndex) -> list[str]:
        """Ids whose current row says their file was missing (and the manifest path exists now) or held
        other bytes (and ingest has re-pointed the image since): computed again without --retry-errors.
        Costs nothing when there are no error rows; a file still missing stays an error row."""
        if out.ok.all():
            return []
        current = out.current()
        errors = out.ids(current[~out.ok[current]]).to_pylist()
        if not errors:
            return []
        reasons = self.output.read(["image_id", "error"], ids=errors)
        errors_by_id = dict(zip(*(reasons.column(c).to_pylist() for c in ("image_id", "error")), strict=True))
        read_failures = [i for i, e in errors_by_id.items() if e.startswith((MISSING_FILE, CHANGED_FILE))]
        if not read_failures:
            return []
        paths = self.store.manifest.read(["image_id", "path"], ids=read_failures)
        again = []
        for image_id, path in zip(*(paths.column(c).to_pylist() for c in ("image_id", "path")), strict=True):
            error = errors_by_id[image_id]
            if error.startswith(MISSING_FILE) and locations.exists(path):
                again.append(image_id)  # the file is back
            elif error.startswith(CHANGED_FILE) and not error.startswith(f"{CHANGED_FILE} {path} "):
                again.append(image_id)  # ingest found the image at another path since
        return again

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
        out.write_config(self.identity())
        log.debug("%s [%s]: %d image(s) to compute", self.name, fp, len(todo))
        if progress is not None:
            progress.start(len(todo))
        executor = executor or InProcessExecutor()
        for attempt in range(3):
            # In this process the chunk reports each batch as it finishes; a remote chunk, when it is done.
            task = ChunkTask(self, on_rows=progress.advance if progress is not None else None)
            for result in executor.map(task, self.chunks(set(todo))):
                stats.add(result)
                if progress is not None and not result.reported:
                    progress.advance(result.ok + result.error)
            # A distributed run can lose a chunk (a worker died after its retries ran out): check by keys.
            todo = self.todo(ids, retry_errors=False) if not retry_errors else []
            if not todo:
                break
            log.warning(
                "%s [%s]: %d image(s) still missing after pass %d; running them again",
                self.name,
                fp,
                len(todo),
                attempt + 1,
            )
        self._compact()
        stats.seconds = time.perf_counter() - start
        return stats

    def _compact(self) -> None:
        """Exactly one row per image in the output folder once a run ends (see PartDir.compact)."""
        out = self.store.features(self.name, self.fingerprint, self.schema)
        if out.path.is_dir():
            out.compact(errors_only_for=self.store.manifest.index())

    def chunks(self, todo: set[str]) -> Iterator[tuple[str, pa.Table]]:
        """(part name, driver rows of `todo` with the lookup columns of the other inputs joined in)."""
        driver_cols = ["image_id", "status", "error", *self.driver_columns]
        lookups = {
            name: self.input_dir(name).read(["image_id", "status", "error", *cols], ids=todo)
            for name, cols in self.lookup_columns.items()
        }
        for chunk in self.input_dir(self.inputs[0]).iter_rows(driver_cols, todo, self.chunk_size):
            yield part_name(chunk.column("image_id").to_pylist()), self._join(chunk, lookups)

    def _join(self, chunk: pa.Table, lookups: dict[str, pa.Table]) -> pa.Table:
        """Prefix each input's status columns with its name and join the lookups by image_id (inner).

        Done by index, not Arrow's hash join, which refuses list columns such as `objects`.
        """
        chunk = _prefix_status(chunk, self.inputs[0])
        for name, table in lookups.items():
            index = {k: i for i, k in enumerate(table.column("image_id").to_pylist())}
            rows = [index.get(k) for k in chunk.column("image_id").to_pylist()]
            present = [i for i, r in enumerate(rows) if r is not None]
            chunk = chunk.take(pa.array(present, pa.int64()))
            looked_up = _prefix_status(table.drop_columns(["image_id"]), name).take(
                pa.array([rows[i] for i in present], pa.int64())
            )
            for field_, column in zip(looked_up.schema, looked_up.columns, strict=True):
                chunk = chunk.append_column(field_, column)
        return chunk

    def run_chunk(self, item: tuple[str, pa.Table], on_rows: Callable[[int], None] | None = None) -> ChunkResult:
        """Compute one chunk and write it as one part file named `item[0]` (what an executor's worker runs).

        `on_rows(n)` is called as rows finish (per batch), when the caller is in this process.
        """
        name, chunk = item
        self.setup()
        rows: list[dict[str, Any]] = []
        ok_idx = []
        for i, row in enumerate(chunk.select(["image_id", *self._status_columns(chunk)]).to_pylist()):
            reason = self._upstream_error(row)
            if reason is None:
                ok_idx.append(i)
            else:
                rows.append({"image_id": row["image_id"], "status": STATUS_ERROR, "error": reason})
        good = chunk.take(pa.array(ok_idx, pa.int64()))
        out = [self._rows_table(rows)] if rows else []
        if on_rows is not None and rows:
            on_rows(len(rows))
        batches = [good.slice(start, self.batch_size) for start in range(0, good.num_rows, self.batch_size)]
        for batch, prepared in self._prepared(batches):
            out.append(self._process_isolated(batch, prepared))
            if on_rows is not None:
                on_rows(batch.num_rows)
        table = pa.concat_tables(out) if out else self.schema.empty_table()
        written = self.output.write(table, metadata=self.identity(), name=name)
        status = table.column("status").to_pylist()
        errors: dict[str, int] = {}
        for s, e in zip(status, table.column("error").to_pylist(), strict=True):
            if s == STATUS_ERROR:
                kind = error_reason_kind(e)
                errors[kind] = errors.get(kind, 0) + 1
        n_err = sum(errors.values())
        return ChunkResult(
            ok=len(status) - n_err,
            error=n_err,
            written=written is not None,
            errors=errors,
            reported=on_rows is not None,
        )

    def _prepared(self, batches: list[pa.Table]) -> Iterator[tuple[pa.Table, list[Any] | None]]:
        """Each batch with its `prepare` result, the next one prepared in a thread while the model
        works on this one when prefetching (see RuntimeConfig.prefetch), else in line."""
        if not self._prefetch():
            for batch in batches:
                yield batch, self.prepare(batch)
            return
        with ThreadPoolExecutor(1) as loader:
            pending = loader.submit(self.prepare, batches[0]) if batches else None
            for k, batch in enumerate(batches):
                prepared = pending.result()
                if k + 1 < len(batches):
                    pending = loader.submit(self.prepare, batches[k + 1])
                yield batch, prepared

    def _prefetch(self) -> bool:
        """`auto`: with an accelerator. On a CPU the model already keeps every core busy and a loader
        thread only takes cores from it (the embed stage ran 5% slower with one on 2 cores)."""
        if self.runtime.prefetch != "auto":
            return self.runtime.prefetch == "on"
        if type(self).prepare is FeatureStage.prepare:  # nothing to prepare (distance): no torch import
            return False
        return devices.resolve_device(self.runtime.device) != "cpu"

    def load_images(self, batch: pa.Table) -> list[Any]:
        """The batch's images (RGB), each checked against its image_id, or the error in its place."""
        return load_images(
            batch.column("path").to_pylist(),
            batch.column("image_id").to_pylist(),
            self.pipeline.stage("ingest").max_image_pixels,
            self.runtime.loader_threads,
        )

    @property
    def batch_size(self) -> int:
        return self.runtime.batch_size

    @property
    def chunk_size(self) -> int:
        """Rows per part file."""
        return self.runtime.chunk_size

    @staticmethod
    def _status_columns(chunk: pa.Table) -> list[str]:
        return [c for c in chunk.column_names if c.endswith(".status") or c.endswith(".error")]

    @staticmethod
    def _upstream_error(row: dict[str, Any]) -> str | None:
        """The error an upstream row carries, prefixed once with the stage it arose in."""
        for key, value in row.items():
            if key.endswith(".status") and value != STATUS_OK:
                stage = key[: -len(".status")]
                origin = MANIFEST_STAGE if stage == MANIFEST else stage
                reason = row.get(f"{stage}.error") or "unknown error"
                return reason if is_stage_name(reason.split(":", 1)[0]) else f"{origin}: {reason}"
        return None

    def _process_isolated(self, batch: pa.Table, prepared: list[Any] | None = None) -> pa.Table:
        """Run `process`; when the batch raises, split it to find the failing rows (they get error rows).

        An out-of-memory batch is split the same way (after freeing the GPU cache), so a batch size
        too large for one image mix degrades to smaller batches instead of failing.
        """
        try:
            result = self.process(batch) if prepared is None else self.process(batch, prepared)
        except Exception as e:
            if batch.num_rows == 1:
                _free_gpu_memory(e)
                log.debug("%s failed on %s", self.name, batch.column("image_id")[0], exc_info=True)
                return self._rows_table([self._exception_row(batch.column("image_id")[0].as_py(), e)])
            # The traceback holds the failed call's frames and so its tensors: drop them before the
            # halves run, or an out-of-memory batch's activations stay allocated beside its halves.
            traceback.clear_frames(e.__traceback__)
            failure = e
        else:
            table = result if isinstance(result, pa.Table) else self._rows_table(result)
            if table.num_rows != batch.num_rows:
                raise SystemicError(f"{self.name}.process returned {table.num_rows} rows for {batch.num_rows}")
            return table
        _free_gpu_memory(failure)
        mid = batch.num_rows // 2
        first, second = (None, None) if prepared is None else (prepared[:mid], prepared[mid:])
        halves = [
            self._process_isolated(batch.slice(0, mid), first),
            self._process_isolated(batch.slice(mid), second),
        ]
        merged = pa.concat_tables(halves)
        if batch.num_rows >= 4 and pc.all(pc.equal(merged.column("status"), STATUS_ERROR)).as_py():
            raise SystemicError(
                f"{self.name}: every row of a batch of {batch.num_rows} failed: {type(failure).__name__}: {failure}"
            ) from failure
        return merged

    def _exception_row(self, image_id: str, e: Exception) -> dict[str, Any]:
        return {"image_id": image_id, "status": STATUS_ERROR, "error": f"model error: {type(e).__name__}: {e}"}

    def _rows_table(self, rows: list[dict[str, Any]]) -> pa.Table:
        for row in rows:
            row.setdefault("status", STATUS_OK)
            row.setdefault("error", None)
        return pa.Table.from_pylist(rows, schema=self.schema)


# Stages by (name, fingerprint, data root) in this process: a dask worker builds each stage, and so
# loads its model, once, however many chunks it runs. The driver registers its own instances.
_STAGE_CACHE: dict[tuple[str, str, str], FeatureStage] = {}


class ChunkTask:
    """The picklable work function an executor ships: the stage's class, configuration and data root,
    never a model. The class pickles by reference, so a worker imports its module (and the `stages`
    package registers every stage) on its own. `on_rows` (progress) stays in this process."""

    def __init__(self, stage: FeatureStage, on_rows: Callable[[int], None] | None = None) -> None:
        self.cls = type(stage)
        self.config = stage.pipeline
        self.root = str(stage.store.root)
        self.key = (stage.name, stage.fingerprint, self.root)
        self.on_rows = on_rows
        _STAGE_CACHE.setdefault(self.key, stage)

    def __getstate__(self) -> dict[str, Any]:
        return {"cls": self.cls, "config": self.config, "root": self.root, "key": self.key, "on_rows": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def stage(self) -> FeatureStage:
        if self.key not in _STAGE_CACHE:
            _STAGE_CACHE[self.key] = self.cls(self.config, Store(self.root))
        return _STAGE_CACHE[self.key]

    def __call__(self, item: tuple[str, pa.Table]) -> ChunkResult:
        return self.stage().run_chunk(item, self.on_rows)


def _free_gpu_memory(error: Exception) -> None:
    if type(error).__name__ == "OutOfMemoryError":
        import torch

        log.warning("out of memory on a batch: splitting it")
        torch.cuda.empty_cache()


def _prefix_status(table: pa.Table, name: str) -> pa.Table:
    return table.rename_columns([f"{name}.{c}" if c in ("status", "error") else c for c in table.column_names])
