"""The loading shared by the transformers backends (captioners and the transformers grounder)."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from pipeline.engine.config import TINY_PREFIX
from pipeline.engine.hub import hub_cache_dir, resolve_revision
from pipeline.models import LOAD_COUNTS, loading, resolve_device, torch_dtype
from pipeline.models.settings import HubSettings
from pipeline.models.tiny import build_tiny

log = logging.getLogger(__name__)


def keep_fp32_modules(model: Any, dtype: Any) -> Any:
    """After a cast to a low `dtype`, put back to float32 what transformers' from_pretrained keeps in
    float32: `_keep_in_fp32_modules` in float16 (BLIP-2's Q-Former and query tokens),
    `_keep_in_fp32_modules_strict` in float16 and bfloat16; a parameter or buffer is kept when its
    dotted name contains one of those names (from_pretrained's pattern search)."""
    import torch

    keep: set[str] = set()
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if keep and tensor.is_floating_point() and any(k in name for k in keep):
            tensor.data = tensor.data.float()
    return model


class TransformersBackend:
    """A transformers model and its processor, from a hub id, a local directory or a tiny build.

    Subclasses name the model class and the stage; `name` is their tiny build's in
    `pipeline.models.tiny` and the key they are counted under in LOAD_COUNTS.

    Args:
        cfg: the stage config (`model` is a hub id, a local directory or `tiny/...`).
        device: torch device string (`auto` picks the GPU when there is one).
    """

    name: str
    model_class: str  # in transformers, e.g. "Blip2ForConditionalGeneration"
    stage: str  # the stage whose config names the model (in a load failure's message)
    # How a low-precision dtype is applied: "weights" casts the weights (keeping the model's
    # `_keep_in_fp32_modules` in float32, as transformers' from_pretrained does); "autocast" keeps the
    # weights float32 and runs each call under torch.autocast (the backend's `low_precision()`).
    precision: str = "weights"

    def __init__(self, cfg: HubSettings, device: str = "auto") -> None:
        self.cfg = cfg
        self.device = resolve_device(device)

    @property
    def revision(self) -> str | None:
        """The commit the fingerprint records (engine/hub.py): what is loaded, whatever main is now."""
        return resolve_revision(self.cfg.model, self.cfg.revision)

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        """The model (on the device, in the config's dtype, in eval mode) and its processor, loaded once."""
        import transformers
        from transformers import AutoProcessor

        dtype = torch_dtype(self.cfg.dtype) if self.precision == "weights" else torch_dtype("float32")
        if self.cfg.model.startswith(TINY_PREFIX):
            model, processor = build_tiny(self.name, self.cfg.seed)
        else:
            log.info("loading %s %s (revision %s)", self.name, self.cfg.model, self.revision or "default")
            hub = {"revision": self.revision, "cache_dir": hub_cache_dir()}  # the commit the fingerprint records
            processor = AutoProcessor.from_pretrained(self.cfg.model, **hub)
            model = getattr(transformers, self.model_class).from_pretrained(
                self.cfg.model, **hub, dtype=dtype, use_safetensors=True
            )
        LOAD_COUNTS[self.name] += 1
        model = keep_fp32_modules(model.to(dtype=dtype), dtype).to(device=self.device).eval()
        self._adapt(model)
        self._configure(processor)
        return model, processor

    def low_precision(self) -> Any:
        """The context of a model call: torch.autocast in the config's dtype when this backend runs
        low precision that way (the weights stay float32), else nothing."""
        import contextlib

        import torch

        if self.precision != "autocast" or self.cfg.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch_dtype(self.cfg.dtype))

    def _adapt(self, model: Any) -> None:
        """Adjust a loaded model for this backend (nothing by default)."""

    def _configure(self, processor: Any) -> None:
        """Set up a loaded processor for this backend (nothing by default)."""

    def load(self) -> None:
        """Load the model now (the stage calls this before its first chunk)."""
        with loading(self.stage, self.cfg.model, self.revision):
            _ = self._loaded
