"""A hub model's revision is resolved to its commit for the fingerprint and the loading alike, from
the local Hugging Face cache laid out as a download leaves it (no network: where a test needs the
hub, a local server answers for it)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.errors import UsageError
from pipeline.engine.hub import hub_cache_dir, resolve_revision
from pipeline.engine.store import Store
from pipeline.models import loading
from pipeline.models.captioners import Blip2Captioner
from pipeline.models.tiny import tiny_blip2

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


def snapshot(cache, commit: str, seed: int) -> None:
    """The tiny BLIP-2 of `seed`, saved as the snapshot of MODEL at `commit` (what a download leaves)."""
    model, processor = tiny_blip2(seed)
    folder = cache / f"models--{MODEL.replace('/', '--')}" / "snapshots" / commit
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def with_main(cache, commit: str, snapshots=None):
    """`cache` with main at `commit` (and the snapshots of another cache: the same downloads)."""
    repo = cache / f"models--{MODEL.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    if snapshots is not None:
        (repo / "snapshots").symlink_to(snapshots / f"models--{MODEL.replace('/', '--')}" / "snapshots")
    return cache


def captions(store: Store, fingerprint: str) -> dict[str, str]:
    rows = store.features("caption", fingerprint).read(["image_id", "caption"]).to_pylist()
    return {r["image_id"]: r["caption"] for r in rows}


def test_the_recorded_commit_is_the_one_that_loads(tmp_path, monkeypatch, image_root):
    """Two commits of one hub id in the cache (tiny BLIP-2s with other weights): the caption stage
    loads the commit its fingerprint records, whether main names it or params pin it."""
    cache = tmp_path / "hub"
    snapshot(cache, A, seed=0)
    snapshot(cache, B, seed=1)
    store = Store(tmp_path / "data")

    def run(revision: str | None, target: Store = store, model: str = MODEL, seed: int = 0) -> tuple[str, dict]:
        config = resolve("tiny", {"caption": {"model": model, "revision": revision, "seed": seed}}, {"device": "cpu"})
        run_stage("ingest", config, target, inputs=[image_root / "toygan" / "0_real"])
        stats = run_stage("caption", config, target)
        assert stats.error == 0
        return stats.fingerprint, captions(target, stats.fingerprint)

    monkeypatch.setenv("HF_HUB_CACHE", str(with_main(cache, A)))
    at_a, rows_a = run(None)
    assert json.loads((store.features("caption", at_a).path / "config.json").read_text())["config"]["revision"] == A
    assert rows_a == run(None, Store(tmp_path / "tiny-0"), "tiny/blip2", seed=0)[1]  # A's weights were loaded

    # main moved on (in another cache directory: a process resolves a cache's main once)
    monkeypatch.setenv("HF_HUB_CACHE", str(with_main(tmp_path / "hub-later", B, snapshots=cache)))
    at_b, rows_b = run(None)
    assert at_b != at_a and rows_b != rows_a
    assert rows_b == run(None, Store(tmp_path / "tiny-1"), "tiny/blip2", seed=1)[1]  # B's weights

    pinned_at, pinned_rows = run(A, Store(tmp_path / "pinned"))  # main is B, params pin A
    assert (pinned_at, pinned_rows) == (at_a, rows_a)


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The one hub endpoint a revision lookup calls: GET /api/models/<id>[/revision/<rev>] -> its commit."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        if not self.path.startswith(f"/api/models/{MODEL}"):
            self.send_error(404)
            return
        body = json.dumps({"id": MODEL, "sha": A}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    """A local server answering revision lookups, with the hub client online and pointed at it."""
    import huggingface_hub.constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()
    thread.join()


def test_a_commit_resolved_on_the_hub_is_found_again_offline(tmp_path, monkeypatch, fake_hub):
    """Resolved on the hub, main is downloaded by commit, which leaves no `refs/main`: the commit is
    recorded there, so the next run offline resolves the same commit (same fingerprint) and finds it."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_revision(MODEL, None) == A
    assert (cache / f"models--{MODEL.replace('/', '--')}" / "refs" / "main").read_text() == A

    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    later = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from pipeline.engine.hub import resolve_revision; print(resolve_revision({MODEL!r}, None))",
        ],
        env=offline,
        capture_output=True,
        text=True,
        check=True,
    )
    assert later.stdout.strip() == A


def test_a_commit_cached_without_a_ref_loads_without_the_network(tmp_path, monkeypatch):
    """A snapshot downloaded by commit (no `refs/main`) counts as cached at that commit: loading it
    with no hub in reach is not refused; a commit that is not cached is, in one line."""
    cache = tmp_path / "hub"
    (cache / f"models--{MODEL.replace('/', '--')}" / "snapshots" / A).mkdir(parents=True)
    (cache / f"models--{MODEL.replace('/', '--')}" / "snapshots" / A / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is out of reach
    with loading("caption", MODEL, A):
        pass
    with pytest.raises(UsageError, match=f"revision {B}.*not cached"), loading("caption", MODEL, B):
        pass


def test_the_cache_directory_follows_the_hub_clients_rules(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == str(tmp_path / "xdg" / "huggingface" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == str(tmp_path / "home" / "hub")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache_dir() == str(tmp_path / "legacy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == str(tmp_path / "cache")
