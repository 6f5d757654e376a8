"""A hub model's revision is resolved to its commit for the fingerprint and the loading alike, from
the local Hugging Face cache laid out as a download leaves it (no network here)."""

from __future__ import annotations

import pytest

from pipeline.app.runner import make_stage
from pipeline.engine.config import resolve
from pipeline.engine.hub import resolve_revision
from pipeline.engine.store import Store
from pipeline.models.captioners import Blip2Captioner

A, B = "a" * 40, "b" * 40
MODEL = "Salesforce/blip2-opt-2.7b"


def cache_with(tmp_path, name: str, refs: dict[str, str]):
    """An HF cache dir holding `refs` (revision -> commit) for MODEL."""
    root = tmp_path / name
    for revision, commit in refs.items():
        ref = root / f"models--{MODEL.replace('/', '--')}" / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
        (ref.parents[1] / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    return root


def fingerprints(tmp_path, revision=None) -> dict[str, str]:
    config = resolve("paper", {"caption": {"revision": revision}}, {"device": "cpu"})
    return {s: make_stage(s, config, Store(tmp_path / "data")).fingerprint for s in ("caption", "ground", "embed")}


def test_main_is_resolved_to_the_cached_commit_and_a_new_commit_is_a_new_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_with(tmp_path, "cache-a", {"main": A})))
    assert resolve_revision(MODEL, None) == A
    at_a = fingerprints(tmp_path)
    stage = make_stage("caption", resolve("paper", {}, {"device": "cpu"}), Store(tmp_path / "data"))
    assert stage.identity()["config"]["revision"] == A  # what config.json and the part metadata record
    assert Blip2Captioner(stage.cfg, "cpu").revision == A  # and what is loaded
    assert fingerprints(tmp_path, revision=A) == at_a  # pinning the same commit is the same features

    monkeypatch.setenv("HF_HUB_CACHE", str(cache_with(tmp_path, "cache-b", {"main": B})))  # main moved on
    at_b = fingerprints(tmp_path)
    assert at_b["caption"] != at_a["caption"] and at_b["embed"] != at_a["embed"]  # downstream follows


def test_a_branch_or_tag_is_resolved_too_and_a_commit_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_with(tmp_path, "cache", {"main": A, "v2": B})))
    assert resolve_revision(MODEL, "v2") == B
    assert resolve_revision(MODEL, "c" * 40) == "c" * 40


@pytest.mark.parametrize("model", ["tiny/blip2", "local-dir"])
def test_local_and_tiny_models_have_no_revision(tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-dir").mkdir()
    assert resolve_revision(model, None) is None


def test_offline_and_not_cached_stays_as_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_revision(MODEL, None) is None
    assert resolve_revision(MODEL, "v2") == "v2"
