"""A feature stage's inputs: the rows a chunk is computed from, and batches prepared ahead.

The first input drives (its rows are the work); small columns of the other inputs are joined in by
image_id. Each input's status columns are prefixed with its name (`caption.status`,
`caption.error_kind`, ...) so a row that failed upstream becomes this stage's error row, carrying
the upstream kind and stage, without reaching the model.

Preparing a batch (reading, the id check, decoding, the model's preprocessing) is CPU work done
ahead of the model: in line, in one thread (`prefetched`), or in a pool of worker processes
(`Feed`) that stays alive across chunks and keeps several batches in flight, so the main process
only feeds the model. What a worker runs is an `ImageRows`: picklable, it carries the model's
preprocessing (processors and transforms), never the model.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine import devices
from pipeline.engine.imageio import ImageDecodeError, load_images
from pipeline.engine.locations import LIMITS, ReadLimits
from pipeline.engine.probe import exit_with_parent
from pipeline.engine.schemas import ERROR_COLUMNS, STATUS_ERROR, STATUS_OK
from pipeline.engine.store import PartDir, part_name

STATUS_COLUMNS = ("status", *ERROR_COLUMNS)


def chunks(
    dirs: dict[str, PartDir],
    driver: str,
    driver_columns: tuple[str, ...],
    lookup_columns: dict[str, tuple[str, ...]],
    todo: set[str],
    chunk_size: int,
    order: Callable[[pa.Table], pa.Table] | None = None,
    window: int = 1,
) -> Iterator[tuple[str, pa.Table]]:
    """(part name, driver rows of `todo` with the lookup columns of the other inputs joined in).

    Args:
        dirs: each input's folder, by input name.
        driver: the input whose rows are the work.
        order: sorts a window of `window` chunks' rows before they are cut into chunks (like inputs
            together: full model calls); memory stays bounded by the window.
    """
    lookups = {
        name: dirs[name].read(["image_id", *STATUS_COLUMNS, *cols], ids=todo) for name, cols in lookup_columns.items()
    }
    step = chunk_size * (window if order is not None else 1)
    for rows in dirs[driver].iter_rows(["image_id", *STATUS_COLUMNS, *driver_columns], todo, step):
        rows = _join(_prefix_status(rows, driver), lookups)
        if order is not None:
            rows = order(rows)
        for start in range(0, rows.num_rows, chunk_size):
            chunk = rows.slice(start, chunk_size)
            yield part_name(chunk.column("image_id").to_pylist()), chunk


def _join(chunk: pa.Table, lookups: dict[str, pa.Table]) -> pa.Table:
    """Join the lookups by image_id, by index (Arrow's hash join refuses list columns such as `objects`).

    A driver row with no row in a lookup is kept, marked as failed in that input (`missing_input`), so
    it becomes an error row instead of silently dropping out of the run."""
    for name, table in lookups.items():
        index = {k: i for i, k in enumerate(table.column("image_id").to_pylist())}
        rows = pa.array([index.get(k) for k in chunk.column("image_id").to_pylist()], pa.int64())
        looked_up = _prefix_status(table.drop_columns(["image_id"]), name).take(rows)
        absent = rows.is_null()
        if absent.true_count:
            fill = {
                f"{name}.status": STATUS_ERROR,
                f"{name}.error": f"no {name} row for this image (run that stage again)",
                f"{name}.error_kind": "missing_input",
            }
            for column, value in fill.items():  # every lookup is read with its status columns
                i = looked_up.column_names.index(column)
                filled = pc.if_else(absent, pa.scalar(value, pa.string()), looked_up.column(i))
                looked_up = looked_up.set_column(i, column, filled)
        for field_, column in zip(looked_up.schema, looked_up.columns, strict=True):
            chunk = chunk.append_column(field_, column)
    return chunk


def _prefix_status(table: pa.Table, name: str) -> pa.Table:
    return table.rename_columns([f"{name}.{c}" if c in STATUS_COLUMNS else c for c in table.column_names])


def split_upstream_errors(chunk: pa.Table, producers: dict[str, str]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The rows every input has ok, and an error row for each other row.

    Args:
        producers: input name -> the stage that writes it (where an error with no stage arose).
    """
    status = [c[: -len(".status")] for c in chunk.column_names if c.endswith(".status")]
    wanted = ["image_id", *(f"{n}.{c}" for n in status for c in STATUS_COLUMNS if f"{n}.{c}" in chunk.column_names)]
    good, failed = [], []
    for i, row in enumerate(chunk.select(wanted).to_pylist()):
        error = next((_upstream_row(row, n, producers[n]) for n in status if row[f"{n}.status"] != STATUS_OK), None)
        if error is None:
            good.append(i)
        else:
            failed.append(error)
    return chunk.take(pa.array(good, pa.int64())), failed


def _upstream_row(row: dict[str, Any], name: str, producer: str) -> dict[str, Any]:
    """This stage's row for an image whose `name` row is an error: the same kind and stage of origin;
    the message names the stage once (a message from further up already does)."""
    stage = row.get(f"{name}.error_stage") or producer
    message = row.get(f"{name}.error") or "unknown error"
    return {
        "image_id": row["image_id"],
        "status": STATUS_ERROR,
        "error": f"{stage}: {message}" if stage == producer else message,
        "error_kind": row.get(f"{name}.error_kind") or "unknown",
        "error_stage": stage,
    }


def prefetched(
    batches: list[pa.Table], prepare: Callable[[pa.Table], list[Any] | None], ahead: bool
) -> Iterator[tuple[pa.Table, list[Any] | None]]:
    """Each batch with its `prepare` result; with `ahead`, the next one is prepared in a thread while
    the caller works on this one, else in line."""
    if not ahead:
        for batch in batches:
            yield batch, prepare(batch)
        return
    with ThreadPoolExecutor(1) as loader:
        pending = loader.submit(prepare, batches[0]) if batches else None
        for k, batch in enumerate(batches):
            prepared = pending.result()
            if k + 1 < len(batches):
                pending = loader.submit(prepare, batches[k + 1])
            yield batch, prepared


@dataclass(frozen=True)
class ImageRows:
    """A batch's images read and checked against their ids (engine/imageio.py), each made the model's
    input by `transform(image, row)`; a file that fails gives its error in its place. Picklable.

    Args:
        max_pixels: the decompression-bomb limit.
        threads: decoding threads.
        transform: (RGB image, the row's `columns` as a dict) -> what the model takes.
        columns: the batch's columns `transform` reads (besides the image).
        fallback: a transform that raises passes the image on as it is (the model call then
            preprocesses it again and reports the failure on its own row).
        limits: bytes and waits of each read (locations.ReadLimits).
    """

    max_pixels: int
    threads: int
    transform: Callable[[Any, dict[str, Any]], Any] | None = None
    columns: tuple[str, ...] = ()
    fallback: bool = True
    limits: ReadLimits = LIMITS

    def __call__(self, batch: pa.Table) -> list[Any]:
        paths, ids = batch.column("path").to_pylist(), batch.column("image_id").to_pylist()
        images = load_images(paths, ids, self.max_pixels, self.threads, self.limits)
        if self.transform is None:
            return images
        rows = batch.select(list(self.columns)).to_pylist() if self.columns else [{}] * batch.num_rows
        return [self._one(image, row) for image, row in zip(images, rows, strict=True)]

    def _one(self, image: Any, row: dict[str, Any]) -> Any:
        if isinstance(image, ImageDecodeError):
            return image
        if not self.fallback:
            return self.transform(image, row)
        try:
            return self.transform(image, row)
        except Exception:
            return image


def image_only(transform: Callable[[Any], Any]) -> Callable[[Any, dict[str, Any]], Any]:
    """An image-to-input transform as an ImageRows transform (picklable)."""
    return _ImageOnly(transform)


@dataclass(frozen=True)
class _ImageOnly:
    transform: Callable[[Any], Any]

    def __call__(self, image: Any, row: dict[str, Any]) -> Any:
        return self.transform(image)


_WORKER_PREPARE: Callable[[pa.Table], list[Any]] | None = None


def _install(prepare: Callable[[pa.Table], list[Any]], parent: int) -> None:
    global _WORKER_PREPARE
    _WORKER_PREPARE = prepare
    if "torch" in sys.modules:  # one core per feed worker: the pool is the parallelism
        sys.modules["torch"].set_num_threads(1)
    exit_with_parent(parent)


def _prepare_in_worker(batch: pa.Table) -> list[Any]:
    return _WORKER_PREPARE(batch)


class Feed:
    """Batches prepared in `workers` processes, up to `depth` batches ahead of the model, in order.

    The pool starts once (spawned: a fork of a process holding torch threads can deadlock) and lives
    until `close`, across chunks; each worker gets `prepare` once, at start.
    """

    def __init__(self, prepare: Callable[[pa.Table], list[Any]], workers: int, depth: int | None = None) -> None:
        self.workers = workers
        self.depth = depth or 2 * workers
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_install,
            initargs=(prepare, os.getpid()),
        )

    def map(self, batches: Iterable[pa.Table]) -> Iterator[tuple[pa.Table, list[Any]]]:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, self._pool.submit(_prepare_in_worker, batch)))
            if len(pending) >= self.depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()

    def ready(self, timeout: float = 300.0) -> int:
        """Wait until every worker process has started (imported what `prepare` needs); their number.
        A long run does not need it; a measurement does (a worker still starting takes the cores)."""
        import time

        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < self.workers and time.monotonic() < deadline:
            seen |= {f.result() for f in [self._pool.submit(_pid) for _ in range(4 * self.workers)]}
        return len(seen)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)  # the workers exit on their own; a run need not wait


