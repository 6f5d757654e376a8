"""Integrity under odd events, each a reproduction of a reported case (F1..F15): the store never serves
a row computed from other bytes, never loses or duplicates rows, and every bad input gets one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import ConfigError, resolve
from pipeline.engine.errors import UsageError
from pipeline.engine.store import Store, StoreError, check_parts
from pipeline.method.rows import all_models
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[2]


def folder(root: Path, n: int = 4, size: int = 48) -> Path:
    """`n` distinct small PNGs under root/0_real."""
    (root / "0_real").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size - 8), (40 * i, 255 - 30 * i, 90)).save(root / "0_real" / f"{i}.png")
    return root


def rows(store: Store, stage: str) -> pl.DataFrame:
    fp = make_stage(stage, tiny(), store).fingerprint
    return pl.read_parquet(store.features(stage, fp).path / "part-*.parquet")  # a plain scan, as users do


def test_f2_a_file_changed_after_ingest_never_gets_the_new_content_s_features(tmp_path):
    store = Store(tmp_path / "data")
    src = folder(tmp_path / "in")
    run_stage("ingest", tiny(), store, inputs=[src])
    old_id = pl.from_arrow(store.manifest.read()).filter(pl.col("path").str.ends_with("/0.png"))["image_id"][0]
    Image.new("RGB", (30, 30), (1, 2, 3)).save(src / "0_real" / "0.png")  # other bytes, same name
    run_stage("caption", tiny(), store)
    row = rows(store, "caption").filter(pl.col("image_id") == old_id).to_dicts()[0]
    assert row["status"] == "error" and row["error"].startswith("file changed since ingest") and row["caption"] is None
    run_stage("ingest", tiny(), store, inputs=[src])  # the new content is a new image
    assert run_stage("caption", tiny(), store).ok == 1


def test_f3_a_moved_dataset_is_computable_after_ingesting_it_from_its_new_place(tmp_path):
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[folder(tmp_path / "src")])
    shutil.move(tmp_path / "src", tmp_path / "dst")
    run_stage("ingest", tiny(), store, inputs=[tmp_path / "dst"])
    manifest = pl.read_parquet(store.manifest.path / "part-*.parquet")
    assert manifest.height == 4 and manifest["path"].str.contains("/dst/").all()  # one row each, live paths
    stats = run_stage("caption", tiny(), store)
    assert (stats.ok, stats.error) == (4, 0)


def test_f5_a_quarantined_manifest_part_is_refilled_by_ingesting_again(tmp_path):
    store = Store(tmp_path / "data")
    src = folder(tmp_path / "in")
    run_stage("ingest", tiny(), store, inputs=[src])
    [part] = store.manifest.parts()
    part.write_bytes(part.read_bytes()[:40])  # truncated
    assert [p.name for p, _ in check_parts(store.root, quarantine=True)] == [part.name]
    stats = run_stage("ingest", tiny(), store, inputs=[src])
    assert stats.ok == 4 and store.manifest.read().num_rows == 4


def test_f9_a_part_of_another_stage_is_refused_and_listed_by_check(full_run, tmp_path):
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    caption = make_stage("caption", tiny(), store).output.path
    ground_part = make_stage("ground", tiny(), store).output.parts()[0]
    shutil.copy(ground_part, caption / "part-0000000000000000-copied.parquet")
    with pytest.raises(StoreError, match="belongs to another stage"):
        run_stage("caption", tiny(), store)
    [(path, reason)] = check_parts(store.root)
    assert path.name == "part-0000000000000000-copied.parquet" and "written by stage 'ground'" in reason


def test_f15_after_a_retry_a_plain_scan_holds_one_row_per_image(tmp_path):
    store = Store(tmp_path / "data")
    src = folder(tmp_path / "in", n=6)
    run_stage("ingest", tiny(chunk_size=4), store, inputs=[src])
    (src / "0_real" / "3.png").rename(tmp_path / "away.png")
    assert run_stage("caption", tiny(chunk_size=4), store).error == 1
    (tmp_path / "away.png").rename(src / "0_real" / "3.png")
    assert run_stage("caption", tiny(chunk_size=4), store, retry_errors=True).ok == 1
    scanned = rows(store, "caption")
    assert scanned.height == scanned["image_id"].n_unique() == 6 and (scanned["status"] == "ok").all()


def test_f1_a_file_name_that_is_not_utf8_gets_an_error_row_and_the_rest_are_ingested(tmp_path):
    src = folder(tmp_path / "in", n=2)
    bad = os.fsencode(src / "0_real") + b"/caf\xe9.png"
    shutil.copy(src / "0_real" / "0.png", bad)
    store = Store(tmp_path / "data")
    stats = run_stage("ingest", tiny(), store, inputs=[src])
    manifest = pl.from_arrow(store.manifest.read())
    errors = manifest.filter(pl.col("status") == "error")
    assert (stats.ok, stats.error) == (2, 1) and errors["path"][0].endswith("caf\\xe9.png")
    assert "not valid UTF-8" in errors["error"][0]


def test_f6_f7_a_broken_head_folder_and_an_empty_metrics_file_are_rebuilt(full_run, tmp_path):
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    head = make_stage("fit", tiny(), store).model_dir
    (head / "config.json").unlink()
    run_stage("fit", tiny(), store)
    assert json.loads((head / "config.json").read_text())["head"] == "mlp"
    run_stage("evaluate", tiny(), store)
    (head / "metrics.json").write_text("")  # what an in-place write on a full disk leaves
    evaluate = make_stage("evaluate", tiny(), store)
    assert evaluate.run().ok > 0 and json.loads((head / "metrics.json").read_text())["split"]


def test_f8_evaluate_all_takes_item_heads_only(full_run, tmp_path):
    from pipeline.app.runner import compare

    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    compare(["unifd"], tiny(), store)
    (store.models / ".mlp-0123.tmp").mkdir()
    shutil.copy(make_stage("fit", tiny(), store).model_dir / "config.json", store.models / ".mlp-0123.tmp")
    heads = all_models(store)
    assert [h.name for h in heads] == [make_stage("fit", tiny(), store).model_dir.name]
    assert run_stage("evaluate", tiny(), store, models=heads).ok >= 0
    (store.models / "LATEST").write_text("../../etc\n")
    with pytest.raises(UsageError, match="not a fitted head"):
        run_stage("evaluate", tiny(), store)


def test_f10_a_temporary_part_left_by_a_kill_is_listed_and_cleaned(tmp_path):
    store = Store(tmp_path / "data")
    src = folder(tmp_path / "in")
    run_stage("ingest", tiny(), store, inputs=[src])
    leftover = store.sources.path / ".part-0000-abc.parquet.123456.tmp"
    leftover.write_bytes(b"half")
    assert [p.name for p, _ in check_parts(store.root)] == [leftover.name]
    run_stage("ingest", tiny(), store, inputs=[src])
    assert not leftover.exists()


def test_f13_a_fixed_file_replaces_its_error_row(tmp_path):
    store = Store(tmp_path / "data")
    src = folder(tmp_path / "in", n=3)
    good = (src / "0_real" / "2.png").read_bytes()
    (src / "0_real" / "2.png").write_bytes(good[:60])  # truncated
    run_stage("ingest", tiny(), store, inputs=[src])
    run_stage("caption", tiny(), store)
    (src / "0_real" / "2.png").write_bytes(good)  # fixed
    stats = run_stage("ingest", tiny(), store, inputs=[src])
    assert stats.ok == 1
    manifest = pl.read_parquet(store.manifest.path / "part-*.parquet")
    assert manifest.height == 3 and (manifest["status"] == "ok").all()
    run_stage("caption", tiny(), store)
    captions = rows(store, "caption")
    assert sorted(captions["image_id"].to_list()) == sorted(manifest["image_id"].to_list())
    assert (captions["status"] == "ok").all()


def test_f14_a_killed_ingest_leaves_no_decoding_worker_behind(tmp_path):
    src = folder(tmp_path / "in", n=2)
    for i in range(400):
        shutil.copy(src / "0_real" / "0.png", src / "0_real" / f"copy-{i}.png")
        with open(src / "0_real" / f"copy-{i}.png", "ab") as f:
            f.write(str(i).encode())  # distinct bytes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ITEM_FAULT_WRITE_DELAY": "30"}
    cmd = [sys.executable, "-m", "pipeline", "ingest", str(src), "--data-dir", str(tmp_path / "d"), "--profile", "tiny"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and not workers:
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        workers = [int(p) for p in out.split()]
    assert workers, "ingest started no decoding workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)
    alive = [p for p in workers if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
    assert alive == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"caption": [1, 2]}, "caption must be a mapping"),
        ({"runtime": {"batch_size": 2.5}}, "runtime.batch_size must be an integer"),
        ({"fit": {"epochs": 1.5}}, "fit.epochs must be an integer"),
        ({"fit": {"w1": "1"}}, "fit.w1 must be a number"),
        ({"fit": {"hidden_dim": "1e9"}}, "fit.hidden_dim must be an integer"),
        ({"fit": {"w1": 0, "w2": 0}}, "D would be all zeros"),
        ({"ingest": {"split_fractions": [1.2, -0.1, -0.1]}}, "three fractions in \\[0, 1\\]"),
        ({"runtime": {"device": "gpu"}}, "runtime.device must be"),
    ],
)
def test_f11_f12_bad_configuration_names_its_field(params, message):
    with pytest.raises(ConfigError, match=message):
        resolve("tiny", params)


def test_f11_f12_bad_lists_and_options_are_one_clear_error(tmp_path):
    store = Store(tmp_path / "data")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "latin1.csv").write_bytes("path,generator\nx.png,caf\xe9\n".encode("latin-1"))
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    for name, message in (("empty.csv", "the list is empty"), ("latin1.csv", "UTF-8"), ("garbage.parquet", "Parquet")):
        with pytest.raises(UsageError, match=message) as e:
            run_stage("ingest", tiny(), store, inputs=[tmp_path / name])
        assert name in str(e.value)
    with pytest.raises(UsageError, match="--split 'foo'"):
        run_stage("ingest", tiny(), store, inputs=[folder(tmp_path / "in")], split="foo")
    (tmp_path / "holes.csv").write_text(f"path,label\n{tmp_path / 'in/0_real/0.png'},0\n,1\n")
    stats = run_stage("ingest", tiny(), store, inputs=[tmp_path / "holes.csv"])
    assert stats.todo == 1  # the empty path cell is skipped with a warning, not read as '<dir>/None'


def test_f12_conflicting_labels_for_one_image_say_which_wins(tmp_path, caplog):
    src = folder(tmp_path / "in", n=1)
    shutil.copy(src / "0_real" / "0.png", tmp_path / "same.png")
    (tmp_path / "l.csv").write_text(f"path,label\n{tmp_path / 'same.png'},fake\n")
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[src])
    run_stage("ingest", tiny(), store, inputs=[tmp_path / "l.csv"])
    assert any("the manifest keeps 0" in m for m in caplog.messages)
    assert pl.from_arrow(store.manifest.read())["label"].to_list() == [0]


def test_a_data_directory_that_cannot_be_written_is_one_clear_error(tmp_path):
    store = Store("/sys/item-data")  # sysfs refuses new folders even to root, like a read-only mount
    with pytest.raises(StoreError, match="cannot write /sys/item-data.*permission denied"):
        run_stage("ingest", tiny(), store, inputs=[folder(tmp_path / "in")])


def test_f11_a_garbage_head_file_is_one_clear_error(full_run, tmp_path):
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    head = make_stage("fit", tiny(), store).model_dir
    (head / "model.safetensors").write_bytes(b"\x00garbage, not safetensors")
    (head / "metrics.json").unlink(missing_ok=True)
    with pytest.raises(UsageError, match=f"cannot load the head in {head}"):
        run_stage("evaluate", tiny(), store)


def test_f11_a_cuda_device_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    src = folder(tmp_path / "in", n=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    data = ["--data-dir", str(tmp_path / "d"), "--profile", "tiny"]
    subprocess.run(
        [sys.executable, "-m", "pipeline", "ingest", str(src), *data], env=env, check=True, capture_output=True
    )
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "caption", *data, "--device", "cuda"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--device cuda: torch sees no CUDA device" in out.stderr
