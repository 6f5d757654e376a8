"""The groundingdino-py backend: its real loading path (package config, local BERT, safetensors or
weights-only torch file), offline, on a small random model built with the package's own code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import stages  # noqa: F401 (registers the stages, whose config classes `resolve` builds)
from pipeline.engine.config import resolve
from pipeline.models.groundingdino_py import GroundingDinoPy, apply_compat_shim, default_config_file

pytest.importorskip("groundingdino")

SMALL = "\nenc_layers = 1\ndec_layers = 1\ndim_feedforward = 256\nnum_queries = 30\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A local BERT, a config file shrunk from the package's, and random weights as safetensors and .pth."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertModel

    from pipeline.models.tiny import bert_config, bert_tokenizer, seeded

    tmp = tmp_path_factory.mktemp("gdpy")
    tokenizer = bert_tokenizer()
    bert = seeded(BertModel, bert_config(tokenizer), 0)  # the tiny Grounding DINO's text encoder
    bert.save_pretrained(tmp / "bert")
    tokenizer.save_pretrained(tmp / "bert")
    config_file = tmp / "small_swint.py"
    config_file.write_text(open(default_config_file()).read() + SMALL)
    ground = {  # on the tiny profile's sizes (224/320), thresholds 0: every box the model finds
        "backend": "groundingdino-py",
        "model": "(built)",
        "text_encoder": str(tmp / "bert"),
        "config_file": str(config_file),
        "max_objects": 5,
        "box_threshold": 0.0,
        "text_threshold": 0.0,
    }
    cfg = resolve("tiny", {"ground": ground}).stage("ground")
    apply_compat_shim()
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(config_file))
    args.text_encoder_type = str(tmp / "bert")
    args.device = "cpu"
    torch.manual_seed(0)
    model = build_model(args)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "gd.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp / "gd.pth")
    return cfg, tmp


def test_loads_safetensors_and_weights_only_torch_file_alike(checkpoint):
    cfg, tmp = checkpoint
    images = [Image.new("RGB", (160, 120), (200, 30, 30)), Image.new("RGB", (96, 128), (20, 40, 220))]
    a = GroundingDinoPy(dataclasses.replace(cfg, model=str(tmp / "gd.safetensors")), "cpu")
    b = GroundingDinoPy(dataclasses.replace(cfg, model=str(tmp / "gd.pth")), "cpu")
    out_a = a.ground(images, ["a red box", "a blue dog"])
    assert out_a == b.ground(images, ["a red box", "a blue dog"])
    for objects, image in zip(out_a, images, strict=True):
        assert 0 < len(objects) <= 5
        boxes = np.array([o["box"] for o in objects])
        assert (boxes >= 0).all() and (boxes[:, 2] <= image.width).all() and (boxes[:, 3] <= image.height).all()
        assert all(o["phrase"] for o in objects)


def test_a_checkpoint_missing_weights_is_refused(checkpoint):
    from safetensors.torch import load_file, save_file

    cfg, tmp = checkpoint
    state = load_file(str(tmp / "gd.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("transformer.")}, str(tmp / "partial.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        GroundingDinoPy(dataclasses.replace(cfg, model=str(tmp / "partial.safetensors")), "cpu").load()
