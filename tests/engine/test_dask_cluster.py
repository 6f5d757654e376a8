"""A cluster never loses or misplaces a row. Workers are started the way a cluster starts them
(`dask scheduler`, `dask worker` from another directory, with another environment), and a run ends
with every row under the driver's configuration and data root, or fails loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.executors import DaskExecutor
from pipeline.engine.feature import IncompleteRunError, WorkerMismatchError
from pipeline.engine.stage import STAGES, ChunkResult
from pipeline.engine.store import Store
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# A stage whose code version comes from the environment (a worker running other code) and whose
# config resolves a hub revision (a worker with another Hugging Face cache).
PLUGIN = '''
import os
from dataclasses import dataclass, replace

import pyarrow as pa

from pipeline.engine import schemas
from pipeline.engine.config import as_dict
from pipeline.engine.feature import FeatureStage
from pipeline.engine.hub import resolve_revision
from pipeline.engine.stage import STAGES


@dataclass(frozen=True)
class SizeConfig:
    model: str = "someorg/some-model"
    revision: str | None = None

    def identity(self):
        return {**as_dict(self), "revision": resolve_revision(self.model, self.revision)}

    def pinned(self):
        return replace(self, revision=resolve_revision(self.model, self.revision))


@STAGES.register
class SizeStage(FeatureStage):
    name = "clustersize"
    version = int(os.environ.get("CLUSTER_TEST_VERSION", "1"))
    inputs = ("manifest",)
    driver_columns = ("n_bytes",)
    config_class = SizeConfig
    schema = schemas.rows_schema(pa.field("n", pa.int64()), pa.field("pid", pa.int64()))

    def process(self, batch):
        return [{"image_id": r["image_id"], "n": r["n_bytes"], "pid": os.getpid()} for r in batch.to_pylist()]
'''

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "cluster_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(folder))
    import cluster_test_plugin  # noqa: F401  (registers the stage in this process)

    yield folder
    sys.path.remove(str(folder))
    STAGES.unregister("clustersize")  # the other tests see the built-in stages only
    sys.modules.pop("cluster_test_plugin", None)


def hub_cache(root: Path, with_ref: bool) -> Path:
    """A Hugging Face cache that knows someorg/some-model's main branch (or does not)."""
    repo = root / "models--someorg--some-model"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    if with_ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    return root


@contextmanager
def cluster(tmp_path: Path, plugin: Path, workers: int = 1, **env: str) -> Iterator[str]:
    """A scheduler and `workers` workers as separate processes, in their own directory and environment."""
    where = tmp_path / "elsewhere"
    where.mkdir(exist_ok=True)
    info = tmp_path / "scheduler.json"
    base = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{plugin}", "ITEM_PLUGINS": "cluster_test_plugin"}
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--scheduler-file", str(info), "--port", "0", "--no-dashboard"],
            cwd=where, env=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [str(BIN / "dask"), "worker", "--scheduler-file", str(info), "--nthreads", "1", "--no-dashboard",
                     "--preload", "cluster_test_plugin"],
                    cwd=where, env={**base, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )
        yield json.loads(info.read_text())["address"]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def ingest(tmp_path: Path, image_root: Path, data: Path | str) -> Store:
    store = Store(data)
    run_stage("ingest", tiny(), store, inputs=[image_root], dataset="demo")
    return store


def executor(address: str, workers: int = 1) -> DaskExecutor:
    ex = DaskExecutor(scheduler=address)
    ex.client.wait_for_workers(workers, timeout=120)
    return ex


