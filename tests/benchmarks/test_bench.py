"""`item bench` figures at small sizes: each runs, measures what it says, and checks its own rows
(the full sizes are `make bench`'s; nothing here is timed against a target)."""

from __future__ import annotations

import math

import pytest

from benchmarks import bench


def test_no_op_models_give_one_row_per_image_and_a_cpu_cost_per_stage():
    figures = bench.bench_stage_cpu(n_images=4)
    assert [f["figure"].split(":")[0] for f in figures] == ["caption", "ground", "embed"]
    assert all(f["value"] > 0 and f["unit"] == "s" for f in figures)  # decoding alone costs CPU time


def test_ingest_from_a_tar_shard_is_compared_with_a_bare_loop():
    figure = bench.bench_ingest_tar(n_images=6, pixels=(320, 240))
    assert figure["value"] > 0 and figure["stage_img_s"] > 0 and figure["bare_img_s"] > 0


def test_object_storage_cost_is_measured_against_local_files():
    pytest.importorskip("moto.server")
    figures = bench.bench_object_storage(n_images=4)
    assert len(figures) == 2
    assert all(not math.isnan(f["value"]) and f["s3_ms"] > 0 and f["local_ms"] > 0 for f in figures)
