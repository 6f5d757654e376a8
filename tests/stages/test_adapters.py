"""Dataset adapters: each folder layout read from a small tree built here."""

from __future__ import annotations

import polars as pl
import pytest
from PIL import Image

from pipeline.app.runner import run_stage
from pipeline.engine.store import Store
from tests.conftest import tiny


def tree(root, files):
    for i, rel in enumerate(files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 7 % 256, i * 13 % 256, 3)).save(path, format="PNG")
    return root


def ingest(tmp_path, root, **kw):
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[root], **kw)
    frame = pl.from_arrow(store.manifest.read())
    return {
        p.split(str(root) + "/", 1)[1]: (lab, g, s)
        for p, lab, g, s in frame.select("path", "label", "generator", "split").iter_rows()
    }


def test_cnndetection_with_and_without_class_folders(tmp_path):
    root = tree(
        tmp_path / "cnn",
        [
            "progan/airplane/0_real/a.png",
            "progan/airplane/1_fake/b.png",
            "stylegan/0_real/c.png",
            "stylegan/1_fake/d.png",
        ],
    )
    got = ingest(tmp_path, root, layout="cnndetection")
    assert {k: v[:2] for k, v in got.items()} == {
        "progan/airplane/0_real/a.png": (0, "progan"),
        "progan/airplane/1_fake/b.png": (1, "progan"),
        "stylegan/0_real/c.png": (0, "stylegan"),
        "stylegan/1_fake/d.png": (1, "stylegan"),
    }


def test_universalfakedetect_diffusion_sets_follow_the_same_pattern(tmp_path):
    root = tree(
        tmp_path / "diffusion_datasets",
        ["glide_100_27/0_real/a.png", "glide_100_27/1_fake/b.png", "ldm_200/1_fake/c.png"],
    )
    got = ingest(tmp_path, root)
    assert got["glide_100_27/1_fake/b.png"][:2] == (1, "glide_100_27")
    assert got["ldm_200/1_fake/c.png"][:2] == (1, "ldm_200")


def test_genimage(tmp_path):
    root = tree(
        tmp_path / "genimage",
        [
            "sdv14/imagenet_ai_0419_sdv4/train/ai/a.png",
            "sdv14/imagenet_ai_0419_sdv4/train/nature/b.png",
            "midjourney/imagenet_midjourney/val/ai/c.png",
        ],
    )
    got = ingest(tmp_path, root, layout="genimage")
    assert got == {
        "sdv14/imagenet_ai_0419_sdv4/train/ai/a.png": (1, "sdv14", "train"),
        "sdv14/imagenet_ai_0419_sdv4/train/nature/b.png": (0, "sdv14", "train"),
        "midjourney/imagenet_midjourney/val/ai/c.png": (1, "midjourney", "val"),
    }
    assert ingest(tmp_path / "auto", root) == got  # auto recognises the ai/nature folders


def test_diffusionforensics(tmp_path):
    root = tree(
        tmp_path / "df", ["test/lsun_bedroom/adm/a.png", "test/lsun_bedroom/real/b.png", "train/imagenet/sdv1/c.png"]
    )
    got = ingest(tmp_path, root, layout="diffusionforensics")
    assert got == {
        "test/lsun_bedroom/adm/a.png": (1, "lsun_bedroom/adm", "test"),
        "test/lsun_bedroom/real/b.png": (0, "lsun_bedroom/real", "test"),
        "train/imagenet/sdv1/c.png": (1, "imagenet/sdv1", "train"),
    }
    assert ingest(tmp_path / "auto", root) == got


def test_overrides_and_unknown_layout(tmp_path):
    root = tree(tmp_path / "progan_train", ["airplane/0_real/a.png"])
    got = ingest(tmp_path, root, generator="progan", split="train")
    assert got["airplane/0_real/a.png"] == (0, "progan", "train")
    with pytest.raises(KeyError, match="unknown folder layout"):
        ingest(tmp_path / "x", root, layout="imagenet")


def test_glob_inputs(tmp_path):
    root = tree(tmp_path / "g", ["a.png", "b.png", "c.jpg"])
    store = Store(tmp_path / "data")
    run_stage("ingest", tiny(), store, inputs=[str(root / "*.png")])
    assert store.manifest.read().num_rows == 2
