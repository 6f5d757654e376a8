"""Every model stage gives the same rows whatever the batch size, the chunking, a resume point or the
executor, on images of mixed sizes and shapes (tiny and large, portrait and panorama, grey, CMYK).

Grounding DINO is the case that needs care: a batch is padded to its largest image and the backbone
sees the padding, so the grounder batches only images resized to the same shape."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.executors import DaskExecutor
from pipeline.engine.store import Store
from tests.conftest import tiny

STAGES = ("caption", "ground", "embed", "distance")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(7)

    def noise(w: int, h: int) -> Image.Image:
        return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))

    noise(1, 1).save(root / "one_pixel.png")
    noise(900, 40).save(root / "panorama.png")
    noise(40, 700).save(root / "portrait.png")
    noise(1600, 1200).save(root / "large.jpg", quality=90)
    noise(640, 480).save(root / "vga.png")
    noise(256, 256).convert("L").save(root / "grey.png")
    noise(300, 200).convert("CMYK").save(root / "cmyk.jpg")
    noise(33, 77).save(root / "odd.png")
    noise(480, 640).save(root / "vga_portrait.png")
    noise(256, 256).save(root / "square.png")
    return root


def compute(
    tmp_path,
    images,
    name: str,
    batch_size: int,
    chunk_size: int,
    resume=False,
    executor=None,
    prefetch="auto",
    feed_workers=None,
):
    """Every model stage's rows for one way of batching, as {stage: frame sorted by image_id}."""
    store = Store(tmp_path / name)
    config = tiny(batch_size=batch_size, chunk_size=chunk_size, prefetch=prefetch, feed_workers=feed_workers)
    run_stage("ingest", config, store, inputs=[images])
    for stage in STAGES:
        if resume:  # a run stopped after a few images, then resumed
            first = sorted(make_stage(stage, config, store).todo())[:3]
            run_stage(stage, config, store, ids=set(first))
        run_stage(stage, config, store, executor=executor)
    return {
        stage: pl.from_arrow(store.features(stage, make_stage(stage, config, store).fingerprint).read()).sort(
            "image_id"
        )
        for stage in STAGES
    }


def assert_same_rows(a: pl.DataFrame, b: pl.DataFrame, stage: str) -> None:
    assert a["image_id"].to_list() == b["image_id"].to_list(), stage
    assert a["status"].to_list() == b["status"].to_list() and a["error"].to_list() == b["error"].to_list(), stage
    for column in a.columns:
        left, right = a[column].to_list(), b[column].to_list()
        if a.schema[column] in (pl.String,) or column in ("n_objects",):
            assert left == right, (stage, column)
        else:
            assert_close(left, right, f"{stage}.{column}")


def assert_close(left, right, where: str) -> None:
    """Equal structure and text; numbers equal to float32 rounding (a different batch shape may change
    the order of a sum inside a matrix product, never more)."""
    if isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_close(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), where
        for x, y in zip(left, right, strict=True):
            assert_close(x, y, where)
    elif isinstance(left, float):
        assert right is not None and abs(left - right) <= 1e-5 + 1e-4 * abs(left), (where, left, right)
    else:
        assert left == right, (where, left, right)


def test_rows_are_the_same_for_batch_sizes_chunkings_resume_and_dask(tmp_path, mixed):
    reference = compute(tmp_path, mixed, "b1", batch_size=1, chunk_size=256)
    assert reference["ground"]["status"].to_list().count("ok") == 10
    assert sum(len(o or []) for o in reference["ground"]["objects"].to_list()) > 0  # objects to compare
    variants = {
        # next batches prepared in a thread, as on a GPU (on a CPU, `auto` prepares them in line)
        "b3-c4-resumed-prefetch": compute(
            tmp_path, mixed, "b3", batch_size=3, chunk_size=4, resume=True, prefetch="on"
        ),
        "b8-c3": compute(tmp_path, mixed, "b8", batch_size=8, chunk_size=3),
        # batches prepared in two feed processes, alive across chunks
        "b2-c4-feed2": compute(tmp_path, mixed, "feed", batch_size=2, chunk_size=4, feed_workers=2),
    }
    executor = DaskExecutor(workers=2)
    try:
        variants["dask-b3-c2"] = compute(tmp_path, mixed, "dask", batch_size=3, chunk_size=2, executor=executor)
    finally:
        executor.close()
    for name, rows in variants.items():
        for stage in STAGES:
            assert_same_rows(reference[stage], rows[stage], f"{name}: {stage}")
