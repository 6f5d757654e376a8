"""DVC from a fresh copy of the project, nothing done by hand: `dvc repro` runs every stage, a second
repro runs nothing after ingest, a changed parameter re-runs only the stages after it, and
`dvc metrics diff` and an experiment with another head (`dvc exp run -S fit.head=lightgbm`,
`dvc exp show`) compare under stable metric keys."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.app.demo import make_images

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "caption", "ground", "embed", "distance", "fit", "evaluate", "report"]


def project_files() -> list[str]:
    """What a fresh clone holds: the tracked files, plus new ones git does not ignore (this checkout's)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def fresh_copy(repo: Path) -> None:
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)  # mtimes kept: the environment stamp stays newer


def this_environment(tmp: Path) -> Path:
    """A VENV folder for the Makefile whose python is the one running the tests (already installed)."""
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    (venv / ".installed").touch()
    return venv


def run(cmd: list[str], cwd: Path, venv: Path) -> str:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VENV": str(venv),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("PYTHONPATH", None)  # the Makefile points the CLI at the copy itself
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def commit(repo: Path, venv: Path, message: str) -> None:
    run(["git", "add", "-A"], repo, venv)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo, venv)


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


DVC = shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.skipif(DVC is None or shutil.which("git") is None, reason="dvc or git missing")
def test_dvc_from_a_fresh_copy_repro_metrics_diff_and_experiments(tmp_path):
    repo = tmp_path / "repo"
    fresh_copy(repo)
    venv = this_environment(tmp_path)
    assert (repo / ".dvc" / "config").exists()  # the project is a DVC repository as cloned
    params = yaml.safe_load((repo / "params.yaml").read_text())
    make_images(repo / "images", n_per_class=3)
    params.update(profile="tiny", inputs=["images"], runtime={"device": "cpu", "chunk_size": 8})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text((repo / ".gitignore").read_text() + "/images/\n")
    run(["git", "init", "-q"], repo, venv)
    commit(repo, venv, "clone")

    assert ran(run([DVC, "repro"], repo, venv)) == STAGES
    assert json.loads((repo / "data/dvc/caption.json").read_text())["rows"] == 12
    metrics = json.loads((repo / "data/dvc/evaluate.json").read_text())
    assert metrics["head"] == "mlp" and "acc" in metrics["all"] and "ap" in metrics["mean"]
    second = run([DVC, "repro"], repo, venv)
    assert ran(second) in ([], ["ingest"])  # ingest always runs (cheap) and changes nothing after it
    commit(repo, venv, "repro: dvc.lock and the summaries DVC tracks with git")

    params["ground"] = {"box_threshold": 0.5}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = ran(run([DVC, "repro"], repo, venv))
    assert [s for s in third if s != "ingest"] == ["ground", "embed", "distance", "fit", "evaluate", "report"]
    assert len(list((repo / "data/features/ground").iterdir())) == 2  # old shards kept beside new
    diff = run([DVC, "metrics", "diff", "--all", "--json"], repo, venv)
    compared = json.loads(diff[diff.index("{") :])["data/dvc/evaluate.json"]
    for key in ("all.acc", "all.ap", "mean.acc"):  # the same keys in HEAD and the workspace, side by side
        assert compared[key]["old"] is not None and compared[key]["new"] is not None
    assert compared["model"]["old"] != compared["model"]["new"]  # a new head, under the same keys
    assert not any("mlp-" in key for key in compared)  # the head's folder is a value, never a key

    commit(repo, venv, "ground 0.5")
    run([DVC, "exp", "run", "-S", "fit.head=lightgbm"], repo, venv)
    shown = run([DVC, "exp", "show", "--json"], repo, venv)
    rows = json.loads(shown[shown.index("[") :])
    baseline = next(r for r in rows if r.get("rev") != "workspace")
    experiment = baseline["experiments"][0]["revs"][0]["data"]

    def metrics(data):
        return data["metrics"]["data/dvc/evaluate.json"]["data"]

    assert metrics(baseline["data"])["head"] == "mlp" and metrics(experiment)["head"] == "lightgbm"
    assert experiment["params"]["params.yaml"]["data"]["fit"]["head"] == "lightgbm"
    assert metrics(experiment)["all"].keys() == metrics(baseline["data"])["all"].keys()  # stable keys
