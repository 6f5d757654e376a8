"""`dvc repro` in a temporary git repository: every stage runs, a second repro does nothing, and a
changed parameter re-runs only the stages after it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.app.demo import make_images

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "caption", "ground", "embed", "distance", "fit", "evaluate", "report"]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="dvc or git missing")
def test_dvc_repro_runs_everything_then_nothing_then_only_what_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    make_images(repo / "images", n_per_class=3)
    params.update(profile="tiny", inputs=["images"], runtime={"device": "cpu", "chunk_size": 8})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    assert ran(run(["dvc", "repro"], repo)) == STAGES
    assert json.loads((repo / "data/dvc/caption.json").read_text())["rows"] == 12
    assert (repo / "data/reports/metrics.json").exists()
    second = run(["dvc", "repro"], repo)
    assert ran(second) == [] or ran(second) == ["ingest"]  # ingest always runs (cheap) ...
    assert "didn't change" in second and "caption" not in ran(second)  # ... and nothing after it
    params["ground"] = {"box_threshold": 0.5}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = ran(run(["dvc", "repro"], repo))
    assert [s for s in third if s != "ingest"] == ["ground", "embed", "distance", "fit", "evaluate", "report"]
    parts = list((repo / "data/features/caption").rglob("part-*.parquet"))
    assert parts and len(list((repo / "data/features/ground").iterdir())) == 2  # old shards kept beside new