def _pid() -> int:
    import time

    time.sleep(0.05)  # long enough that one worker cannot take every probe
    return os.getpid()


class Preparation:
    """How a stage's batches get their prepared inputs: from feed processes when there are any (a
    dask worker started daemonic may have none), else the next batch in a thread while the model
    works on this one (on an accelerator), else in line.

    Args:
        preparer: the stage's `preparer` (called after its setup: it carries the loaded processors).
        prepare: the stage's `prepare` (in this process).
        runtime: feed_workers, prefetch and device.
        reads_images: whether batches are prepared from image files at all.
    """

    def __init__(
        self,
        preparer: Callable[[], ImageRows | None],
        prepare: Callable[[pa.Table], list[Any] | None],
        runtime: Any,
        reads_images: bool,
    ) -> None:
        self.preparer, self.prepare, self.runtime, self.reads_images = preparer, prepare, runtime, reads_images
        self.feed: Feed | None = None

    def batches(self, work: list[pa.Table]) -> Iterator[tuple[pa.Table, list[Any] | None]]:
        workers = self.feed_workers()
        if workers and self.preparer() is not None:
            if self.feed is None:  # one decoding thread per feed process: the processes are the parallelism
                self.feed = Feed(dataclasses.replace(self.preparer(), threads=1), workers)
            return self.feed.map(work)
        return prefetched(work, self.prepare, self.prefetch())

    def feed_workers(self) -> int:
        """runtime.feed_workers, or on an accelerator the cores for each GPU less one (at most 8)."""
        if multiprocessing.current_process().daemon:  # a daemonic process may not have children
            return 0
        if self.runtime.feed_workers is not None:
            return self.runtime.feed_workers
        if not self.reads_images or devices.resolve_device(self.runtime.device) == "cpu":
            return 0
        return max(1, min(8, devices.cores_per_gpu() - 1))

    def prefetch(self) -> bool:
        """`auto`: with an accelerator. On a CPU the model already keeps every core busy and a loader
        thread only takes cores from it (the embed stage ran 5% slower with one on 2 cores)."""
        if self.runtime.prefetch != "auto":
            return self.runtime.prefetch == "on"
        if not self.reads_images:  # nothing to prepare (distance): no torch import
            return False
        return devices.resolve_device(self.runtime.device) != "cpu"

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None
