"""The dask executor on a real LocalCluster: same rows as in-process, a killed worker loses no
image, and each worker loads each model once."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import polars as pl
import pytest

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.executors import DaskExecutor
from pipeline.engine.store import Store
from tests.conftest import tiny

STAGES = ("caption", "ground", "embed", "distance")


def rows(store: Store, name: str) -> pl.DataFrame:
    return pl.from_arrow(make_stage(name, tiny(), store).output.read()).sort("image_id")


@pytest.fixture(scope="module")
def executor():
    with DaskExecutor(workers=2) as ex:
        yield ex


def test_chunks_spread_over_both_workers_and_models_stay_put(tmp_path, image_root, executor):
    store = Store(tmp_path)
    config = tiny(chunk_size=2)
    run_stage("ingest", config, store, inputs=[image_root], dataset="demo")
    run_stage("caption", config, store, executor=executor)
    from pipeline.models import load_counts

    loads = executor.client.run(load_counts)
    assert [c.get("blip2", 0) for c in loads.values()] == [1, 1], loads  # 12 chunks, 2 workers, 2 loads


def test_dask_run_matches_in_process_and_loads_each_model_once_per_worker(tmp_path, image_root, full_run, executor):
    store = Store(tmp_path)
    config = tiny(chunk_size=4)
    run_stage("ingest", config, store, inputs=[image_root], dataset="demo")
    for name in STAGES:
        stats = run_stage(name, config, store, executor=executor)
        assert stats.ok == 24, name
    for name in STAGES:
        ours, reference = rows(store, name), rows(full_run, name)
        assert ours["image_id"].to_list() == reference["image_id"].to_list()
        assert ours["image_id"].n_unique() == 24
    np.testing.assert_array_equal(
        rows(store, "distance")["d_global"].to_numpy(), rows(full_run, "distance")["d_global"].to_numpy()
    )
    assert rows(store, "caption")["caption"].to_list() == rows(full_run, "caption")["caption"].to_list()
    from pipeline.models import load_counts

    loads = executor.client.run(load_counts)  # runs on each worker: its own counter
    assert len(loads) == 2 and sum(c.get("blip2", 0) for c in loads.values()) >= 1, loads
    # 6 caption chunks, 6 ground chunks, ... spread over 2 workers: still one load per model per worker
    assert all(n == 1 for counts in loads.values() for n in counts.values()), loads


def test_a_worker_killed_mid_run_loses_no_image(tmp_path, image_root, executor):
    store = Store(tmp_path)
    config = tiny(chunk_size=2)
    run_stage("ingest", config, store, inputs=[image_root], dataset="demo")
    pids = executor.client.run(os.getpid)
    out = make_stage("caption", config, store).output

    def kill_one_worker_once_work_started() -> None:
        deadline = time.monotonic() + 120
        while len(out.parts()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(next(iter(pids.values())), signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker_once_work_started)
    killer.start()
    stats = run_stage("caption", config, store, executor=executor)
    killer.join()
    result = rows(store, "caption")
    assert result.height == 24 and result["image_id"].n_unique() == 24
    assert (result["status"] == "ok").all()
    assert stats.error == 0
    assert make_stage("caption", config, store).todo() == []
    executor.client.wait_for_workers(2, timeout=120)
    assert set(executor.client.run(os.getpid).values()) != set(pids.values())  # the worker really died


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def _cores() -> str:
    from pipeline.engine.devices import CORES_ENV

    return os.environ.get(CORES_ENV, "")


def test_each_local_gpu_worker_sees_only_its_device_even_after_its_nanny_restarts_it():
    from dask.distributed import Client

    from pipeline.engine.executors import gpu_cluster

    with gpu_cluster(["0", "1"]) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        assert sorted(client.run(_visible).values()) == ["0", "1"]
        share = str(max(1, (os.cpu_count() or 1) // 2))  # each of 2 GPUs' workers: half the cores
        assert list(client.run(_cores).values()) == [share, share]
        assert all(w["resources"] == {"GPU": 1} for w in client.scheduler_info()["workers"].values())
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:  # while the nanny restarts it, the dead worker may still be listed
                now = client.run(os.getpid)
            except OSError:
                continue
            if len(now) == 2 and set(now.values()) != set(pids.values()):
                break
        assert set(client.run(os.getpid).values()) != set(pids.values())  # restarted
        assert sorted(client.run(_visible).values()) == ["0", "1"]  # ... with its GPU
        assert list(client.run(_cores).values()) == [share, share]  # ... and its share of the cores


def _where(item: int) -> tuple[str, float, float]:
    from dask.distributed import get_worker

    start = time.monotonic()  # one clock for every process of this machine
    time.sleep(0.4)
    return get_worker().address, start, time.monotonic()


def test_workers_that_join_mid_run_get_work_at_once():
    """Tasks in flight follow the workers present: one worker at the start (2 tasks in flight), three
    soon after, and three tasks then run at the same time."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        executor = DaskExecutor(scheduler=cluster.scheduler_address)
        try:
            results = []
            for k, result in enumerate(executor.map(_where, range(30))):
                results.append(result)
                if k == 0:
                    cluster.scale(3)
                    executor.client.wait_for_workers(3, timeout=120)
        finally:
            executor.close()
    assert len(results) == 30 and len({address for address, _, _ in results}) == 3
    running = max(sum(s <= t < e for _, s, e in results) for _, t, _ in results)
    assert running == 3, running
