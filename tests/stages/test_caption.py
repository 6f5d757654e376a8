"""caption rows with the tiny BLIP-2, the caption-column backend, and resume by keys."""

from __future__ import annotations

import polars as pl
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.store import Store
from tests.conftest import tiny


def rows(store, stage="caption", config=None):
    fp = make_stage(stage, config or tiny(), store).fingerprint
    return pl.from_arrow(store.features(stage, fp).read())


def test_caption_rows_are_text_keyed_by_manifest_ids(full_run):
    captions = rows(full_run)
    manifest = pl.from_arrow(full_run.manifest.read(["image_id"]))
    assert sorted(captions["image_id"].to_list()) == sorted(manifest["image_id"].to_list())
    assert (captions["status"] == "ok").all() and captions["error"].null_count() == captions.height
    assert captions["caption"].str.len_chars().min() > 0
    assert captions["caption"].n_unique() > 1  # captions depend on the image


def test_resume_computes_only_the_rest_without_duplicates(tmp_path, image_root):
    store = Store(tmp_path)
    config = tiny()
    run_stage("ingest", config, store, inputs=[image_root])
    stage = make_stage("caption", config, store)
    ids = sorted(stage.todo())
    first = stage.run(ids=ids[:10])
    assert first.computed == 10
    parts_before = len(stage.output.parts())
    second = make_stage("caption", config, store).run()
    assert second.todo == second.computed == len(ids) - 10
    assert len(stage.output.parts()) > parts_before
    done = rows(store)
    assert done.height == len(ids) and done["image_id"].n_unique() == len(ids)
    third = make_stage("caption", config, store).run()
    assert third.todo == 0 and third.computed == 0


def test_changed_config_writes_a_new_fingerprint_beside_the_old(tmp_path, image_root):
    store = Store(tmp_path)
    run_stage("ingest", tiny(), store, inputs=[image_root])
    old = make_stage("caption", tiny(), store)
    old.run(ids=sorted(old.todo())[:4])
    changed = resolve("tiny", {"caption": {"max_new_tokens": 5}}, {"chunk_size": 8, "device": "cpu"})
    new = make_stage("caption", changed, store)
    assert new.fingerprint != old.fingerprint
    stats = new.run(ids=sorted(new.todo())[:4])
    assert stats.computed == 4
    assert sorted(store.fingerprints("caption")) == sorted([old.fingerprint, new.fingerprint])
    assert len(old.output.ids()) == 4 and len(new.output.ids()) == 4
    saved = (store.root / "features" / "caption" / new.fingerprint / "config.json").read_text()
    assert '"max_new_tokens": 5' in saved


def test_user_captions_from_a_list(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    Image.new("RGB", (16, 16), (5, 5, 5)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (50, 5, 5)).save(tmp_path / "b.png")
    (tmp_path / "list.csv").write_text("path,caption\na.png,a dark square\nb.png,\n")
    store = Store(tmp_path / "data")
    config = resolve("tiny", {"caption": {"backend": "column"}}, {"device": "cpu"})
    run_stage("ingest", config, store, inputs=[tmp_path / "list.csv"])
    run_stage("caption", config, store)
    out = rows(store, config=config).sort("caption", nulls_last=True)
    assert out["caption"].to_list() == ["a dark square", None]
    assert out["status"].to_list() == ["ok", "error"] and "no caption" in out["error"][1]


def test_ingest_errors_propagate_as_error_rows(tmp_path, image_root):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 40), (1, 200, 3)).save(tmp_path / "imgs/good.png")
    (tmp_path / "imgs/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    store = Store(tmp_path / "data")
    config = tiny()
    run_stage("ingest", config, store, inputs=[tmp_path / "imgs"])
    for name in ("caption", "ground", "embed", "distance"):
        stats = run_stage(name, config, store)
        assert (stats.ok, stats.error) == (1, 1), name
        out = rows(store, name)
        bad = out.filter(pl.col("status") == "error")["error"][0]
        assert bad.startswith("ingest: "), bad


def test_captioner_variants_run_as_stages_beside_each_other(tmp_path, image_root):
    store = Store(tmp_path)
    run_stage("ingest", tiny(), store, inputs=[image_root / "toygan"])
    fingerprints = set()
    for backend in ("blip2", "blip", "llava"):
        config = resolve("tiny", {"caption": {"backend": backend, "model": f"tiny/{backend}"}}, {"device": "cpu"})
        stats = run_stage("caption", config, store)
        assert (stats.ok, stats.error) == (12, 0), backend
        fingerprints.add(make_stage("caption", config, store).fingerprint)
    assert sorted(store.fingerprints("caption")) == sorted(fingerprints) and len(fingerprints) == 3


def test_prompted_captions_do_not_depend_on_the_batch(tmp_path, image_root):
    """With a prompt, a decoder-only captioner pads on the left, and each image's caption is the one
    it gets alone (BLIP-2's OPT and LLaVA continue the last position of each row)."""
    for backend in ("blip2", "llava"):
        captions = {}
        for batch_size in (1, 5):
            config = resolve(
                "tiny",
                {"caption": {"backend": backend, "model": f"tiny/{backend}", "prompt": "a photo of"}},
                {"device": "cpu", "batch_size": batch_size},
            )
            stage = make_stage("caption", config, Store(tmp_path / f"{backend}-{batch_size}"))
            assert stage.captioner._loaded[1].tokenizer.padding_side == "left", backend
            run_stage("ingest", config, stage.store, inputs=[image_root / "toygan"])
            assert run_stage("caption", config, stage.store).ok == 12
            captions[batch_size] = pl.from_arrow(stage.output.read(["image_id", "caption"])).sort("image_id")
        assert captions[1].equals(captions[5]), backend


def test_lavis_decoding_is_a_setting_beam_5_max_30_min_1_with_its_own_fingerprint(tmp_path):
    """LAVIS's BLIP-2 `generate` defaults (num_beams=5, max_length=30, min_length=1), plausibly the
    authors' captions, against the default greedy 30 tokens: the stage's rows equal transformers'
    `generate` with those arguments, under their own fingerprint."""
    import torch

    from pipeline.app.demo import make_images
    from pipeline.models.tiny import build_tiny

    store = Store(tmp_path / "data")
    lavis = {"num_beams": 5, "max_new_tokens": 30, "min_new_tokens": 1}
    config = resolve("tiny", {"caption": lavis}, {"device": "cpu", "batch_size": 2})
    run_stage("ingest", config, store, inputs=[make_images(tmp_path / "images", n_per_class=1)])
    assert run_stage("caption", config, store).ok == 4
    assert make_stage("caption", config, store).fingerprint != make_stage("caption", tiny(), store).fingerprint
    model, processor = build_tiny("blip2", config.stage("caption").seed)
    stored = rows(store, config=config)
    paths = dict(pl.from_arrow(store.manifest.read(["image_id", "path"])).iter_rows())
    for image_id, caption in stored.select("image_id", "caption").iter_rows():
        inputs = processor(images=Image.open(paths[image_id]).convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, num_beams=5, max_new_tokens=30, min_new_tokens=1, do_sample=False)
        assert caption == " ".join(processor.batch_decode(out, skip_special_tokens=True)[0].split())
