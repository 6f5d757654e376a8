"""Low precision as the configs say: BLIP-2 cast keeping what transformers keeps in float32; Grounding
DINO under autocast with its weights, box heads and outputs in float32."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from pipeline.engine.config import resolve
from pipeline.models import CAPTIONERS, GROUNDERS


def backend(registry, stage: str, **overrides):
    cfg = dataclasses.replace(resolve("tiny").stage(stage), **overrides)
    return registry.get(cfg.backend)(cfg, "cpu")


def test_float16_blip2_keeps_the_qformer_and_query_tokens_in_float32_as_from_pretrained_does():
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8))
    for dtype, fp32_kept in (("float16", True), ("bfloat16", False)):
        captioner = backend(CAPTIONERS, "caption", dtype=dtype)
        model, _ = captioner._loaded
        low = getattr(torch, dtype)
        # Blip2's _keep_in_fp32_modules is ["query_tokens", "qformer"]: kept in float16 only (the rule of
        # transformers' from_pretrained: `_keep_in_fp32_modules` guards against float16 overflow)
        assert model.query_tokens.dtype == (torch.float32 if fp32_kept else low)
        qformer = {p.dtype for p in model.qformer.parameters()}
        assert qformer == ({torch.float32} if fp32_kept else {low})
        assert {p.dtype for p in model.language_model.parameters()} == {low}
        assert {p.dtype for p in model.vision_model.parameters()} == {low}
        assert all(captioner.caption([image]))  # the mixed model generates


def test_bfloat16_grounding_runs_under_autocast_with_float32_weights_box_heads_and_outputs():
    grounder = backend(GROUNDERS, "ground", dtype="bfloat16")
    model, _ = grounder._loaded
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    seen: dict[str, set] = {"box": set(), "linear": set()}
    heads = [m for m in model.modules() if type(m).__name__ == "GroundingDinoMLPPredictionHead"]
    assert heads
    for head in heads:
        head.layers[-1].register_forward_hook(lambda _m, _i, out: seen["box"].add(out.dtype))
    linear = next(m for m in model.model.encoder.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda _m, _i, out: seen["linear"].add(out.dtype))
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8))
    found = grounder.ground([image], ["a cat on a mat"])
    assert seen["linear"] == {torch.bfloat16}  # the encoder's matmuls run in low precision
    assert seen["box"] == {torch.float32}  # box regression does not
    assert all(isinstance(o["score"], float) and len(o["box"]) == 4 for o in found[0])
    fp32 = backend(GROUNDERS, "ground")
    assert fp32.low_precision().__class__.__name__ == "nullcontext"
