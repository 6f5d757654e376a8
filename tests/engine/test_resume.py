"""Which images a stage computes, in the cases a user's store gets into."""

from __future__ import annotations

import numpy as np
import polars as pl
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.store import Store
from tests.conftest import tiny


def test_a_fixed_and_re_ingested_file_never_leaves_a_stage_failing_or_computing_forever(tmp_path):
    """A corrupt file gets error rows; it is fixed and re-ingested (a new image, the old id leaves the
    manifest); the next stage runs before the first one has seen the fixed file: it computes what it
    can, never fails for the image that left, and is then up to date."""
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / f"ok{k}.png")
    good = (root / "ok0.png").read_bytes()
    (root / "broken.png").write_bytes(good[: len(good) // 2])
    store, config = Store(tmp_path / "data"), tiny()
    run_stage("ingest", config, store, inputs=[root])
    run_stage("caption", config, store)
    Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / "broken.png")  # fixed
    run_stage("ingest", config, store, inputs=[root])
    stats = run_stage("ground", config, store)  # caption has a row for the old id, the manifest does not
    assert stats.error == 0 and stats.ok == 3
    assert make_stage("ground", config, store).todo() == []
    run_stage("caption", config, store)  # the fixed file's new id
    assert run_stage("ground", config, store).ok == 1
    rows = pl.from_arrow(make_stage("ground", config, store).output.read())
    assert rows.height == 4 and (rows["status"] == "ok").all()
