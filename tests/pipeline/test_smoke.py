"""`make smoke-paper`'s path at small size: the three models built into local directories (weights,
configs, processors, tokenizers made offline) load through the pipeline's own loaders as a user's
downloaded copies would, and the paper profile runs every stage on them."""

from __future__ import annotations

import json

from pipeline.app.smoke import STAMP, build_models, run_smoke
from pipeline.engine.store import Store


def test_local_directory_models_run_the_paper_profile(tmp_path):
    figures = run_smoke(tmp_path / "run", tmp_path / "models", n_images=2, device="cpu", size="small")
    stages = [f["figure"].split()[1] for f in figures[:-1]]
    assert stages == ["caption", "ground", "embed", "distance"]
    assert all(f["value"] > 0 and f["peak_mib"] > 0 for f in figures[:-1])
    store = Store(tmp_path / "run")
    (caption_fp,) = store.fingerprints("caption")
    written = json.loads((store.root / "features" / "caption" / caption_fp / "config.json").read_text())
    assert written["config"]["model"] == str(tmp_path / "models" / "blip2")  # the local copy, not a tiny build
    assert (tmp_path / "models" / "blip2" / "model.safetensors").exists()
    built = json.loads((tmp_path / "models" / STAMP).read_text())
    assert build_models(tmp_path / "models", "small") == built  # a second run builds nothing
