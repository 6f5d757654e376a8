"""Baselines from the cache: each trains without a model stage, and each sees what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.app.runner import compare, make_stage, run_stage
from pipeline.engine import schemas
from pipeline.engine.config import resolve
from pipeline.engine.errors import UsageError
from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.store import Store
from pipeline.models import load_counts
from stages.baselines import leakage_warning
from stages.caption import CAPTION
from stages.embed import embed_schema
from stages.ground import GROUND

ROOT = Path(__file__).resolve().parents[2]
N, DIM = 600, 768


def write_store(root: Path, image: np.ndarray, text: np.ndarray, labels: np.ndarray, formats=None) -> Store:
    """Manifest, caption, ground (no objects) and embed rows written directly; distance computed by its stage."""
    store, config = Store(root), resolve("tiny")
    n = len(labels)
    ids = [image_id_of_bytes(f"{root}:{i}".encode()) for i in range(n)]
    ok = {"status": ["ok"] * n, **{c: pa.nulls(n, pa.string()) for c in schemas.ERROR_COLUMNS}}
    split = np.where(np.arange(n) % 10 < 7, "train", np.where(np.arange(n) % 10 < 8, "val", "test"))
    formats = formats or ["PNG"] * n
    store.manifest.write(
        pa.table(
            {
                "image_id": ids,
                "path": [f"/x/{i}" for i in range(n)],
                "label": pa.array(labels, pa.int8()),
                "generator": ["g"] * n,
                "dataset": ["d"] * n,
                "split": split.tolist(),
                "width": pa.array([256] * n, pa.int32()),
                "height": pa.array([256] * n, pa.int32()),
                "format": formats,
                "jpeg_quality": pa.array([90 if f == "JPEG" else None for f in formats], pa.int16()),
                "n_bytes": pa.array([50_000] * n, pa.int64()),
                "caption": pa.nulls(n, pa.string()),
                **ok,
            },
        )
    )
    made = {s: make_stage(s, config, store) for s in ("caption", "ground", "embed")}
    fp = {s: stage.fingerprint for s, stage in made.items()}
    stamp = {s: stage.identity() for s, stage in made.items()}  # what readers check a part against
    store.features("caption", fp["caption"], CAPTION).write(
        pa.table({"image_id": ids, "caption": ["x"] * n, **ok}), metadata=stamp["caption"]
    )
    store.features("ground", fp["ground"], GROUND).write(
        pa.table({"image_id": ids, "objects": [[] for _ in ids], **ok}, schema=GROUND), metadata=stamp["ground"]
    )
    vec = lambda x: pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), DIM)  # noqa: E731
    empty = pa.array([[] for _ in ids], pa.list_(schemas.vector(DIM)))
    store.features("embed", fp["embed"], embed_schema(DIM)).write(
        pa.table(
            {
                "image_id": ids,
                "image_embed": vec(image),
                "text_embed": vec(text),
                "object_image_embeds": empty,
                "object_text_embeds": empty,
                "truncated_texts": pa.array([0] * n, pa.int16()),
                **ok,
            },
            schema=embed_schema(DIM),
        ),
        metadata=stamp["embed"],
    )
    run_stage("distance", config, store)
    return store


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def by_method(results):
    return {r["method"]: r["all"]["ap"] for r in results}


def test_image_signal_is_seen_by_unifd_not_by_cosine(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, N)
    image = rng.normal(size=(N, DIM))
    image[:, 0] += 6.0 * labels  # the label lives in the image embedding alone
    text = rng.normal(size=(N, DIM))
    store = write_store(tmp_path, image, text, labels)
    before = load_counts()
    aps = by_method(compare(["unifd", "cosine", "defake", "item"], resolve("tiny"), store))
    assert load_counts() == before  # no model was loaded: everything came from the cache
    assert aps["unifd"] > 0.95
    assert aps["defake"] > 0.7  # well above chance; its 1,536 inputs include 768 of pure noise (the caption)
    assert abs(aps["cosine"] - labels[np.arange(N) % 10 >= 8].mean()) < 0.2  # chance: near the share of fakes


def test_misalignment_signal_is_seen_by_cosine_not_by_unifd(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, N)
    image = unit(rng.normal(size=(N, DIM)))  # the same distribution for both classes
    noise = unit(rng.normal(size=(N, DIM)))
    alignment = np.where(labels == 1, 0.1, 0.6)[:, None]  # fakes match their captions less
    text = alignment * image + (1 - alignment) * noise
    store = write_store(tmp_path, image, text, labels)
    aps = by_method(compare(["unifd", "cosine", "cosine-local"], resolve("tiny"), store))
    assert aps["cosine"] > 0.95
    assert aps["cosine-local"] > 0.95  # no objects: the mean object cosine falls back to the global one
    assert aps["unifd"] < 0.75


def test_format_probe_flags_a_dataset_that_leaks_labels_through_compression(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, N)
    formats = ["JPEG" if y == 0 else "PNG" for y in labels]  # reals are JPEGs, fakes PNGs
    store = write_store(tmp_path, rng.normal(size=(N, DIM)), rng.normal(size=(N, DIM)), labels, formats)
    results = compare(["format", "cosine"], resolve("tiny"), store)
    assert by_method(results)["format"] > 0.99
    assert "format-only probe reaches AP" in leakage_warning(results)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "evaluate",
            "--heads",
            "item,unifd,cosine,format",
            "--data-dir",
            str(store.root),
            "--profile",
            "tiny",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| item |" in out.stdout and "| format |" in out.stdout and "WARNING: the format-only probe" in out.stdout
    assert (store.reports / "comparison_ap.md").exists()


def test_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="unknown method 'npr' for --heads; known: item, "):
        compare(["npr"], resolve("tiny"), Store(tmp_path))


def test_the_format_warning_names_a_single_leaking_generator_when_the_mean_hides_it():
    results = [
        {"method": "item", "all": {"ap": 0.8}, "generators": {"ml72": {"ap": 1.0}}},
        {"method": "format", "all": {"ap": 0.7}, "generators": {"ml72": {"ap": 1.0}, "sd": {"ap": 0.52}}},
    ]
    warning = leakage_warning(results)
    assert warning is not None and "on ml72" in warning and "sd" not in warning.split("(")[0]
    results[1]["generators"]["ml72"]["ap"] = 0.6
    assert leakage_warning(results) is None
