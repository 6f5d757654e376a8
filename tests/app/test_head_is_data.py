"""A head folder is data, whoever made it: loading or using it never runs code, never reads files
outside it, never takes a file to read or code to run from its configuration, and evaluating it from
outside the data dir writes nothing into it. Bad values in it are one line (issue 21, class 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.app.api import check_output, predict
from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.errors import UsageError
from pipeline.engine.store import Store
from pipeline.method.heads import FittedHead
from pipeline.method.rows import latest_model
from tests.conftest import tiny

EVIL = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("code from a head folder ran")
"""


@pytest.fixture
def shared_head(full_run, tmp_path) -> tuple[Store, Path]:
    """A copy of the session's fitted store, and a copy of its head somewhere else (a shared folder)."""
    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    head = tmp_path / "downloads" / "head"
    shutil.copytree(latest_model(store), head)
    return store, head


def edit(head: Path, change) -> None:
    config = json.loads((head / "config.json").read_text())
    change(config)
    (head / "config.json").write_text(json.dumps(config))


def test_a_head_naming_groundingdino_py_with_a_python_config_file_never_runs_it(shared_head, tmp_path, image_root):
    store, head = shared_head
    evil = tmp_path / "downloads" / "evil.py"
    evil.write_text(EVIL)

    def hostile(config):
        config["pipeline"]["stages"]["ground"].update(backend="groundingdino-py", config_file=str(evil))
    edit(head, hostile)
    with pytest.raises(UsageError, match=r"ground.config_file = .*evil.py.*never supplies") as e:
        predict([image_root / "toygan" / "1_fake"], model=head, data_dir=store.root, params={})
    assert "\n" not in str(e.value)
    assert not (tmp_path / "downloads" / "RAN").exists()  # before and after: nothing ran


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: c["calibration"].update(threshold="0.5"), "calibration.threshold must be a finite number"),
        (lambda c: c["calibration"].update(threshold=float("nan")), "calibration.threshold"),
        (lambda c: c["calibration"].update(temperature=0), "calibration.temperature must be a finite number > 0"),
        (lambda c: c["fit"].update(lr=float("nan")), "fit.lr must be a finite number"),
        (lambda c: c.update(head="os.system"), "unknown"),
    ],
)
def test_bad_values_in_a_head_are_one_line_when_it_is_loaded(shared_head, change, says):
    _, head = shared_head
    edit(head, change)
    with pytest.raises(UsageError, match=says) as e:
        FittedHead(head)
    assert "\n" not in str(e.value) and str(head) in str(e.value)


def test_weights_of_another_input_width_are_one_line_when_the_head_is_loaded(shared_head):
    from safetensors.numpy import load_file, save_file

    _, head = shared_head
    weights = load_file(str(head / "model.safetensors"))
    width = json.loads((head / "config.json").read_text())["in_dim"]
    cut = {k: (v[:, :10] if v.ndim == 2 and v.shape[1] == width else v) for k, v in weights.items()}
    assert any(cut[k].shape != weights[k].shape for k in weights)  # the test changes something
    save_file(cut, str(head / "model.safetensors"))
    with pytest.raises(UsageError, match=f"cannot load the head in {head}") as e:
        FittedHead(head)
    assert "\n" not in str(e.value)


def test_a_head_folder_with_a_symbolic_link_is_refused(shared_head, tmp_path):
    _, head = shared_head
    outside = tmp_path / "secret.safetensors"
    shutil.move(head / "model.safetensors", outside)
    (head / "model.safetensors").symlink_to(outside)
    with pytest.raises(UsageError, match="symbolic link"):
        FittedHead(head)


def test_evaluating_a_head_from_outside_the_data_dir_writes_nothing_into_it(shared_head):
    store, head = shared_head
    before = sorted(p.name for p in head.iterdir())
    stage = make_stage("evaluate", tiny(), store)
    result, computed = stage._evaluate(head)
    assert computed and result["split"]
    assert sorted(p.name for p in head.iterdir()) == before
    assert len(list((store.reports / "heads").glob(f"{head.name}-*/metrics.json"))) == 1
    assert run_stage("evaluate", tiny(), store).ok >= 0  # the store's own heads still evaluate in place


def test_out_inside_the_store_s_own_folders_or_where_no_file_can_be_made_is_refused_before_any_work(tmp_path):
    data = tmp_path / "data"
    for folder in ("manifest", "features/caption/abc", "models", "reports"):
        with pytest.raises(UsageError, match="inside the data dir"):
            check_output(data / folder / "part-x.parquet", data)
    check_output(tmp_path / "out" / "scores.csv", data)  # beside the data dir: fine
    for where in ("/proc/x.csv", "/sys/x.parquet"):
        with pytest.raises(UsageError, match="cannot write under"):
            check_output(where, data)
