"""Executors run a stage's chunks. The default runs them in this process, one after another;
`DaskExecutor` runs them on dask.distributed workers (a local cluster, or any scheduler address).

An executor only maps a picklable task over work units and yields results in completion order;
stages never know which executor runs them. Models are never shipped: the task carries the
configuration, and each worker builds the stage (and loads its model) once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import dask

from pipeline.engine.devices import CORES_ENV
from pipeline.engine.errors import UsageError

log = logging.getLogger(__name__)

DEVICE_ENV = "ITEM_DEVICE"  # a device a worker is pinned to by its environment (devices.resolve_device reads it)
GPU = "GPU"  # the worker resource a GPU task asks for


class TaskTimeoutError(RuntimeError):
    """A task ran past runtime.task_timeout on every try."""


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
    LocalCUDACluster when it is installed (it also sets CPU affinity and UCX); else the same
    specification with plain nannies, each seeing only its own GPU. Each worker is told its share of
    the cores (for its feed processes), restarts included."""
    share = max(1, (os.cpu_count() or 1) // max(1, len(devices)))
    # Workers that may start processes of their own (the feed): the nanny starts them daemonic by default.
    dask.config.set({"distributed.worker.daemon": False})
    # The share reaches each worker through the nannies' configured environment, which a nanny reads
    # once and applies at every (re)start; a per-worker `env` would not do: dask-cuda replaces it
    # with its own CUDA_VISIBLE_DEVICES.
    environ = {**dask.config.get("distributed.nanny.environ", {}), CORES_ENV: str(share)}
    with dask.config.set({"distributed.nanny.environ": environ}):
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            return LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=",".join(devices), threads_per_worker=1, resources={GPU: 1}, dashboard_address=None
            )
        from dask.distributed import Nanny, Scheduler, SpecCluster

        workers = {
            f"gpu-{d}": {
                "cls": Nanny,
                "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": d}, "resources": {GPU: 1}},
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
        task_timeout: seconds a task may take from its submission (runtime.task_timeout; None: no
            limit); one past it has its worker restarted and runs again (`_restart_stuck`).
    """

    def __init__(
        self,
        scheduler: str | None = None,
        workers: int | None = None,
        retries: int = 2,
        in_flight: int = 2,
        gpus: list[str] | None = None,
        task_timeout: float | None = None,
    ) -> None:
        from dask.distributed import Client, LocalCluster

        self.retries = retries
        self.task_timeout = task_timeout
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
        from dask.distributed import wait

        it = iter(items)
        resources = self._resources()
        running: dict[Any, tuple[Any, float, int]] = {}  # future -> (item, submitted at, timeouts so far)

        def submit(item: Any, timeouts: int = 0) -> None:
            future = self.client.submit(fn, item, pure=False, retries=self.retries, resources=resources)
            running[future] = (item, time.monotonic(), timeouts)

        def fill() -> None:
            """Submit until every worker present (those that joined since included) has its share."""
            target = max(1, self.in_flight * self.n_workers)
            while len(running) < target:
                try:
                    submit(next(it))
                except StopIteration:
                    return

        progress = time.monotonic()  # the last result (or restart): a task's clock starts no earlier
        try:
            fill()
            while running:
                timeout = None
                if self.task_timeout is not None:
                    oldest = max(progress, min(submitted for _, submitted, _ in running.values()))
                    timeout = max(0.0, oldest + self.task_timeout - time.monotonic())
                try:
                    finished = wait(list(running), timeout=timeout, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    self._restart_stuck(running, submit, progress)
                    progress = time.monotonic()
                    continue
                progress = time.monotonic()
                for future in finished:
                    running.pop(future)
                    result = future.result()
                    future.release()
                    fill()
                    yield result
        finally:  # a failed task (or a caller that stops early) leaves no task writing parts behind
            if running:
                self.client.cancel(list(running))

    def _restart_stuck(
        self, running: dict[Any, tuple[Any, float, int]], submit: Callable[..., None], progress: float
    ) -> None:
        """Tasks with no result from the cluster for `task_timeout` (counted from their submission, the
        last result or the last restart, whichever is latest: queueing behind a healthy task and model
        loads are not a hang as long as the value covers a chunk plus a load). Their workers are
        restarted first (a hung read or model call cannot be interrupted otherwise; the nanny starts
        a fresh process), then the tasks are submitted again, up to `retries` times; then the run
        fails, naming them. A chunk is written atomically or not at all: running it again loses and
        duplicates nothing."""
        now = time.monotonic()
        stuck = [f for f, (_, submitted, _) in running.items() if now - max(submitted, progress) >= self.task_timeout]
        processing = self.client.processing()
        hosts = {w for w, keys in processing.items() if any(f.key in keys for f in stuck)}
        again = []
        for future in stuck:
            item, _, timeouts = running.pop(future)
            future.cancel()
            if timeouts >= self.retries:
                raise TaskTimeoutError(
                    f"a task ran past runtime.task_timeout ({self.task_timeout:g} s) {timeouts + 1} times: {item!r}"
                )
            again.append((item, timeouts + 1))
        if hosts:
            self.client.restart_workers(sorted(hosts))
        log.warning("%d task(s) without a result for %g s: worker(s) restarted, running them again",
                    len(again), self.task_timeout)
        for item, timeouts in again:
            submit(item, timeouts)

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
    name: str, scheduler: str | None = None, workers: int | None = None, task_timeout: float | None = None
) -> InProcessExecutor | DaskExecutor:
    if name == "local" and scheduler is None:
        return InProcessExecutor()
    if name in ("dask", "local"):
        return DaskExecutor(scheduler=scheduler, workers=workers, task_timeout=task_timeout)
    raise UsageError(f"unknown executor {name!r} (local | dask)")
