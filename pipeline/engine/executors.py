"""Executors run a stage's chunks. The default runs them in this process, one after another;
`DaskExecutor` runs them on dask.distributed workers (a local cluster, or any scheduler address).

An executor only maps a picklable task over work units and yields results in completion order;
stages never know which executor runs them. Models are never shipped: the task carries the
configuration, and each worker builds the stage (and loads its model) once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from pipeline.engine.errors import UsageError

log = logging.getLogger(__name__)

DEVICE_ENV = "ITEM_DEVICE"  # set on each local dask worker: the GPU it is pinned to


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]: ...


class InProcessExecutor:
    """Runs every work unit in the calling process, lazily, in order."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)


def _pin(device: str) -> str:
    os.environ[DEVICE_ENV] = device
    return device


class DaskExecutor:
    """Work units as dask tasks, a bounded number in flight, each retried on failure.

    Args:
        scheduler: address of an existing scheduler (dask-jobqueue, dask-kubernetes, ...); None
            starts a local cluster: one single-threaded worker per visible GPU, each pinned to its
            device, or `workers` CPU workers where there is no GPU.
        workers: CPU workers of a local cluster (default 2).
        retries: how often a failed task is tried again (a dead worker's tasks are rescheduled).
        in_flight: tasks submitted ahead of results, per worker (bounds the driver's memory).
    """

    def __init__(
        self, scheduler: str | None = None, workers: int | None = None, retries: int = 2, in_flight: int = 2
    ) -> None:
        from dask.distributed import Client, LocalCluster

        self.retries = retries
        self.in_flight = in_flight
        self._cluster = None
        if scheduler:
            self.client = Client(scheduler)
        else:
            gpus = _visible_gpus()
            n = gpus or workers or 2
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            self.client = Client(self._cluster)
            if gpus:
                for i, address in enumerate(sorted(self.client.scheduler_info()["workers"])):
                    self.client.run(_pin, f"cuda:{i}", workers=[address])
        log.info("dask executor: %d worker(s) at %s", self.n_workers, self.client.scheduler.address)

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info()["workers"])

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        from dask.distributed import as_completed

        it = iter(items)
        done = as_completed()

        def submit() -> bool:
            try:
                item = next(it)
            except StopIteration:
                return False
            done.add(self.client.submit(fn, item, pure=False, retries=self.retries))
            return True

        for _ in range(max(1, self.in_flight * self.n_workers)):
            if not submit():
                break
        for future in done:
            result = future.result()
            future.release()
            submit()
            yield result

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch or no driver: CPU workers
        return 0


def make_executor(
    name: str, scheduler: str | None = None, workers: int | None = None
) -> InProcessExecutor | DaskExecutor:
    if name == "local" and scheduler is None:
        return InProcessExecutor()
    if name in ("dask", "local"):
        return DaskExecutor(scheduler=scheduler, workers=workers)
    raise UsageError(f"unknown executor {name!r} (local | dask)")
