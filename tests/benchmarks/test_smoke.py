"""`make smoke-paper`'s path at small size: the three models built into local directories (weights,
configs, processors, tokenizers made offline) load through the pipeline's own loaders as a user's
downloaded copies would, and the paper profile runs every stage on them."""

from __future__ import annotations

import json

import pytest

from benchmarks.smoke import MARKER, STAMP, bert_vocab, build_models, opt_tokenizer, run_smoke
from pipeline.engine.errors import UsageError
from pipeline.engine.store import Store
from pipeline.models.tiny import BERT_FIXED_IDS


def test_local_directory_models_run_the_paper_profile(tmp_path):
    models = tmp_path / "models"
    figures = run_smoke(tmp_path / "run", models, n_images=2, device="cpu", size="small")
    by_stage = {f["figure"].split()[1]: f for f in figures}
    assert list(by_stage) == ["ingest", "caption", "ground", "embed", "distance", "all", "model"]
    for stage in ("ingest", "caption", "ground", "embed", "distance"):
        assert by_stage[stage]["value"] > 0 and by_stage[stage]["peak_mib"] > 0
    # The random OPT writes words the grounder's tokenizer knows, so objects carry real phrases.
    assert by_stage["caption"]["words_per_caption"] >= 5
    store = Store(tmp_path / "run")
    (ground_fp,) = store.fingerprints("ground")
    objects = store.features("ground", ground_fp).read().column("objects").to_pylist()
    words = " ".join(o["phrase"] for objs in objects for o in objs).split()
    assert words and sum(w != "[UNK]" for w in words) >= 0.8 * len(words)
    # The stages loaded the local copies, not tiny builds: the recorded configuration names them.
    (caption_fp,) = store.fingerprints("caption")
    written = json.loads((store.root / "features" / "caption" / caption_fp / "config.json").read_text())
    assert written["config"]["model"] == str(models / "blip2")
    assert (models / "blip2" / "model.safetensors").exists()
    assert (models / "grounding-dino" / "model.safetensors").exists()
    built = json.loads((models / STAMP).read_text())
    assert by_stage["model"]["target"] == "measured" and built["peak_mib"] > 0
    assert build_models(models, "small") == built  # a second run builds nothing


def test_refuses_to_wipe_a_directory_it_did_not_make(tmp_path):
    precious = tmp_path / "data"
    (precious / "manifest").mkdir(parents=True)
    with pytest.raises(UsageError, match="refusing"):
        run_smoke(precious, tmp_path / "models", n_images=1, size="small")
    assert (precious / "manifest").exists() and not (tmp_path / "models").exists()
    with pytest.raises(UsageError, match="refusing"):
        run_smoke(tmp_path / "run", precious, n_images=1, size="small")
    assert not (precious / MARKER).exists()


def test_vocabularies_fit_the_models_and_decode_every_id():
    tokenizer = opt_tokenizer(1000)
    assert len(tokenizer) == 1000
    assert tokenizer.decode([999]).startswith(" ") and tokenizer.decode([999]).strip().isalpha()
    vocab = bert_vocab(2000)
    assert len(vocab) == 2000 and sorted(vocab.values()) == list(range(2000))
    assert all(vocab[t] == i for t, i in BERT_FIXED_IDS.items())  # Grounding DINO hard-codes them
