"""Device resolution: `auto` follows a worker's pin (ITEM_DEVICE), a GPU that is not there is one line."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.engine.devices import resolve_device
from pipeline.engine.errors import UsageError
from pipeline.engine.executors import DEVICE_ENV


def test_auto_is_the_pinned_device_else_what_torch_sees(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cuda:3")
    assert resolve_device("auto") == "cuda:3"
    monkeypatch.delenv(DEVICE_ENV)
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_a_gpu_torch_cannot_see_is_a_usage_error():
    with pytest.raises(UsageError, match="torch sees"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def _pin(device: str) -> str:
    os.environ[DEVICE_ENV] = device
    return device


def test_a_pinned_dask_worker_resolves_auto_to_its_own_device():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            workers = sorted(client.scheduler_info()["workers"])
            for i, address in enumerate(workers):
                client.run(_pin, f"cuda:{i}", workers=[address])
            seen = client.run(resolve_device, "auto")
    assert [seen[w] for w in workers] == ["cuda:0", "cuda:1"]
