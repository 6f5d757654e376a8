"""A batch that runs out of GPU memory is split until it fits: the rows are those of batch size 1,
with no error rows; an image that does not fit even alone gets an error row that says so.

The backend here is the real tiny BLIP-2 captioner behind a memory limit: any call with more images
than the limit raises torch's OutOfMemoryError, as a GPU would (a CPU cannot run out of CUDA memory).
"""

from __future__ import annotations

import logging

import polars as pl
import pytest
import torch

from pipeline.app.runner import run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store
from pipeline.models import CAPTIONERS
from pipeline.models.captioners import Blip2Captioner

LIMITED = "blip2-memory-limited"
CALLS: list[int] = []


class MemoryLimitedBlip2(Blip2Captioner):
    limit = 2  # images per call that fit

    def caption(self, images: list) -> list[str | None]:
        CALLS.append(len(images))
        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: tried {len(images)} images")
        return super().caption(images)


@pytest.fixture(autouse=True)
def limited_backend():
    """Registered for these tests only: the registry lists real backends everywhere else."""
    CAPTIONERS.register(LIMITED)(MemoryLimitedBlip2)
    yield
    CAPTIONERS.unregister(LIMITED)


def store_and_config(tmp_path, name: str, backend: str, batch_size: int):
    caption = {"backend": backend, "model": "tiny/blip2"}
    return Store(tmp_path / name), resolve("tiny", {"caption": caption}, {"device": "cpu", "batch_size": batch_size})


def test_an_out_of_memory_batch_is_split_until_it_fits(tmp_path, image_root, caplog):
    results = {}
    for name, backend, batch_size in (("alone", "blip2", 1), ("limited", LIMITED, 8)):
        store, config = store_and_config(tmp_path, name, backend, batch_size)
        run_stage("ingest", config, store, inputs=[image_root / "toygan"])
        CALLS.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.engine.feature"):
            stats = run_stage("caption", config, store)
        assert (stats.ok, stats.error) == (12, 0), name
        results[name] = pl.from_arrow(store.features("caption", stats.fingerprint).read(["image_id", "caption"]))
    # 12 images in batches of 8 and 4: each split in halves until 2 fit; every image captioned once
    assert CALLS[0] == 8 and sum(n for n in CALLS if n <= MemoryLimitedBlip2.limit) == 12
    assert "out of memory on a batch: splitting it" in caplog.text
    assert results["alone"].sort("image_id").equals(results["limited"].sort("image_id"))


def test_an_image_that_never_fits_gets_an_error_row(tmp_path, image_root):
    MemoryLimitedBlip2.limit = 0
    try:
        store, config = store_and_config(tmp_path, "never", LIMITED, 1)
        run_stage("ingest", config, store, inputs=[image_root / "toygan" / "0_real"])
        stats = run_stage("caption", config, store)
    finally:
        MemoryLimitedBlip2.limit = 2
    assert (stats.ok, stats.error) == (0, 6)
    errors = store.features("caption", stats.fingerprint).read(["error"]).column("error").to_pylist()
    assert all(e.startswith("model error: OutOfMemoryError: CUDA out of memory") for e in errors)
