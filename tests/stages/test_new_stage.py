"""A new stage is one file and its registration: its config section, its CLI command, `item run` and
`item status` follow from the registry, with no edit to the engine, the CLI or any list."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import make_images

ROOT = Path(__file__).resolve().parents[2]

TOY = '''
"""toy: a score per image from the manifest's size columns (a whole stage in one file)."""

from dataclasses import dataclass

import pyarrow as pa

from pipeline.engine import schemas
from pipeline.engine.feature import FeatureStage
from pipeline.engine.stage import STAGES


@dataclass(frozen=True)
class ToyConfig:
    factor: int = 2


@STAGES.register
class ToyStage(FeatureStage):
    """Bytes per pixel, times a factor."""

    name = "toy"
    inputs = ("manifest",)
    driver_columns = ("n_bytes", "width", "height")
    config_class = ToyConfig
    schema = schemas.rows_schema(pa.field("score", pa.float64()))

    def process(self, batch):
        return [
            {"image_id": r["image_id"], "score": self.cfg.factor * r["n_bytes"] / (r["width"] * r["height"])}
            for r in batch.to_pylist()
        ]
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "toy_stage_plugin.py").write_text(textwrap.dedent(TOY))
    return folder


def item(plugin: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{plugin}", "ITEM_PLUGINS": "toy_stage_plugin"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_stage_in_its_own_file_runs_through_its_command_run_and_status(plugin, tmp_path):
    images = make_images(tmp_path / "images", n_per_class=2)  # 8 PNGs
    data = tmp_path / "data"
    common = ["-d", str(data), "-p", "tiny"]
    assert item(plugin, tmp_path, "ingest", str(images), *common).returncode == 0
    assert "toy" in item(plugin, tmp_path, "--help").stdout

    first = item(plugin, tmp_path, "toy", *common)
    assert first.returncode == 0, first.stderr
    assert "computed 8 row(s): 8 ok" in first.stdout
    again = item(plugin, tmp_path, "run", "--from", "toy", "--to", "toy", *common)
    assert again.returncode == 0 and "toy" in again.stdout and "up to date" in again.stdout, again.stdout + again.stderr

    status = item(plugin, tmp_path, "status", *common)
    line = next(x for x in status.stdout.splitlines() if x.startswith("toy "))
    assert line.split()[2:] == ["8", "0", "0"], status.stdout

    # Its config is a params.yaml section like any stage's: another factor, another fingerprint.
    (tmp_path / "params.yaml").write_text("toy: {factor: 3}\n")
    third = item(plugin, tmp_path, "run", "--from", "toy", "--to", "toy", *common)
    assert "computed 8 row(s)" in third.stdout, third.stdout + third.stderr
    folders = sorted((data / "features" / "toy").iterdir())
    assert len(folders) == 2
    a, b = (pl.read_parquet(f / "*.parquet").sort("image_id")["score"].to_numpy() for f in folders)
    ratio = a / b
    assert ratio.min() == pytest.approx(ratio.max()) and ratio[0] == pytest.approx(2 / 3 if a[0] < b[0] else 1.5)

    (tmp_path / "params.yaml").write_text("toy: {factr: 3}\n")
    typo = item(plugin, tmp_path, "toy", *common)
    assert typo.returncode == 2 and "factr" in typo.stderr and "factor" in typo.stderr


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ITEM_PLUGINS": "no_such_plugin_module"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "-d", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no_such_plugin_module" in result.stderr
