"""Captioners: image -> text. BLIP-2 through transformers (the paper's captioner)."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from pipeline.config import TINY_PREFIX, CaptionConfig
from pipeline.models import CAPTIONERS, LOAD_COUNTS, resolve_device, torch_dtype

log = logging.getLogger(__name__)


@CAPTIONERS.register("blip2")
class Blip2Captioner:
    """BLIP-2 (`Blip2ForConditionalGeneration`), greedy or beam generation, batched.

    Args:
        cfg: the caption stage config (`model` is a hub id, a local directory or `tiny/blip2`).
        device: torch device string (`auto` picks the GPU when there is one).
    """

    def __init__(self, cfg: CaptionConfig, device: str = "auto") -> None:
        self.cfg = cfg
        self.device = resolve_device(device)

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        dtype = torch_dtype(self.cfg.dtype)
        if self.cfg.model.startswith(TINY_PREFIX):
            model, processor = tiny_blip2(self.cfg.seed)
        else:
            log.info("loading BLIP-2 %s (revision %s)", self.cfg.model, self.cfg.revision or "default")
            processor = Blip2Processor.from_pretrained(self.cfg.model, revision=self.cfg.revision)
            model = Blip2ForConditionalGeneration.from_pretrained(
                self.cfg.model, revision=self.cfg.revision, dtype=dtype, use_safetensors=True
            )
        LOAD_COUNTS["blip2"] += 1
        model = model.to(device=self.device, dtype=dtype).eval()
        return model, processor

    def load(self) -> None:
        """Load the model now (the stage calls this before its first chunk)."""
        _ = self._loaded

    def caption(self, images: list) -> list[str]:
        """Captions for a batch of RGB PIL images, stripped of whitespace."""
        import torch

        model, processor = self._loaded
        kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.cfg.prompt:
            kwargs["text"] = [self.cfg.prompt] * len(images)
        inputs = processor(**kwargs).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=self.cfg.max_new_tokens,
                min_new_tokens=self.cfg.min_new_tokens,
                num_beams=self.cfg.num_beams,
                do_sample=False,
            )
        texts = processor.batch_decode(out, skip_special_tokens=True)
        if self.cfg.prompt:  # decoder-only models echo the prompt
            texts = [t[len(self.cfg.prompt) :] if t.startswith(self.cfg.prompt) else t for t in texts]
        return [" ".join(t.split()) for t in texts]


def tiny_blip2(seed: int):
    """A small BLIP-2 (ViT + Q-Former + OPT) with seeded random weights and its processor, offline."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    from pipeline.models.tiny import byte_level_bpe

    tokenizer = byte_level_bpe()
    n_query = 4
    vision = Blip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    )
    qformer = Blip2QFormerConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=32,
        vocab_size=len(tokenizer),
    )
    # A wide initialisation makes random captions depend on the image instead of one repeated token.
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=128,
        word_embed_proj_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        init_std=1.0,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=n_query,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        initializer_range=1.0,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(
        size={"height": 64, "width": 64},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=n_query)
    return model, processor
