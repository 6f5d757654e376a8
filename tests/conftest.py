"""Shared fixtures: the tiny profile, a small synthetic image set, and one full pipeline run.

Nothing here touches the network: HF_HUB_OFFLINE is forced on before any model code is imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipeline.app.demo import make_images  # noqa: E402
from pipeline.app.runner import run_stage  # noqa: E402
from pipeline.engine.config import resolve  # noqa: E402
from pipeline.engine.store import Store  # noqa: E402

ODD = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny(**runtime):
    """The tiny profile with small chunks, so a few images make several part files."""
    return resolve("tiny", {}, {"chunk_size": 8, "batch_size": 4, "loader_threads": 2, "device": "cpu", **runtime})


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """Synthetic demo images: 2 generators x 2 classes x 6 = 24 PNGs."""
    return make_images(tmp_path_factory.mktemp("images"), n_per_class=6)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, image_root) -> Store:
    """One run of ingest..fit on the synthetic images (shared by the read-only stage tests)."""
    store = Store(tmp_path_factory.mktemp("data"))
    config = tiny()
    run_stage("ingest", config, store, inputs=[image_root], dataset="demo")
    for name in ("caption", "ground", "embed", "distance", "fit"):
        run_stage(name, config, store)
    return store


@pytest.fixture
def odd_root() -> Path:
    if not (ODD / "CATALOG.csv").exists():
        pytest.skip("../shared/data/odd is not present")
    return ODD
