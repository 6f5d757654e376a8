"""CLI options reaching what they steer, in this process (`cli.main` as `item` runs it): perturb's
--generators, reproduce's --deepfakes, params.yaml's runtime.task_timeout, and status's count of
texts cut to CLIP's context."""

from __future__ import annotations

import shutil
import sys
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.app import cli
from pipeline.app.demo import make_images
from pipeline.app.runner import run_stage
from pipeline.engine.executors import InProcessExecutor
from pipeline.engine.store import Store
from tests.conftest import tiny


def item(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `item args` run in this process."""
    monkeypatch.setattr(sys, "argv", ["item", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_perturb_takes_only_the_generators_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[make_images(tmp_path / "images", n_per_class=2)], split="test")
    common = ["--data-dir", str(store.root), "--profile", "tiny"]
    code, out, err = item(monkeypatch, capsys, "perturb", "--kinds", "blur", "--generators", " toygan,", *common)
    assert code == 0, err
    assert "perturb: 12 derived image(s)" in out  # toygan's 2 real + 2 fake, at 3 blur levels
    manifest = store.manifest.read().to_pylist()
    derived = [r for r in manifest if r["perturbation"] is not None]
    assert len(derived) == 12 and {r["generator"] for r in derived} == {"toygan"}
    code, _, err = item(monkeypatch, capsys, "perturb", "--generators", "nosuch", *common)
    assert code == 2 and error_lines(err) == ["error: perturb: no labelled test image of generator(s) nosuch"]
    assert "noise_var" in item(monkeypatch, capsys, "perturb", "--help")[1]


def test_reproduce_passes_deepfakes_to_the_protocol_and_refuses_an_unknown_source(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    seen = []

    def reproduce(roots, config, store, protocol, *rest):
        seen.append(protocol)
        return SimpleNamespace(markdown="tables", computed=0, paths=[])

    monkeypatch.setattr(cli, "reproduce", reproduce)
    common = ["--data-dir", str(tmp_path / "data"), "--profile", "tiny"]
    code, out, err = item(monkeypatch, capsys, "reproduce", "--deepfakes", "whichfaceisreal", *common)
    assert code == 0, err
    assert [p.deepfakes for p in seen] == ["whichfaceisreal"]
    assert item(monkeypatch, capsys, "reproduce", *common)[0] == 0 and seen[-1].deepfakes == "faceforensics"
    code, _, err = item(monkeypatch, capsys, "reproduce", "--deepfakes", "wfir.com", *common)
    assert code == 2 and len(seen) == 2  # refused before any work
    [line] = error_lines(err)
    assert line.startswith("error: --deepfakes must be one of faceforensics, whichfaceisreal")


def test_params_task_timeout_reaches_the_dask_executor(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    made = []

    def make_executor(name, scheduler=None, workers=None, task_timeout=None):
        made.append((name, task_timeout))
        return InProcessExecutor()

    monkeypatch.setattr(cli, "make_executor", make_executor)
    monkeypatch.setattr(cli, "_run", lambda *args, **kwargs: None)  # the executor is what is checked
    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\nruntime: {task_timeout: 600}\n")
    common = ["--data-dir", str(tmp_path / "data"), "--executor", "dask"]
    for command in ("caption", "embed"):
        code, _, err = item(monkeypatch, capsys, command, *common)  # ./params.yaml, read by default
        assert code == 0, err
    assert made == [("dask", 600.0), ("dask", 600.0)]
    params.write_text("profile: tiny\nruntime: {task_timeout: 0}\n")
    code, _, err = item(monkeypatch, capsys, "caption", *common)
    assert code == 2 and error_lines(err)[0].startswith("error: runtime.task_timeout must be a number of seconds > 0")


def test_status_counts_the_texts_embed_cut_to_77_tokens_and_older_rows_as_unknown(
    full_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    common = ["--data-dir", str(store.root), "--profile", "tiny"]
    code, out, _ = item(monkeypatch, capsys, "status", *common)
    assert code == 0 and _embed_note(out) == "0 text(s) cut to 77 tokens"  # tiny captions fit
    [embed] = store.fingerprints("embed")
    first, second, *_ = sorted((store.root / "features" / "embed" / embed).glob("part-*.parquet"))
    counted = pq.read_table(first)
    cuts = pa.array([2] * counted.num_rows, pa.int16())
    counted = counted.set_column(counted.schema.get_field_index("truncated_texts"), "truncated_texts", cuts)
    pq.write_table(counted, first)
    older = pq.read_table(second)
    pq.write_table(older.drop_columns(["truncated_texts"]), second)  # written before the column was
    ok = [sum(s == "ok" for s in t.column("status").to_pylist()) for t in (counted, older)]
    code, out, _ = item(monkeypatch, capsys, "status", *common)
    assert code == 0
    assert _embed_note(out) == f"{2 * ok[0]} text(s) cut to 77 tokens ({ok[1]} older row(s) not counted: unknown)"


def _embed_note(status: str) -> str:
    """The line under embed's row that counts its cut texts."""
    lines = status.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("embed "))
    return next(line.strip() for line in lines[at + 1 :] if "cut to 77 tokens" in line)


def test_predict_refuses_an_out_inside_the_stores_own_folders_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "data")
    images = make_images(tmp_path / "images", n_per_class=1)
    run_stage("ingest", tiny(), store, inputs=[images])
    before = {p.name: p.read_bytes() for p in (store.root / "manifest").iterdir()}
    for out in (str(store.root / "manifest" / "part-x.parquet"), "data/models/../manifest/part-x.parquet"):
        code, stdout, err = item(monkeypatch, capsys, "predict", str(images), "--out", out, "--data-dir", "data")
        assert code == 2 and stdout == ""
        [line] = error_lines(err)
        assert line == f"error: --out {out} is inside the data dir's manifest/ folder: write it elsewhere"
    assert {p.name: p.read_bytes() for p in (store.root / "manifest").iterdir()} == before
    assert not (store.root / "features").exists()  # nothing computed
