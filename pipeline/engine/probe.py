"""Reading, hashing and test-decoding input files in worker processes, with a time limit per file.

A decoder that hangs or crashes on a hostile file must not stop a run: each file is probed in a
worker process; a file that takes longer than the limit, or kills its worker, gets an error row
and the pool is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pipeline.engine import locations
from pipeline.engine.errors import RowError, error_fields
from pipeline.engine.imageio import ImageDecodeError, decode, read_error_kind
from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.schemas import STATUS_OK

log = logging.getLogger(__name__)


def probe_file(path: str, max_pixels: int, limits: locations.ReadLimits = locations.LIMITS) -> dict[str, Any]:
    """image_id, size, mtime and (if it decodes) format and dimensions of one file or location
    (an archive member, a Parquet row, a URL: size and mtime are then its container's)."""
    try:
        if locations.kind(path) == "file":
            data, st = locations.read_file(path, limits)
            size, mtime = st.st_size, st.st_mtime_ns
        else:
            data = locations.read(path, limits)
            if isinstance(data, Exception):
                raise data
            size, mtime = locations.stat(path) or (None, None)
    except OSError as e:
        # No bytes, no content key: the id is derived from the path so the failure still has a row.
        return failed(path, RowError(read_error_kind(e), f"{type(e).__name__}: {e.strerror or e}"))
    row: dict[str, Any] = {
        "image_id": image_id_of_bytes(data),
        "n_bytes": len(data),
        "size": size,
        "mtime_ns": mtime,
        "status": STATUS_OK,
        "error": None,
        "error_kind": None,
    }
    try:
        _, info = decode(data, max_pixels)
        row.update(width=info.width, height=info.height, format=info.format, jpeg_quality=info.jpeg_quality)
    except ImageDecodeError as e:
        row.update(error_fields(e))
    return row


def failed(path: str, reason: RowError) -> dict[str, Any]:
    """The row of a file that gave no bytes (or none worth decoding): its id comes from its path."""
    return {
        "image_id": image_id_of_bytes(f"unreadable:{path}".encode()),
        "n_bytes": None,
        "size": None,
        "mtime_ns": None,
        **error_fields(reason),
    }


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a decoding worker: end this process soon after its parent dies (a SIGKILLed ingest must not
    leave workers behind; a killed parent gets no chance to stop them)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class Prober:
    """Probes files in `workers` processes; each file gets at least `timeout` seconds.

    With timeout 0 files are probed in this process (no protection against hangs).
    """

    def __init__(
        self, workers: int, timeout: float, max_pixels: int, limits: locations.ReadLimits = locations.LIMITS
    ) -> None:
        self.workers = workers
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.limits = limits
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop(kill=False)

    def map(self, paths: list[str]) -> list[dict[str, Any]]:
        if self.timeout <= 0 or self._start() is None:
            return [probe_file(p, self.max_pixels, self.limits) for p in paths]
        results: list[dict[str, Any] | None] = [None] * len(paths)
        pending = list(range(len(paths)))
        while pending:
            pool = self._start()
            if pool is None:  # workers stopped being startable: finish here
                for j in pending:
                    results[j] = probe_file(paths[j], self.max_pixels, self.limits)
                break
            futures = {i: pool.submit(probe_file, paths[i], self.max_pixels, self.limits) for i in pending}
            pending = []
            for i, future in futures.items():
                reason = self._wait(future)
                if reason is None:
                    results[i] = future.result()
                    continue
                log.warning("%s: %s", paths[i], reason)
                results[i] = failed(paths[i], reason)
                # The pool is stuck or broken: keep what finished, start again for the rest.
                for j, other in futures.items():
                    if results[j] is None and other.done() and other.exception() is None:
                        results[j] = other.result()
                pending = [j for j in futures if results[j] is None]
                self._stop(kill=True)
                break
        return results  # type: ignore[return-value]

    def _wait(self, future: Future) -> RowError | None:
        try:
            future.result(timeout=self.timeout)
            return None
        except FutureTimeout:
            return RowError("decode_timeout", f"no result after {self.timeout:g}s (ingest.decode_timeout)")
        except BrokenProcessPool:
            return RowError("decoder_crashed", "the worker process died while reading this file")

    def _start(self) -> ProcessPoolExecutor | None:
        """The worker pool, checked with a trivial task first: when worker processes cannot start here
        (e.g. a script fed on standard input, which spawned workers cannot re-import), decoding falls back
        to this process, without the time limit, instead of failing every file as a crash."""
        if self._pool is None:
            # spawn: a fork of a process holding torch threads can deadlock
            pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
            try:
                pool.submit(os.getpid).result(timeout=120)
            except Exception as e:  # BrokenProcessPool, timeout, pickling: no usable workers
                pool.shutdown(wait=False, cancel_futures=True)
                log.warning(
                    "decoding worker processes are unavailable (%s: %s); decoding in this process, "
                    "without the per-file time limit",
                    type(e).__name__,
                    e,
                )
                self.timeout = 0
                return None
            self._pool = pool
        return self._pool

    def _stop(self, kill: bool) -> None:
        if self._pool is None:
            return
        if kill:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()
        self._pool.shutdown(wait=not kill, cancel_futures=True)
        self._pool = None
