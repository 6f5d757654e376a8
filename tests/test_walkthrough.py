"""The first hour as README walks it, through `make` from this checkout: `make demo` runs in a data
directory of its own; every polars and Python example in README.md and docs/*.md runs as written
after it, with counts that match the manifest (also once a second configuration is on disk); a
second `make demo` prints the same kind of summary; predict, status and `evaluate --all` name the
heads; a user's own ingest never meets demo rows, and `make clean-demo` removes only the demo."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.app.demo import make_images
from tests.test_dvc import this_environment

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT)}
SECOND_FP = "0123456789ab"  # a second configuration's folder, made by copying the current one


def make(*args: str, venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), *args, f"VENV={venv}"],
        env=OFFLINE,
        capture_output=True,
        text=True,
        timeout=900,
    )


def item(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=OFFLINE, capture_output=True, text=True, timeout=600
    )


def examples() -> list[tuple[str, str]]:
    """Every ```python block of README.md and docs/*.md, with where it is."""
    found = []
    for page in DOCS:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            found.append((f"{page.relative_to(ROOT)}#{i}", block))
    return found


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A folder standing for the checkout: `make demo` (3 images per class and generator) into its
    data/, and the project's params.yaml beside it, as a user has them after the first command."""
    tmp = tmp_path_factory.mktemp("walkthrough")
    venv = this_environment(tmp)
    first = make("demo", f"DATA={tmp / 'data'}", "DEMO_N=3", venv=venv)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copy2(ROOT / "params.yaml", tmp / "params.yaml")
    return {"root": tmp, "venv": venv, "demo": tmp / "data" / "demo", "first": first}


def manifest(demo: Path) -> pl.DataFrame:
    return pl.read_parquet(demo / "manifest" / "*.parquet")


def run_polars(block: str, cwd: Path, monkeypatch) -> dict:
    """Run a polars example in this process, from `cwd`, and return its variables."""
    script = cwd / "example.py"
    script.write_text(block)
    monkeypatch.chdir(cwd)
    return runpy.run_path(str(script), run_name="example")


def check_counts(name: str, ns: dict, demo: Path) -> None:
    """The example's results against the manifest, computed another way."""
    m = manifest(demo)
    ok = m.filter(pl.col("status") == "ok")
    n_errors = m.filter(pl.col("status") == "error").height
    assert n_errors >= 1  # the demo's truncated file
    ground = pl.read_parquet(next((demo / "features" / "ground").glob("*/")) / "*.parquet")
    no_objects = ground.filter((pl.col("status") == "ok") & (pl.col("objects").list.len() == 0)).height
    per_class = ns["per_class"]
    per_class = per_class.collect() if isinstance(per_class, pl.LazyFrame) else per_class
    expected = (ok if "X" in ns else m).group_by("generator", "label").len()  # the raw example keeps ok rows
    joined = expected.join(
        per_class.select("generator", "label", "len"), on=["generator", "label"], how="full", nulls_equal=True
    )
    assert joined.filter(pl.col("len") != pl.col("len_right")).is_empty(), (name, joined)
    assert per_class["len"].sum() == (ok.height if "X" in ns else m.height), name
    errors = ns["errors"].collect() if isinstance(ns["errors"], pl.LazyFrame) else ns["errors"]
    assert errors["len"].sum() == n_errors, name
    no_obj = ns["no_objects"].collect() if isinstance(ns["no_objects"], pl.LazyFrame) else ns["no_objects"]
    assert no_obj.height == no_objects, name
    if "X" in ns:
        assert ns["X"].shape == (ok.height, 768), name
    if "for_code" in ns:
        assert ns["for_code"].collect()["len"].sum() == n_errors, name
    if "configurations" in ns:
        counts = ns["configurations"].collect()
        assert counts["len"].to_list() == [m.height] * counts.height, name  # each configuration: every image once


def test_demo_lives_in_its_own_data_directory(checkout):
    root = checkout["root"]
    assert (checkout["demo"] / "DEMO").is_file() and (checkout["demo"] / "manifest").is_dir()
    assert sorted(p.name for p in (root / "data").iterdir()) == ["demo"]  # nothing in the user's data root
    refused = item("demo", "--data-dir", str(root / "data"), cwd=root)  # the user's data root: refused
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "not the demo's" in refused.stderr


def test_every_polars_example_in_the_docs_runs_with_counts_from_the_manifest(checkout, monkeypatch):
    blocks = [(name, b) for name, b in examples() if "__main__" not in b]
    assert len(blocks) >= 2 and any("scan(" in b for _, b in blocks) and any("scan_parquet" in b for _, b in blocks)
    for name, block in blocks:
        check_counts(name, run_polars(block, checkout["root"], monkeypatch), checkout["demo"])
    # a second configuration on disk (as another captioner or threshold leaves): the same counts
    for stage in ("caption", "distance"):
        [current] = list((checkout["demo"] / "features" / stage).iterdir())
        shutil.copytree(current, current.parent / SECOND_FP)
    try:
        for name, block in blocks:
            ns = run_polars(block, checkout["root"], monkeypatch)
            check_counts(name, ns, checkout["demo"])
            if "configurations" in ns:
                assert ns["configurations"].collect().height == 2
    finally:
        for stage in ("caption", "distance"):
            shutil.rmtree(checkout["demo"] / "features" / stage / SECOND_FP)


def test_scan_of_a_configuration_not_on_disk_is_one_line(checkout, monkeypatch):
    from pipeline.app.query import scan
    from pipeline.engine.errors import UsageError

    monkeypatch.chdir(checkout["root"])
    with pytest.raises(UsageError) as e:
        scan("distance", data_dir="data/demo")  # params.yaml's profile (paper): not what the demo ran
    message = str(e.value)
    assert "\n" not in message and "'paper'" in message and "profile='tiny'" in message and "on disk:" in message


def test_the_python_api_example_runs_and_a_glob_matching_nothing_is_one_line(checkout):
    [(name, block)] = [(n, b) for n, b in examples() if "__main__" in b and "predict(" in b]
    root = checkout["root"]
    (root / "api.py").write_text(block)
    out = subprocess.run([sys.executable, "api.py"], cwd=root, env=OFFLINE, capture_output=True, text=True)
    assert out.returncode == 0, (name, out.stderr[-2000:])
    unseen = sorted((checkout["demo"] / "raw" / "demo-unseen").iterdir())
    latest = (checkout["demo"] / "models" / "LATEST").read_text().strip()
    assert out.stdout.split()[:2] == [str(len(unseen)), latest]
    scores = pl.read_csv(root / "scores.csv")
    assert scores.height == len(unseen) and scores.columns[3:6] == ["decision", "threshold", "head"]
    (root / "api.py").write_text(
        block.replace('"data/demo/raw/demo-unseen/"', '"data/demo/raw/demo-unseen/", "more/*.jpg"')
    )
    bad = subprocess.run([sys.executable, "api.py"], cwd=root, env=OFFLINE, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: no file matches more/*.jpg"]


def test_a_second_make_demo_prints_the_same_kind_of_summary(checkout):
    second = make("demo", f"DATA={checkout['root'] / 'data'}", "DEMO_N=3", venv=checkout["venv"])
    assert second.returncode == 0, second.stderr[-2000:]
    first, again = checkout["first"].stdout, second.stdout
    for out in (first, again):
        assert "computed 0 row(s)" not in out and " INFO " not in out + second.stderr
    assert "nothing recomputed: every stage was up to date" in again

    def headings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.endswith(":") or line.startswith("| method")]

    assert headings(first) == headings(again.replace(" (unchanged since the last run: from reports/)", ""))


def test_predict_status_and_evaluate_all_name_the_heads(checkout):
    root, data = checkout["root"], ["--data-dir", "data/demo"]
    first = (checkout["demo"] / "models" / "LATEST").read_text().strip()
    fit = item("fit", *data, "--profile", "tiny", "--w1", "1", "--w2", "0.5", cwd=root)
    assert fit.returncode == 0, fit.stderr
    ablation = (checkout["demo"] / "models" / "LATEST").read_text().strip()
    assert ablation != first
    unseen = "data/demo/raw/demo-unseen"
    default = item("predict", unseen, "--out", "p.jsonl", *data, cwd=root)
    assert default.returncode == 0, default.stderr
    assert f"head {ablation} (both, w1=1, w2=0.5) (the default" in default.stdout
    pinned = item("predict", unseen, "--out", "p.csv", "--model", first, *data, cwd=root)
    assert f"head {first} (both, w1=1, w2=1) (--model)" in pinned.stdout
    keys = list(json.loads((root / "p.jsonl").read_text().splitlines()[0]))
    assert keys == pl.read_csv(root / "p.csv").columns  # one column order in every format
    status = item("status", *data, "--profile", "tiny", cwd=root).stdout
    assert f"* {ablation} (both, w1=1, w2=0.5)" in status and f"  {first} (both, w1=1, w2=1)" in status
    table = item("evaluate", "--all", *data, "--profile", "tiny", cwd=root).stdout
    assert f"| {ablation} (both, w1=1, w2=0.5) |" in table and f"| {first} (both, w1=1, w2=1) |" in table
    restored = item("fit", *data, "--profile", "tiny", cwd=root)  # params.yaml's head is the default again
    assert restored.returncode == 0 and (checkout["demo"] / "models" / "LATEST").read_text().strip() == first


def test_a_users_ingest_never_meets_the_demo_and_clean_demo_removes_only_the_demo(checkout, tmp_path):
    root, venv, data = checkout["root"], checkout["venv"], checkout["root"] / "data"
    mine = make_images(tmp_path / "mine", n_per_class=1)
    ingest = make("ingest", f"INPUTS={mine}", f"DATA={data}", venv=venv)
    assert ingest.returncode == 0, ingest.stderr
    before = manifest(data)
    assert before.height == 4 and set(before["dataset"]) == {"mine"}  # no demo row in the user's data root
    cleaned = make("clean-demo", f"DATA={data}", venv=venv)
    assert cleaned.returncode == 0 and "removed" in cleaned.stdout, cleaned.stderr
    assert not checkout["demo"].exists()
    after = manifest(data)
    assert after.sort("image_id").equals(before.sort("image_id"))  # the user's rows intact
    assert "no demo data" in make("clean-demo", f"DATA={data}", venv=venv).stdout
    other = tmp_path / "other"
    (other / "demo" / "manifest").mkdir(parents=True)
    refused = make("clean-demo", f"DATA={other}", venv=venv)
    assert refused.returncode != 0 and (other / "demo" / "manifest").is_dir()  # not made by the demo: kept
    assert root.exists()
