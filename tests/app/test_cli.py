"""End to end through the `item` CLI, as a user runs it (separate processes, offline)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[2]


def item(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_help_explains_every_command(tmp_path):
    out = item("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in (
        "ingest",
        "caption",
        "ground",
        "embed",
        "distance",
        "fit",
        "evaluate",
        "predict",
        "status",
        "demo",
        "run",
        "perturb",
        "robustness",
        "report",
        "check",
        "bench",
    ):
        assert command in out.stdout
    assert "Grounding DINO" in item("ground", "--help", cwd=tmp_path).stdout


def test_stage_commands_end_to_end_then_nothing_to_redo(tmp_path):
    from pipeline.app.demo import make_images

    images = make_images(tmp_path / "images", n_per_class=4)
    data = tmp_path / "data"
    common = ["--data-dir", str(data), "--profile", "tiny"]
    assert item("ingest", str(images), "--data-dir", str(data), cwd=tmp_path).returncode == 0
    for stage in ("caption", "ground", "embed", "distance", "fit"):
        run = item(stage, *common, *(["--chunk-size", "5"] if stage != "fit" else []), cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "computed 16 row(s): 16 ok" in run.stdout or stage == "fit"
    evaluation = item("evaluate", *common, cwd=tmp_path)
    assert evaluation.returncode == 0 and "| method | toydiff | toygan | mean |" in evaluation.stdout
    assert "AP (%)" in evaluation.stdout and "ACC (calibrated) (%)" in evaluation.stdout
    status = item("status", *common, cwd=tmp_path)
    lines = {line.split()[0]: line.split() for line in status.stdout.splitlines()[2:] if line.strip()}
    for stage in ("ingest", "caption", "ground", "embed", "distance"):
        assert lines[stage][2:5] == ["16", "0", "0"], status.stdout
    out = tmp_path / "pred.json"
    predicted = item(
        "predict", str(images / "toygan" / "1_fake"), "--out", str(out), "--data-dir", str(data), cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    assert "predict: 4 file(s)" in predicted.stdout and out.exists()
    again = item("caption", *common, cwd=tmp_path)
    assert "nothing to compute" in again.stdout
    vectors = pl.scan_parquet(str(data / "features/distance/**/*.parquet")).collect()
    assert vectors.height == 16 and vectors.schema["d_global"] == pl.Array(pl.Float32, 768)


def test_errors_are_one_clear_line(tmp_path):
    out = item("caption", "--data-dir", str(tmp_path), "--profile", "nope", cwd=tmp_path)
    assert out.returncode != 0 and "unknown profile 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_twice_recomputes_nothing(tmp_path):
    first = item("demo", "--data-dir", str(tmp_path / "d"), "--n-per-class", "3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "row(s) computed" in first.stdout and "| method | toydiff | toygan | mean |" in first.stdout
    assert "predict on 13 unseen file(s)" in first.stdout
    for method in ("item", "unifd", "defake", "cosine", "format"):
        assert f"| {method} |" in first.stdout
    assert "robustness grid:" in first.stdout and (tmp_path / "d" / "reports" / "report.html").exists()
    assert "broken.png" in first.stdout and "ingest: corrupt or truncated image" in first.stdout
    second = item("demo", "--data-dir", str(tmp_path / "d"), "--n-per-class", "3", cwd=tmp_path)
    assert "nothing recomputed: every stage was up to date" in second.stdout


def test_run_from_ingest_takes_the_stage_options(tmp_path):
    from pipeline.app.demo import make_images

    images = make_images(tmp_path / "images", n_per_class=2)
    params = tmp_path / "params.yaml"
    params.write_text(f"profile: tiny\ninputs: [{images}]\n")
    common = ["--data-dir", str(tmp_path / "data"), "--params", str(params)]
    run = item(
        "run", "--from", "ingest", "--to", "distance", *common, "--chunk-size", "3", "--batch-size", "2", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    announced = [line.split()[0] for line in run.stdout.splitlines() if "[" in line]
    assert announced == ["ingest", "caption", "ground", "embed", "distance"]  # each stage once, in order
    assert "computed 8 row(s): 8 ok" in run.stdout
    parts = list((tmp_path / "data" / "features" / "caption").glob("*/part-*.parquet"))
    assert len(parts) == 3  # --chunk-size reached the feature stages: 8 rows in chunks of 3
    again = item("run", "--from", "caption", "--to", "distance", "--retry-errors", *common, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("nothing to compute") == 4


def test_a_user_error_is_one_line_and_its_traceback_shows_with_verbose(tmp_path):
    quiet = item("fit", "--data-dir", str(tmp_path), "--profile", "tiny", "--head", "nosuch", cwd=tmp_path)
    assert quiet.returncode == 2 and "unknown head 'nosuch'" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = item("fit", "--data-dir", str(tmp_path), "--profile", "tiny", "--head", "nosuch", "-v", cwd=tmp_path)
    assert loud.returncode == 2 and "Traceback" in loud.stderr
    order = item("run", "--from", "fit", "--to", "caption", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert order.returncode == 2 and "ingest, caption, ground, embed, distance, fit, evaluate" in order.stderr


def test_the_paper_profile_without_weights_fails_in_one_line_and_leaves_nothing(tmp_path):
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 48), (20, 30, 40)).save(tmp_path / "in" / "a.png")
    data = tmp_path / "data"
    assert item("ingest", str(tmp_path / "in"), "--data-dir", str(data), cwd=tmp_path).returncode == 0
    out = item("caption", "--data-dir", str(data), "--profile", "paper", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'Salesforce/blip2-opt-2.7b'" in errors[0]
    assert "params.yaml" in errors[0] and "--profile tiny" in errors[0]
    assert not (data / "features" / "caption").exists()  # no empty configuration folder for `status`


def test_predict_refuses_a_bad_out_before_any_work(tmp_path):
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "in" / "a.png")
    out = item("predict", str(tmp_path / "in"), "--out", "scores.txt", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert out.returncode == 2 and ".csv, .json, .jsonl, .parquet" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()  # nothing ingested, nothing computed
    missing = item("predict", str(tmp_path / "in"), "--out", "s.csv", "--model", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no fitted head there" in missing.stderr


def test_a_usage_error_is_one_error_line_with_exit_code_2_and_help_has_no_python_types(tmp_path):
    for args in (["fit", "--bogus"], ["predict", str(tmp_path)], ["fit", "--w1", "abc"]):
        out = item(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "╭" not in out.stderr, (args, out.stderr)
    for command in ("predict", "ingest", "evaluate", "fit", "caption", "demo"):
        text = item(command, "--help", cwd=tmp_path).stdout
        assert not re.search(r"<(str|int|float|bool|path|list\[[^]]*\])>", text, re.I), (command, text)
    assert "PATH..." in item("predict", "--help", cwd=tmp_path).stdout
    unknown = item("evaluate", "--heads", "nope", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert unknown.returncode == 2 and "known: item, " in unknown.stderr
