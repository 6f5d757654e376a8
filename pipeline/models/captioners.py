"""Captioners: image -> text through transformers: BLIP-2 (the paper's), BLIP and LLaVA (Fig. 7)."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from pipeline.config import TINY_PREFIX, CaptionConfig
from pipeline.models import CAPTIONERS, LOAD_COUNTS, resolve_device, torch_dtype

log = logging.getLogger(__name__)


class TransformersCaptioner:
    """A transformers image-to-text model, greedy or beam generation, batched.

    Subclasses name the model class, the tiny builder and how the prompt is written.

    Args:
        cfg: the caption stage config (`model` is a hub id, a local directory or `tiny/...`).
        device: torch device string (`auto` picks the GPU when there is one).
    """

    name: str
    model_class: str

    def __init__(self, cfg: CaptionConfig, device: str = "auto") -> None:
        self.cfg = cfg
        self.device = resolve_device(device)

    def tiny(self, seed: int) -> tuple[Any, Any]:
        raise NotImplementedError

    def prompt(self) -> str | None:
        return self.cfg.prompt

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        import transformers
        from transformers import AutoProcessor

        dtype = torch_dtype(self.cfg.dtype)
        if self.cfg.model.startswith(TINY_PREFIX):
            model, processor = self.tiny(self.cfg.seed)
        else:
            log.info("loading %s %s (revision %s)", self.name, self.cfg.model, self.cfg.revision or "default")
            processor = AutoProcessor.from_pretrained(self.cfg.model, revision=self.cfg.revision)
            model = getattr(transformers, self.model_class).from_pretrained(
                self.cfg.model, revision=self.cfg.revision, dtype=dtype, use_safetensors=True
            )
        LOAD_COUNTS[self.name] += 1
        model = model.to(device=self.device, dtype=dtype).eval()
        return model, processor

    def load(self) -> None:
        """Load the model now (the stage calls this before its first chunk)."""
        _ = self._loaded

    def caption(self, images: list) -> list[str]:
        """Captions for a batch of RGB PIL images, stripped of whitespace (the prompt not repeated)."""
        import torch

        model, processor = self._loaded
        kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        prompt = self.prompt()
        if prompt:
            kwargs["text"] = [prompt] * len(images)
            kwargs["padding"] = True
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
        if prompt and "input_ids" in inputs and out.shape[1] > inputs["input_ids"].shape[1] and self.echoes_prompt:
            out = out[:, inputs["input_ids"].shape[1] :]  # decoder-only models return the prompt first
        texts = processor.batch_decode(out, skip_special_tokens=True)
        if prompt:
            texts = [t[len(prompt) :] if t.startswith(prompt) else t for t in texts]
        return [" ".join(t.split()) for t in texts]

    echoes_prompt = False


@CAPTIONERS.register("blip2")
class Blip2Captioner(TransformersCaptioner):
    """BLIP-2 (`Blip2ForConditionalGeneration`): the paper's captioner, unconditional by default."""

    name = "blip2"
    model_class = "Blip2ForConditionalGeneration"

    def tiny(self, seed: int) -> tuple[Any, Any]:
        return tiny_blip2(seed)


@CAPTIONERS.register("blip")
class BlipCaptioner(TransformersCaptioner):
    """BLIP (`BlipForConditionalGeneration`, e.g. Salesforce/blip-image-captioning-large): Fig. 7's BLIP."""

    name = "blip"
    model_class = "BlipForConditionalGeneration"

    def tiny(self, seed: int) -> tuple[Any, Any]:
        return tiny_blip(seed)


LLAVA_PROMPT = "Please generate a one-sentence caption for the input image."  # the paper's LLaVA prompt


@CAPTIONERS.register("llava")
class LlavaCaptioner(TransformersCaptioner):
    """LLaVA (`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf) asked the paper's prompt."""

    name = "llava"
    model_class = "LlavaForConditionalGeneration"
    echoes_prompt = True

    def prompt(self) -> str:
        return f"USER: <image>\n{self.cfg.prompt or LLAVA_PROMPT} ASSISTANT:"

    def tiny(self, seed: int) -> tuple[Any, Any]:
        return tiny_llava(seed)


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


def tiny_blip(seed: int):
    """A small BLIP (ViT + BERT decoder, random seeded weights) and its processor, offline."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    from pipeline.models.tiny import WORDS

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *dict.fromkeys(WORDS)]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        encoder_hidden_size=32,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = BlipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    return model, processor


def tiny_llava(seed: int):
    """A small LLaVA (CLIP vision tower + Llama, random seeded weights) and its processor, offline."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from pipeline.models.tiny import byte_level_bpe

    tokenizer = byte_level_bpe()
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=1.0,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return model, processor
