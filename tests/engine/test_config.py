"""Typed configuration, profiles, params overrides and fingerprints."""

from __future__ import annotations

import time

import pytest

from pipeline.app.runner import make_stage
from pipeline.engine.config import PROFILES, ConfigError, from_dict, load_params, resolve
from pipeline.engine.store import Store
from stages.caption import CaptionConfig


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="max_tokens"):
        from_dict(CaptionConfig, {"max_tokens": 3}, "caption")


def test_none_means_default():
    assert from_dict(CaptionConfig, {"model": None}, "caption").model == CaptionConfig().model


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="dtype"):
        resolve("paper", {"caption": {"dtype": "int8"}})
    with pytest.raises(ConfigError, match="box_threshold"):
        resolve("paper", {"ground": {"box_threshold": 2}})
    with pytest.raises(KeyError, match="unknown profile 'huge'"):
        resolve("huge")
    with pytest.raises(ConfigError, match="unknown section"):
        resolve("paper", {"captions": {}})


def test_paper_profile_is_the_papers_setup():
    config = resolve("paper")
    assert config.stage("caption").model == "Salesforce/blip2-opt-2.7b"
    assert config.stage("embed").model == "ViT-L-14-quickgelu" and config.stage("embed").pretrained == "openai"
    assert config.stage("embed").image_crop == "center"
    fit = config.stage("fit")
    assert (fit.epochs, fit.lr, fit.weight_decay, fit.w1, fit.w2) == (50, 1e-3, 1e-3, 1.0, 1.0)
    assert PROFILES.names() == ["blip", "clip-b16", "clip-rn50", "llava", "paper", "tiny", "tiny-paper"]


def test_params_override_the_profile_and_cli_overrides_runtime(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\nground:\n  box_threshold: 0.5\nruntime:\n  batch_size: 3\n")
    config = resolve(None, load_params(params), {"batch_size": 7, "device": None})
    assert config.profile == "tiny"
    assert config.stage("ground").box_threshold == 0.5
    assert config.stage("ground").model == "tiny/grounding-dino"
    assert config.runtime.batch_size == 7
    assert load_params(tmp_path / "absent.yaml") == {}


def test_fingerprint_follows_config_and_inputs_not_runtime(tmp_path):
    store = Store(tmp_path)
    base = resolve("tiny")

    def fp(config, stage):
        return make_stage(stage, config, store).fingerprint

    assert fp(base, "embed") == fp(resolve("tiny", {}, {"batch_size": 99, "chunk_size": 3}), "embed")
    changed_caption = resolve("tiny", {"caption": {"max_new_tokens": 9}})
    assert fp(changed_caption, "caption") != fp(base, "caption")
    # every stage downstream of the change moves too; nothing upstream does
    assert fp(changed_caption, "ground") != fp(base, "ground")
    assert fp(changed_caption, "distance") != fp(base, "distance")
    changed_embed = resolve("tiny", {"embed": {"image_crop": "resize_center"}})
    assert fp(changed_embed, "ground") == fp(base, "ground")
    assert fp(changed_embed, "embed") != fp(base, "embed")
    assert len(fp(base, "caption")) == 12


def _fields_of_type(kind):
    import typing

    import stages  # noqa: F401  (registers the built-in stages)
    from pipeline.engine.stage import STAGES

    for stage, cls in STAGES.config_classes().items():
        for name, hint in typing.get_type_hints(cls).items():
            if hint is kind:
                yield stage, name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 1e300])
def test_no_float_setting_of_any_stage_takes_nan_infinity_or_an_absurd_size(bad):
    fields = list(_fields_of_type(float))
    assert len(fields) >= 10  # the thresholds, weights, rates, noise levels and timeouts of every stage
    for stage, name in fields:
        with pytest.raises(ConfigError, match=rf"^{stage}\.{name} must be a finite number") as e:
            resolve("tiny", {stage: {name: bad}})
        assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_no_integer_setting_takes_a_size_that_overflows():
    for stage, name in _fields_of_type(int):
        with pytest.raises(ConfigError, match=rf"^{stage}\.{name} must be an integer of at most"):
            resolve("tiny", {stage: {name: 99999999999999999999}})
    with pytest.raises(ConfigError, match="batch_size"):
        resolve("tiny", runtime={"batch_size": 99999999999999999999})
    with pytest.raises(ConfigError, match=r"runtime.batch_size must be at most 1048576"):
        resolve("tiny", runtime={"batch_size": 1 << 30})


