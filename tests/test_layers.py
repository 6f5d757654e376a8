"""The layer contract (pyproject.toml [tool.importlinter]) holds, and import-linter really fails when
an arrow points the wrong way: an engine module importing a stage (even inside a function), or one
stage module importing another."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_layer_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("pipeline/engine/keys.py", "    import stages.caption  # noqa\n", "never upwards BROKEN"),
        ("stages/fit.py", "    from stages.distance import DistanceStage  # noqa\n", "never import each other BROKEN"),
    ],
)
def test_a_wrong_way_import_inside_a_function_breaks_the_contract(tmp_path, module, line, broken):
    root = copy_tree(tmp_path)
    target = root / module
    target.write_text(target.read_text() + "\n\ndef _wrong_way():\n" + line)
    result = lint_imports(root)
    assert result.returncode != 0
    assert broken in result.stdout
