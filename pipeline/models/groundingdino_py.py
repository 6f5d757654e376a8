"""Grounding DINO through the `groundingdino-py` package (IDEA-Research's original code).

`model` is the checkpoint (.safetensors, or .pth read with `torch.load(weights_only=True)`),
`config_file` the package's model config (default: its GroundingDINO_SwinT_OGC.py; note that
groundingdino executes this Python file, so only point it at a file you trust), and
`text_encoder` the BERT it loads (hub id or local directory).

groundingdino-py 0.4 calls three BertModel methods that transformers 5 removed, and passes
BertEmbeddings a keyword that 5.24 renamed; the shim below restores them with their transformers 4
semantics (GroundingDINO never passes head masks).
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.models import GROUNDERS, LOAD_COUNTS, inference, loading, resolve_device
from pipeline.models.grounders import Obj, finish, fit_prompt, pad_to_aspect, prompt_of, warn_truncated
from pipeline.models.settings import GroundSettings

log = logging.getLogger(__name__)

_SHIM_FLAG = "_item_groundingdino_shim"


def _extended_attention_mask(self, attention_mask, input_shape=None, device=None, dtype=None):
    import torch

    dtype = dtype or self.dtype
    ext = attention_mask[:, None, :, :] if attention_mask.dim() == 3 else attention_mask[:, None, None, :]
    return (1.0 - ext.to(dtype)) * torch.finfo(dtype).min


def _invert_attention_mask(self, mask):
    return _extended_attention_mask(self, mask)


def _head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
    if head_mask is not None:
        raise NotImplementedError("head masks are not supported with transformers >= 5")
    return [None] * num_hidden_layers


def _embeddings_accepting_past_length(forward):
    """BertEmbeddings.forward that also takes transformers 4's `past_key_values_length` (5.24 renamed
    it `cache_length`); groundingdino-py passes it by the old name."""
    import functools
    import inspect

    if "past_key_values_length" in inspect.signature(forward).parameters:
        return forward

    @functools.wraps(forward)
    def wrapped(self, *args, past_key_values_length: int = 0, **kwargs):
        if past_key_values_length and "cache_length" not in kwargs:
            kwargs["cache_length"] = past_key_values_length
        return forward(self, *args, **kwargs)

    return wrapped


def apply_compat_shim() -> None:
    """Idempotently add the removed mask helpers back onto transformers' BertModel, and the old
    keyword onto BertEmbeddings."""
    from transformers import BertModel
    from transformers.models.bert.modeling_bert import BertEmbeddings

    if getattr(BertModel, _SHIM_FLAG, False):
        return
    BertEmbeddings.forward = _embeddings_accepting_past_length(BertEmbeddings.forward)
    for name, fn in (
        ("get_extended_attention_mask", _extended_attention_mask),
        ("invert_attention_mask", _invert_attention_mask),
        ("get_head_mask", _head_mask),
    ):
        if not hasattr(BertModel, name):
            setattr(BertModel, name, fn)
    setattr(BertModel, _SHIM_FLAG, True)


def read_checkpoint(path: str) -> dict[str, Any]:
    """Weights only: safetensors, or a torch file loaded with weights_only=True (no pickled code)."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["model"] if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) else ckpt


def default_config_file() -> str:
    from groundingdino.config import GroundingDINO_SwinT_OGC

    return str(Path(GroundingDINO_SwinT_OGC.__file__).with_suffix(".py"))


@GROUNDERS.register("groundingdino-py")
class GroundingDinoPy:
    """The groundingdino-py backend; one image per forward (its `predict` is not batched)."""

    def __init__(self, cfg: GroundSettings, device: str = "auto") -> None:
        self.cfg = cfg
        self.device = resolve_device(device)

    @cached_property
    def model(self):
        apply_compat_shim()
        from groundingdino.models import build_model
        from groundingdino.util.misc import clean_state_dict
        from groundingdino.util.slconfig import SLConfig

        args = SLConfig.fromfile(self.cfg.config_file or default_config_file())
        args.text_encoder_type = self.cfg.text_encoder or "bert-base-uncased"
        args.device = self.device
        args.use_checkpoint = False  # gradient checkpointing is pointless at inference and warns
        args.use_transformer_ckpt = False
        LOAD_COUNTS["groundingdino-py"] += 1
        model = build_model(args)
        missing, _ = model.load_state_dict(clean_state_dict(read_checkpoint(self.cfg.model)), strict=False)
        if missing:  # strict=False is upstream's choice; a wrong checkpoint must not pass silently
            raise ValueError(f"checkpoint {self.cfg.model} lacks {len(missing)} weight(s), e.g. {missing[:3]}")
        return model.eval().to(self.device)

    def load(self) -> None:
        """Load the model now (the stage calls this before its first chunk)."""
        with loading("ground", self.cfg.model, self.cfg.revision):
            _ = self.model

    def ground(self, images: list, captions: list[str]) -> list[list[Obj]]:
        import groundingdino.datasets.transforms as T
        from groundingdino.util.inference import predict

        transform = T.Compose(
            [
                T.RandomResize([self.cfg.shortest_edge], max_size=self.cfg.longest_edge),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        model = self.model
        limit = min(model.max_text_len, model.bert.config.max_position_embeddings)
        fitted = [fit_prompt(prompt_of(c), lambda t: len(model.tokenizer(t)["input_ids"]), limit) for c in captions]
        warn_truncated(sum(cut for _, cut in fitted), len(fitted), limit)
        out = []
        for original, (prompt, _) in zip(images, fitted, strict=True):
            image, (w, h) = pad_to_aspect(original, longest_edge=self.cfg.longest_edge)  # (w, h): the boxes' frame
            tensor, _ = transform(image, None)
            with inference(self.cfg):
                boxes, scores, phrases = predict(
                    self.model,
                    tensor,
                    prompt,
                    self.cfg.box_threshold,
                    self.cfg.text_threshold,
                    device=self.device,
                )
            objects = []
            for (cx, cy, bw, bh), score, phrase in zip(boxes.tolist(), scores.tolist(), phrases, strict=True):
                box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                objects.append({"phrase": phrase, "box": box, "score": score})
            out.append(finish(objects, original.width, original.height, self.cfg.max_objects))
        return out
