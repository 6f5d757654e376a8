"""runtime.task_timeout on a real LocalCluster: a task that hangs has its worker restarted and runs
again; one that hangs every time fails the run, naming it, in bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.engine.config import ConfigError, RuntimeConfig
from pipeline.engine.executors import DaskExecutor, TaskTimeoutError


def hangs_once(arg: tuple[str, int]) -> int:
    """Task 1 hangs on its first try (a read that never answers), then returns at once."""
    folder, k = arg
    marker = Path(folder) / f"{k}.tried"
    if k == 1 and not marker.exists():
        marker.touch()
        time.sleep(600)
    return k


def hangs_always(arg: tuple[str, int]) -> int:
    if arg[1] == 1:
        time.sleep(600)
    return arg[1]


def test_a_hung_task_is_run_again_on_a_restarted_worker_and_nothing_is_lost(tmp_path):
    start = time.monotonic()
    with DaskExecutor(workers=1, retries=2, task_timeout=4) as executor:
        results = sorted(executor.map(hangs_once, [(str(tmp_path), k) for k in range(4)]))
    assert results == [0, 1, 2, 3]
    assert (tmp_path / "1.tried").exists()
    assert time.monotonic() - start < 120


def test_a_task_that_always_hangs_fails_the_run_naming_it(tmp_path):
    start = time.monotonic()
    with DaskExecutor(workers=1, retries=1, task_timeout=3) as executor:
        with pytest.raises(TaskTimeoutError, match=r"task_timeout \(3 s\).*1\)"):
            list(executor.map(hangs_always, [(str(tmp_path), k) for k in range(3)]))
    assert time.monotonic() - start < 120


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_task_timeout_must_be_a_positive_finite_number(bad):
    with pytest.raises(ConfigError, match="task_timeout"):
        RuntimeConfig(task_timeout=bad)
