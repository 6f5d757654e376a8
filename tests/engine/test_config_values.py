"""Property: every invalid configuration value, in params.yaml or on the command line, is refused by
the `item` CLI with exactly one `error:` line naming the setting, exit code 2, before any work, and
nothing written. Values are drawn per field type from every registered stage's config class.

`make test` tries a few examples; `make soak` (ITEM_SOAK_CONFIGS) many more."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stages  # noqa: F401  (registers the built-in stages)
from pipeline.engine.stage import STAGES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("ITEM_SOAK_CONFIGS", "20"))

# What no field of a type may hold (YAML can say each of these).
INVALID = {
    float: st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, "0.5x", [0.5], True]),
    int: st.sampled_from([1.5, 99999999999999999999, "3", [3], True, float("nan")]),
    bool: st.sampled_from(["yes", 2, [True], 0.5]),
    str: st.sampled_from([5, 0.5, [1, 2], {"a": 1}]),
}


def fields() -> list[tuple[str, str, type]]:
    out = []
    for stage, cls in STAGES.config_classes().items():
        for name, hint in typing.get_type_hints(cls).items():
            if hint in INVALID:
                out.append((stage, name, hint))
    return out


FIELDS = fields()


def item(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def refused_in_one_line(out: subprocess.CompletedProcess, setting: str, data: Path) -> None:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, (setting, out.returncode, out.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error:") and setting in lines[0], (setting, out.stderr[-2000:])
    assert len(lines[0]) < 400
    assert not data.exists(), f"{setting}: {sorted(p.name for p in data.rglob('*'))}"  # no work began


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_invalid_params_value_is_one_error_line_exit_2_and_writes_nothing(tmp_path_factory, data):
    stage, name, hint = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(INVALID[hint], label="value")
    where = tmp_path_factory.mktemp("cfg")
    (where / "params.yaml").write_text(yaml.safe_dump({"profile": "tiny", stage: {name: value}}))
    out = item("caption", "--params", "params.yaml", "--data-dir", "data", cwd=where)
    refused_in_one_line(out, f"{stage}.{name}", where / "data")


def test_invalid_numbers_on_the_command_line_are_one_error_line_each(tmp_path):
    for args, setting in (
        (("fit", "--w1", "nan"), "fit.w1"),
        (("fit", "--w2", "inf"), "fit.w2"),
        (("caption", "--batch-size", "99999999999999999999"), "batch_size"),
    ):
        out = item(*args, "--profile", "tiny", "--data-dir", "data", cwd=tmp_path)
        refused_in_one_line(out, setting, tmp_path / "data")
