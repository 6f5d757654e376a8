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

import dask

from pipeline.engine.devices import CORES_ENV
from pipeline.engine.errors import UsageError

log = logging.getLogger(__name__)

DEVICE_ENV = "ITEM_DEVICE"  # a device a worker is pinned to by its environment (devices.resolve_device reads it)
GPU = "GPU"  # the worker resource a GPU task asks for


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]: ...


class InProcessExecutor:
    """Runs every work unit in the calling process, lazily, in order."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)


def gpu_cluster(devices: list[str]) -> Any:
    """A local cluster of one single-threaded worker per GPU, each with its own device first in
    `CUDA_VISIBLE_DEVICES` (so `cuda:0` is its GPU) set in its environment at start, so a worker its
    nanny restarts keeps its GPU (a pin set afterwards by `client.run` would be lost). dask-cuda's
    LocalCUDACluster when it is installed (it also sets CPU affinity and UCX; its workers then read
    their share of cores from their affinity); else the same specification with plain nannies, each
    seeing only its own GPU.
    Each worker is told its share of the cores (for its feed processes)."""
    share = max(1, (os.cpu_count() or 1) // max(1, len(devices)))
    # Workers that may start processes of their own (the feed): the nanny starts them daemonic by default.

    dask.config.set({"distributed.worker.daemon": False})
    try:
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(
            CUDA_VISIBLE_DEVICES=",".join(devices),
            threads_per_worker=1,
            resources={GPU: 1},
            dashboard_address=None,
            env={CORES_ENV: str(share)},
        )
    except ImportError:
        from dask.distributed import Nanny, Scheduler, SpecCluster

        workers = {
            f"gpu-{d}": {
                "cls": Nanny,
                "options": {
                    "nthreads": 1,
                    "env": {"CUDA_VISIBLE_DEVICES": d, CORES_ENV: str(share)},
                    "resources": {GPU: 1},
                },
            }
            for d in devices
        }
        return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})


class DaskExecutor:
    """Work units as dask tasks, as many in flight as the workers present can take, each retried on failure.

    Args:
        scheduler: address of an existing scheduler (dask-jobqueue, dask-kubernetes, ...); None
            starts a local cluster: one single-threaded worker per visible GPU (the first `workers`
            of them when given), each seeing only its device, or `workers` CPU workers where there is
            no GPU.
        workers: workers of a local cluster (default: one per GPU, else 2).
        retries: how often a failed task is tried again (a dead worker's tasks are rescheduled).
        in_flight: tasks submitted ahead of results, per worker present (bounds the driver's memory).
        gpus: GPU indices to use (default: every GPU torch sees).
    """

    def __init__(
        self,
        scheduler: str | None = None,
        workers: int | None = None,
        retries: int = 2,
        in_flight: int = 2,
        gpus: list[str] | None = None,
    ) -> None:
        from dask.distributed import Client, LocalCluster

        self.retries = retries
        self.in_flight = in_flight
        self._cluster = None
        if scheduler:
            self.client = Client(scheduler)
        else:
            gpus = [str(i) for i in range(_visible_gpus())] if gpus is None else gpus
            if gpus:
                self._cluster = gpu_cluster(gpus[: workers or len(gpus)])
            else:
                self._cluster = LocalCluster(
                    n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None
                )
            self.client = Client(self._cluster)
        log.info("dask executor: %d worker(s) at %s", self.n_workers, self.client.scheduler.address)

    def _workers(self) -> dict[str, Any]:
        return self.client.scheduler_info(n_workers=-1)["workers"]  # every worker (some releases list 5)

    @property
    def n_workers(self) -> int:
        return len(self._workers())

    def _resources(self) -> dict[str, int] | None:
        """A GPU per task where workers offer GPUs (so a worker runs one model task at a time)."""
        offered = (w.get("resources") or {} for w in self._workers().values())
        return {GPU: 1} if any(GPU in r for r in offered) else None

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        from dask.distributed import as_completed

        it = iter(items)
        done = as_completed()
        resources = self._resources()
        pending = 0

        def fill() -> None:
            """Submit until every worker present (those that joined since included) has its share."""
            nonlocal pending
            target = max(1, self.in_flight * self.n_workers)
            while pending < target:
                try:
                    item = next(it)
                except StopIteration:
                    return
                done.add(self.client.submit(fn, item, pure=False, retries=self.retries, resources=resources))
                pending += 1

        try:
            fill()
            for future in done:
                result = future.result()
                future.release()
                pending -= 1
                fill()
                yield result
        finally:  # a failed task (or a caller that stops early) leaves no task writing parts behind
            left = list(done.futures)
            if left:
                self.client.cancel(left)

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
