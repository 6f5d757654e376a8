"""Kill safety and concurrency: a stage run as a subprocess, SIGKILLed at random moments and
mid-write, then re-run; two runs of one stage at once. `make soak` runs more trials
(ITEM_SOAK_TRIALS)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.store import LockedError, Store
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[2]
TRIALS = int(os.environ.get("ITEM_SOAK_TRIALS", "3"))
N_IMAGES = int(os.environ.get("ITEM_SOAK_IMAGES", "200"))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A few hundred small images, ingested."""
    root = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(root / f"{i:04d}.png")
    store = Store(tmp_path_factory.mktemp("data"))
    run_stage("ingest", tiny(), store, inputs=[root])
    return store


def start(store: Store, stage: str, write_delay: float) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "ITEM_FAULT_WRITE_DELAY": str(write_delay)}
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        stage,
        "--data-dir",
        str(store.root),
        "--profile",
        "tiny",
        "--chunk-size",
        "4",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def check_output(store: Store, stage: str) -> None:
    """Exactly the manifest's ids once each; every part readable; no temporary file left."""
    out = make_stage(stage, tiny(), store).output
    manifest_ids = sorted(store.manifest.ids())
    rows = pl.concat([pl.from_arrow(pq.read_table(p, columns=["image_id", "status"])) for p in out.parts()])
    assert rows["image_id"].n_unique() == rows.height, "duplicate rows"
    assert sorted(rows["image_id"].to_list()) == manifest_ids
    assert (rows["status"] == "ok").all()
    assert not list(out.path.glob(".part-*.tmp"))


def test_sigkill_at_random_moments_and_mid_write_loses_and_duplicates_nothing(ingested):
    store = ingested
    out = make_stage("caption", tiny(), store).output
    rng = random.Random(0)
    killed_mid_write = 0
    for trial in range(TRIALS):
        before = len(out.parts())
        proc = start(store, "caption", write_delay=0.2)
        try:
            if trial == 0:  # kill while a part's temporary file exists: mid-write by construction
                wait_for(lambda: any(out.path.glob(".part-*.tmp")))
            else:  # kill at a random moment after the run has written something
                wait_for(lambda b=before, p=proc: len(out.parts()) > b or p.poll() is not None)
                time.sleep(rng.uniform(0.0, 1.0))
            killed_mid_write += any(out.path.glob(".part-*.tmp"))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        for part in out.parts():  # every complete part stays readable after a kill
            pq.read_table(part)
    assert killed_mid_write >= 1
    final = start(store, "caption", write_delay=0.0)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()[-2000:]
    check_output(store, "caption")
    again = run_stage("caption", tiny(), store)
    assert again.todo == 0


def test_second_run_refuses_while_first_holds_the_lock_and_a_killed_holder_does_not_block(ingested):
    store = ingested
    stage = "ground" if make_stage("caption", tiny(), store).output.exists() else "caption"
    if stage == "ground":  # ground reads captions: make sure they are complete
        run_stage("caption", tiny(), store)
    out = make_stage(stage, tiny(), store).output
    proc = start(store, stage, write_delay=0.5)
    try:
        wait_for(lambda: (out.path / ".lock").exists() and (out.path / ".lock").read_text().startswith("pid"))
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            run_stage(stage, tiny(), store)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out.path / ".lock").exists()  # the killed holder left its lock file behind ...
    stats = run_stage(stage, tiny(), store)  # ... which does not block: the OS lock died with it
    assert stats.todo > 0
    check_output(store, stage)
