"""The feed: batches prepared in worker processes that stay alive across chunks, the model fed in
this process, rows in order and the same as in line."""

from __future__ import annotations

import os
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pytest

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine import schemas
from pipeline.engine.feature import FeatureStage
from pipeline.engine.stage import STAGES
from pipeline.engine.store import Store
from tests.conftest import tiny


def where_prepared(image, row):
    """What the feed makes of an image: its size, and the process that prepared it."""
    return image.size, os.getpid()


@dataclass(frozen=True)
class FeedConfig:
    pass


class FeedProbe(FeatureStage):
    """Records, per image, its size and the process its batch was prepared in."""

    name = "feedprobe"
    inputs = ("manifest",)
    driver_columns = ("path",)
    config_class = FeedConfig
    reads_images = True
    schema = schemas.rows_schema(pa.field("width", pa.int64()), pa.field("pid", pa.int64()))

    def preparer(self):
        return self.image_rows(where_prepared)

    def process(self, batch, prepared):
        return [
            {"image_id": i, "width": size[0], "pid": pid}
            for i, (size, pid) in zip(batch.column("image_id").to_pylist(), prepared, strict=True)
        ]


@pytest.fixture
def probe():
    STAGES.register(FeedProbe)
    yield
    STAGES.unregister("feedprobe")


def rows(store, config) -> pl.DataFrame:
    return pl.from_arrow(make_stage("feedprobe", config, store).output.read()).sort("image_id")


def test_batches_are_prepared_in_feed_processes_that_live_across_chunks(tmp_path, image_root, probe):
    store = Store(tmp_path / "data")
    config = tiny(chunk_size=5, batch_size=2, feed_workers=2)  # 24 images: 5 chunks, 13 batches
    run_stage("ingest", config, store, inputs=[image_root])
    assert run_stage("feedprobe", config, store).ok == 24
    fed = rows(store, config)
    pids = set(fed["pid"].to_list())
    # prepared elsewhere, by at most the two workers started for the first chunk (a feed restarted per
    # chunk would show more processes over 5 chunks)
    assert os.getpid() not in pids and 1 <= len(pids) <= 2

    in_line = Store(tmp_path / "in-line")
    config0 = tiny(chunk_size=5, batch_size=2, feed_workers=0)
    run_stage("ingest", config0, in_line, inputs=[image_root])
    run_stage("feedprobe", config0, in_line)
    alone = rows(in_line, config0)
    assert set(alone["pid"].to_list()) == {os.getpid()}
    assert fed.select("image_id", "width").equals(alone.select("image_id", "width"))


def test_the_feed_stops_with_the_run(tmp_path, image_root, probe):
    store = Store(tmp_path / "data")
    config = tiny(chunk_size=8, feed_workers=1)
    run_stage("ingest", config, store, inputs=[image_root])
    stage = make_stage("feedprobe", config, store)
    stage.run()
    feed = stage.preparation.feed
    assert feed is None  # closed: the pool is shut down, its processes exit


def test_a_dask_worker_that_may_not_start_processes_prepares_in_line(tmp_path, image_root):
    """dask starts workers daemonic by default, and a daemonic process may not have children: there
    the stage prepares its batches itself instead of failing every chunk."""
    from pipeline.engine.executors import DaskExecutor

    store = Store(tmp_path / "data")
    config = tiny(chunk_size=8, feed_workers=2)
    run_stage("ingest", config, store, inputs=[image_root])
    with DaskExecutor(workers=1) as executor:
        assert run_stage("caption", config, store, executor=executor).ok == 24