def test_a_worker_with_another_hf_cache_writes_under_the_driver_s_fingerprint(
    tmp_path, image_root, plugin, monkeypatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "driver-cache", with_ref=True)))
    store = ingest(tmp_path, image_root, tmp_path / "data")
    config = tiny(chunk_size=4)
    stage = make_stage("clustersize", config, store)
    assert stage.cfg.identity()["revision"] == COMMIT  # the driver resolves main to the commit
    worker_cache = hub_cache(tmp_path / "worker-cache", with_ref=False)  # ... this worker cannot
    with cluster(tmp_path, plugin, HF_HUB_CACHE=str(worker_cache)) as address, executor(address) as ex:
        stats = run_stage("clustersize", config, store, executor=ex)
    assert stats.ok == 24
    assert [p.name for p in (tmp_path / "data" / "features" / "clustersize").iterdir()] == [stage.fingerprint]
    rows = pl.from_arrow(stage.output.read())
    assert rows.height == 24 and rows["image_id"].n_unique() == 24
    assert os.getpid() not in rows["pid"].to_list()  # computed on the worker, not here


def test_a_worker_running_other_code_refuses_and_the_run_fails(tmp_path, image_root, plugin):
    store = ingest(tmp_path, image_root, tmp_path / "data")
    config = tiny(chunk_size=4)
    with cluster(tmp_path, plugin, CLUSTER_TEST_VERSION="2") as address, executor(address) as ex:
        with pytest.raises(WorkerMismatchError, match="driver asked for"):
            run_stage("clustersize", config, store, executor=ex)
    assert not list((tmp_path / "data" / "features").glob("clustersize/*/part-*.parquet"))


def test_a_relative_data_dir_is_the_driver_s_on_every_worker(tmp_path, image_root, plugin, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ingest(tmp_path, image_root, "data")  # relative to the driver's directory
    config = tiny(chunk_size=4)
    with cluster(tmp_path, plugin) as address, executor(address) as ex:
        assert run_stage("caption", config, store, executor=ex).ok == 24
    assert pl.from_arrow(make_stage("caption", config, store).output.read()).height == 24
    assert not (tmp_path / "elsewhere" / "data").exists()  # the workers' own directory got nothing


class LosingExecutor:
    """Reports every other chunk done without running it: what a cluster that loses work looks like."""

    def map(self, fn, items):
        for k, item in enumerate(items):
            yield fn(item) if k % 2 else ChunkResult()


def test_rows_still_missing_after_every_pass_fail_the_run(tmp_path, image_root, plugin):
    store = ingest(tmp_path, image_root, tmp_path / "data")
    with pytest.raises(IncompleteRunError, match=r"\d+ image\(s\) still have no row after 3 passes"):
        run_stage("clustersize", tiny(chunk_size=4), store, executor=LosingExecutor())
    assert 0 < pl.from_arrow(make_stage("clustersize", tiny(), store).output.read()).height < 24


def test_a_retry_of_error_rows_whose_chunks_are_lost_fails_the_run(tmp_path, image_root, plugin):
    """--retry-errors: the images to redo already have (error) rows, so only rows written by this run
    count as done; a lost chunk must not pass for a retried one."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(image_root, images)
    for k in range(2):
        (images / f"broken-{k}.jpg").write_bytes(b"not an image %d" % k)
    store = ingest(tmp_path, images, tmp_path / "data")
    config = tiny(chunk_size=1)
    first = run_stage("clustersize", config, store)
    assert first.error == 2
    with pytest.raises(IncompleteRunError, match=r"1 image\(s\) still have no row after 3 passes"):
        run_stage("clustersize", config, store, executor=LosingExecutor(), retry_errors=True)
    again = run_stage("clustersize", config, store, retry_errors=True)  # a whole cluster: both redone
    assert (again.todo, again.error) == (2, 2)


def test_pinning_fixes_a_hub_revision_to_the_driver_s_commit(tmp_path, monkeypatch):
    import stages  # noqa: F401

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "cache", with_ref=True)))
    config = resolve("paper", {"caption": {"model": "someorg/some-model"}, "ground": {"model": "someorg/some-model"}})
    from pipeline.engine.config import pinned

    fixed = pinned(config)
    for name in ("caption", "ground"):
        assert config.stage(name).revision is None and fixed.stage(name).revision == COMMIT
        assert fixed.stage(name).identity() == config.stage(name).identity()
