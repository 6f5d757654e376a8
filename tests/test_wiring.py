"""Everything that names the stages is checked against the stage registry: the CLI's commands, the
Makefile's targets, dvc.yaml's stages and dependencies, params.yaml's sections and import-linter's
list of stage modules. A stage added in its module and registered, and nowhere else, fails here
with the places it still needs; a stage renamed in one place only, too."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import tomllib
import typer
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport import-linter itself uses
    import tomli as tomllib

import stages  # noqa: F401  (registers the built-in stages)
from pipeline.app.cli import app
from pipeline.engine.stage import STAGES

ROOT = Path(__file__).resolve().parents[1]
STEPS = STAGES.order()  # ingest ... evaluate


def test_the_pipeline_steps_are_the_designs():
    assert STEPS == ["ingest", "caption", "ground", "embed", "distance", "fit", "evaluate"]


def test_every_step_has_a_cli_command():
    commands = set(typer.main.get_command(app).commands)
    assert set(STEPS) <= commands, sorted(set(STEPS) - commands)


def test_every_step_has_a_make_target_running_its_command():
    makefile = (ROOT / "Makefile").read_text()
    for name in STEPS:
        recipe = re.search(rf"^{name}: .*\n\t(.*)$", makefile, re.M)
        assert recipe, f"Makefile has no `{name}` target"
        assert re.search(rf"\$\(ITEM\) {name}\b", recipe.group(1)), recipe.group(1)


def test_dvc_stages_follow_the_registry():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in STEPS:
        stage = STAGES.get(name)
        assert dvc[name]["cmd"] == f"make -s {name}"
        assert f"data/dvc/{name}.json" in str(dvc[name].get("outs", [])) + str(dvc[name].get("metrics", []))
        if stage.inputs:  # it re-runs when what it reads changes
            driver = STAGES.producer(stage.inputs[0])
            assert f"data/dvc/{driver}.json" in dvc[name].get("deps", []), (name, driver)
        has_knobs = stage.config_class is not None and dataclasses.fields(stage.config_class)
        assert (name in dvc[name].get("params", [])) == bool(has_knobs), name


def test_params_yaml_has_a_section_for_every_configurable_stage():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sections = {n for n, cls in STAGES.config_classes().items() if dataclasses.fields(cls)}
    assert sections <= set(params), sorted(sections - set(params))
    assert set(params) - {"profile", "inputs", "runtime"} <= set(STAGES.config_classes())


def test_import_linter_lists_every_stage_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in config if c["type"] == "independence")["modules"]
    modules = {STAGES.get(n).__module__ for n in STAGES.names()}
    assert sorted(independent) == sorted(modules)