def test_a_params_file_with_nested_aliases_is_refused_in_one_short_line_at_once(tmp_path):
    """A "billion laughs": 9 levels of 9 aliases each, 400 bytes that expand to 387 million strings."""
    lines = ['a0: &a0 "lol"']
    for k in range(1, 10):
        lines.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]")
    lines.append("caption: {prompt: *a9}")
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"aliases \(\*a0\) are not allowed") as e:
        load_params(path)
    assert time.monotonic() - start < 5 and len(str(e.value)) < 500 and "\n" not in str(e.value)


def test_a_saved_configuration_never_supplies_files_to_read_or_code_to_run():
    from pipeline.engine.config import resolve_saved

    saved = {
        "profile": "tiny",
        "stages": {
            "ground": {"backend": "groundingdino-py", "config_file": "/tmp/evil.py", "text_encoder": "/etc",
                       "box_threshold": 0.5},
            "caption": {"model": "/home/someone/blip2", "max_new_tokens": 7},
        },
    }
    config, differs = resolve_saved(saved)
    ground, caption = config.stage("ground"), config.stage("caption")
    assert (ground.backend, ground.box_threshold, caption.max_new_tokens) == ("groundingdino-py", 0.5, 7)  # data
    assert ground.config_file is None and ground.text_encoder is None  # the built-in defaults
    assert caption.model == "tiny/blip2"  # the tiny profile's own model, not the saved path
    assert sorted(differs) == ["caption.model = '/home/someone/blip2'", "ground.config_file = '/tmp/evil.py'",
                               "ground.text_encoder = '/etc'"]
    mine, differs = resolve_saved(saved, {"ground": {"config_file": "/tmp/evil.py"}})  # the user's own choice
    assert mine.stage("ground").config_file == "/tmp/evil.py" and "ground.config_file = '/tmp/evil.py'" not in differs
    with pytest.raises(ConfigError, match=r"^ground\.box_threshold must be a finite number"):
        resolve_saved({"profile": "tiny", "stages": {"ground": {"box_threshold": float("nan")}}})
    with pytest.raises(ConfigError, match="profile"):
        resolve_saved({"profile": ["tiny"], "stages": {}})


def test_the_tiny_builds_version_is_in_tiny_fingerprints_only(tmp_path, monkeypatch):
    from pipeline.engine import config as config_module

    store = Store(tmp_path)
    before = {s: make_stage(s, resolve("tiny"), store).fingerprint for s in ("caption", "ground", "embed")}
    paper = {s: make_stage(s, resolve("paper"), store).fingerprint for s in ("caption", "ground", "embed")}
    monkeypatch.setattr(config_module, "TINY_BUILD", config_module.TINY_BUILD + 1)
    after = {s: make_stage(s, resolve("tiny"), store).fingerprint for s in ("caption", "ground", "embed")}
    assert all(before[s] != after[s] for s in before)  # a new tiny build: no stale tiny rows reused
    assert paper == {s: make_stage(s, resolve("paper"), store).fingerprint for s in ("caption", "ground", "embed")}


@pytest.mark.parametrize(
    "section, values, says",
    [
        ("fit", {"logreg_c": -1}, "fit.logreg_c must be > 0"),
        ("fit", {"lgbm_num_leaves": 0}, "fit.lgbm_num_leaves must be >= 2"),
        ("fit", {"lr": 0}, "fit.lr must be > 0"),
        ("ground", {"shortest_edge": 0}, "ground.shortest_edge must be >= 1"),
        ("caption", {"num_beams": 0}, "caption.num_beams must be 1 to 64"),
        ("ingest", {"decode_timeout": float("inf")}, "ingest.decode_timeout must be a finite number"),
    ],
)
def test_the_friction_values_are_one_line_each_when_the_config_is_read(section, values, says):
    with pytest.raises(ConfigError, match=says) as e:
        resolve("tiny", {section: values})
    assert "\n" not in str(e.value)
