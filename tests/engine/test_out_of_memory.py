"""A batch that runs out of GPU memory is split until it fits: the rows are those of batch size 1,
with no error rows; an image that does not fit even alone gets an error row that says so.

The backend here is the real tiny BLIP-2 captioner behind a memory limit: any call with more images
than the limit raises torch's OutOfMemoryError, as a GPU would (a CPU cannot run out of CUDA memory).
"""

from __future__ import annotations

import logging
import weakref

import polars as pl
import pytest
import torch

from pipeline.app.runner import make_stage, run_stage
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


HEAVY = "blip2-one-image-too-large"


class OneImageTooLarge(Blip2Captioner):
    """Every image takes one unit of memory and two fit at once, except the image whose pixels sum to
    `heavy`, which does not fit even alone (a very large image, on a GPU that holds the model)."""

    heavy: float | None = None

    def caption(self, images: list) -> list[str | None]:
        used = sum(100 if float(im.sum()) == self.heavy else 1 for im in images)
        if used > 2:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {used} units for {len(images)} images")
        return super().caption(images)


HOLDING = "blip2-holding-activations"
FAILED_CALLS: list[weakref.ref] = []  # the activations of each call that ran out of memory
HELD_AT_CALL: list[int] = []  # how many of those were still alive when each call started


class HoldsActivations(Blip2Captioner):
    """Allocates its activations, then runs out of memory with more than two images, as a forward does."""

    def caption(self, images: list) -> list[str | None]:
        HELD_AT_CALL.append(sum(ref() is not None for ref in FAILED_CALLS))
        activations = torch.zeros(len(images), 1024)
        if len(images) > 2:
            FAILED_CALLS.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: tried {len(images)} images")
        return super().caption(images)


@pytest.fixture(autouse=True)
def limited_backend():
    """Registered for these tests only: the registry lists real backends everywhere else."""
    backends = {LIMITED: MemoryLimitedBlip2, HEAVY: OneImageTooLarge, HOLDING: HoldsActivations}
    for name, cls in backends.items():
        CAPTIONERS.register(name)(cls)
    yield
    for name in backends:
        CAPTIONERS.unregister(name)


def store_and_config(tmp_path, name: str, backend: str, batch_size: int):
    caption = {"backend": backend, "model": "tiny/blip2"}
    return Store(tmp_path / name), resolve("tiny", {"caption": caption}, {"device": "cpu", "batch_size": batch_size})


def test_an_out_of_memory_batch_is_split_until_it_fits(tmp_path, image_root, caplog):
    results = {}
    for name, backend, batch_size in (("alone", "blip2", 1), ("limited", LIMITED, 8)):
        store, config = store_and_config(tmp_path, name, backend, batch_size)
        run_stage("ingest", config, store, inputs=[image_root / "toygan"])
        CALLS.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.engine.batches"):
            stats = run_stage("caption", config, store)
        assert (stats.ok, stats.error) == (12, 0), name
        results[name] = pl.from_arrow(store.features("caption", stats.fingerprint).read(["image_id", "caption"]))
    # 12 images in batches of 8 and 4: the first splits in halves until 2 fit; every image captioned once
    assert CALLS[0] == 8 and sum(n for n in CALLS if n <= MemoryLimitedBlip2.limit) == 12
    assert "out of memory at a batch of 8: continuing at 4" in caplog.text
    # ... and the run continues at the size that fit: the second batch (4 images) never runs out first
    assert CALLS[:2] == [8, 4] and CALLS[2:] == [2] * 6, CALLS
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


def test_an_image_that_never_fits_among_images_that_do_gets_the_only_error_row(tmp_path, image_root):
    """A batch of 8 splits down to the one image that does not fit alone: it gets an error row, and
    every other row is the one batch size 1 gives."""
    store, config = store_and_config(tmp_path, "alone", "blip2", 1)
    run_stage("ingest", config, store, inputs=[image_root / "toygan"])
    alone = pl.from_arrow(store.features("caption", run_stage("caption", config, store).fingerprint).read())
    manifest = store.manifest.read(["image_id", "path"]).sort_by("image_id")
    heavy_id = manifest.column("image_id")[3].as_py()
    stage = make_stage("caption", config, store)
    OneImageTooLarge.heavy = float(stage.prepare(manifest.slice(3, 1))[0].sum())  # the stage's own pixels

    store, config = store_and_config(tmp_path, "limited", HEAVY, 8)
    run_stage("ingest", config, store, inputs=[image_root / "toygan"])
    stats = run_stage("caption", config, store)
    assert (stats.ok, stats.error) == (11, 1)
    limited = pl.from_arrow(store.features("caption", stats.fingerprint).read())
    error = limited.filter(pl.col("status") == "error")
    assert error["image_id"].to_list() == [heavy_id]
    assert error["error"][0].startswith("model error: OutOfMemoryError: CUDA out of memory: 100 units")
    ok = ["image_id", "caption"]
    assert (
        limited.filter(pl.col("status") == "ok")
        .select(ok)
        .sort("image_id")
        .equals(alone.filter(pl.col("image_id") != heavy_id).select(ok).sort("image_id"))
    )


def test_a_failed_batch_frees_its_memory_before_the_halves_run(tmp_path, image_root):
    """The halves of a batch that ran out of memory must not run while the failed call's tensors are
    still held (the traceback holds its frames): on a GPU they would take the memory the halves need.
    PyTorch's FAQ: recover from an OOM outside the except clause."""
    FAILED_CALLS.clear()
    HELD_AT_CALL.clear()
    store, config = store_and_config(tmp_path, "holding", HOLDING, 8)
    run_stage("ingest", config, store, inputs=[image_root / "toygan" / "0_real"])
    stats = run_stage("caption", config, store)
    assert (stats.ok, stats.error) == (6, 0) and len(FAILED_CALLS) >= 2
    assert HELD_AT_CALL == [0] * len(HELD_AT_CALL)
