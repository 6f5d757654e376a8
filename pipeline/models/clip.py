"""The CLIP encoder (open_clip) and its preprocessing, from one factory so they cannot drift."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from pipeline.engine.config import TINY_PREFIX
from pipeline.engine.errors import UsageError
from pipeline.models import ENCODERS, LOAD_COUNTS, inference, loading, resolve_device, to_device
from pipeline.models.settings import EmbedSettings
from pipeline.models.tiny import CLIP_CONFIG, build_tiny

log = logging.getLogger(__name__)


def embed_dim(cfg: EmbedSettings) -> int:
    """Width of the joint embedding space, read from the model config without building it."""
    if cfg.model.startswith(TINY_PREFIX):
        return int(CLIP_CONFIG["embed_dim"])
    import open_clip

    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise UsageError(f"open_clip has no model config {cfg.model!r}")
    return int(model_cfg["embed_dim"])


MAX_RESIZE_FIRST_ASPECT = 20.0  # beyond this, crop first: resizing first would make a huge intermediate


def square_resize(image, size: int):
    """Resize the short side to `size` and centre-crop the long side, done as crop-then-resize.

    For extreme shapes only (past MAX_RESIZE_FIRST_ASPECT): resizing first, as open_clip does, would
    materialise a huge intermediate (a 20000x4 image would become 1,120,000x224). Near the crop's
    edges the pixels differ slightly from resize-then-crop (the filter sees no neighbours there).
    """
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class ClipPixels:
    """CLIP's inputs from images, the way the embed stage makes them (picklable: transforms only).

    Args:
        preprocess: open_clip's eval transform for the model (resize the short side, centre crop,
            normalise).
        size: the model's input size.
        image_crop: `center` (the paper: a plain centre crop of the whole image) or `resize_center`.
    """

    def __init__(self, preprocess: Any, size: int, image_crop: str) -> None:
        from torchvision import transforms as T

        self.preprocess = preprocess
        self.size = size
        self.image_crop = image_crop
        normalize = [t for t in preprocess.transforms if isinstance(t, T.Normalize)][0]
        self.normalize = T.Compose([T.ToTensor(), normalize])

    def whole(self, image):
        """The whole image: the paper's plain centre crop at the input size (torchvision's CenterCrop,
        so the same pixels as the reference), or open_clip's resize-then-crop (`image_crop:
        resize_center`). An image smaller than the input size on a side is resized the open_clip way."""
        from torchvision import transforms as T

        if self.image_crop == "center" and min(image.size) >= self.size:
            return self.normalize(T.CenterCrop(self.size)(image))
        return self.crop(image)

    def crop(self, image):
        """An object crop: open_clip's own preprocessing (resize the short side, centre crop,
        normalise); past MAX_RESIZE_FIRST_ASPECT, crop first (see `square_resize`)."""
        w, h = image.size
        if max(w, h) <= MAX_RESIZE_FIRST_ASPECT * min(w, h):
            return self.preprocess(image)
        return self.normalize(square_resize(image, self.size))


@ENCODERS.register("open_clip")
class ClipEncoder:
    """open_clip model, tokenizer and the two image transforms the embed stage uses.

    `image_transform` prepares the whole image: a centre crop at the model's input size (the
    paper's choice; an image smaller than that on a side is first upscaled so its short side fits),
    or open_clip's resize-then-crop. `crop_transform` prepares object crops the open_clip way, since
    crops come in any size. Both end with open_clip's normalisation for the model.
    """

    def __init__(self, cfg: EmbedSettings, device: str = "auto") -> None:
        self.cfg = cfg
        self.device = resolve_device(device)

    @cached_property
    def _loaded(self) -> tuple[Any, Any, Any]:
        import open_clip

        name = self.cfg.model
        pretrained = None if self.cfg.pretrained == "none" else self.cfg.pretrained
        if name.startswith(TINY_PREFIX):
            name = build_tiny("clip", self.cfg.seed)
        else:
            log.info("loading open_clip %s (%s)", name, pretrained)
        # Random weights are the point of the tiny profile: open_clip's warning about them says nothing.
        root, quiet = logging.getLogger(), _DropMessage("No pretrained weights loaded")
        if pretrained is None:
            root.addFilter(quiet)
        try:
            # bf16/fp16: open_clip's own mixed precision (LayerNorm in float32), not a cast of the whole model
            precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.cfg.dtype]
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, precision=precision, device=self.device
            )
        finally:
            root.removeFilter(quiet)
        LOAD_COUNTS["clip"] += 1
        return model.eval(), preprocess, open_clip.get_tokenizer(name)

    def load(self) -> None:
        """Load the model now (the stage calls this before its first chunk)."""
        with loading("embed", f"{self.cfg.model} ({self.cfg.pretrained})", None):
            _ = self._loaded

    @property
    def input_size(self) -> int:
        size = self._loaded[0].visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    def preprocessor(self) -> ClipPixels:
        """The two image transforms, without the model (picklable, for the stage's feed processes)."""
        return self._pixels

    @cached_property
    def _pixels(self) -> ClipPixels:
        return ClipPixels(self._loaded[1], self.input_size, self.cfg.image_crop)

    def image_transform(self, image):
        return self.preprocessor().whole(image)

    def crop_transform(self, image):
        return self.preprocessor().crop(image)

    def encode_images(self, batch) -> Any:
        """Raw (unnormalised) image embeddings, float32 on the CPU."""

        model = self._loaded[0]
        with inference(self.cfg):
            out = model.encode_image(to_device(batch, self.device).to(dtype=self._input_dtype))
        return out.float().cpu()

    @cached_property
    def _input_dtype(self):
        """The dtype the image tower's first convolution takes (its weights': low precision in bf16)."""
        import torch

        visual = self._loaded[0].visual
        return next((m.weight.dtype for m in visual.modules() if isinstance(m, torch.nn.Conv2d)), torch.float32)

    @property
    def context_length(self) -> int:
        """Tokens the text encoder reads (77 for CLIP): longer texts are cut to it by the tokenizer."""
        return int(getattr(self._loaded[2], "context_length", None) or 77)

    def truncated(self, texts: list[str]) -> list[bool]:
        """Whether each text is longer than the context, start and end tokens included (open_clip's
        tokenizer cuts it there without a word: the embedding is of its first 75 tokens)."""
        tokenizer, limit = self._loaded[2], self.context_length
        if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip's BPE
            return [len(tokenizer.encode(t)) + 2 > limit for t in texts]
        inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer: a transformers tokenizer
        if inner is not None:
            return [len(inner(t)["input_ids"]) > limit for t in texts]
        return [False for _ in texts]  # a tokenizer we cannot ask: counted as fitting

    def encode_texts(self, texts: list[str]) -> Any:
        """Raw (unnormalised) text embeddings, float32 on the CPU."""

        model, _, tokenizer = self._loaded
        with inference(self.cfg):
            out = model.encode_text(to_device(tokenizer(texts), self.device))
        return out.float().cpu()
