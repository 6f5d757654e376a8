"""What the backends read of their stage's config, by backend kind.

The stage config classes belong to the stages, a layer above this one; a backend names the fields
it reads instead, and any object that has them will do (the stage's frozen dataclass, in practice).
The attributes are only ever read.
"""

from __future__ import annotations

from typing import Protocol


class ModelSettings(Protocol):
    """The model a backend loads and how."""

    model: str  # a hub id, a local directory or `tiny/...`
    dtype: str  # float32 | bfloat16 | float16
    seed: int  # random init of a tiny model
    tf32: bool  # TF32 tensor cores for float32 matmuls and convolutions on a GPU


class HubSettings(ModelSettings, Protocol):
    """A model that may come from the Hugging Face hub."""

    revision: str | None  # a branch, tag or commit; None: main


class CaptionSettings(HubSettings, Protocol):
    """A captioner's (captioners.py)."""

    prompt: str | None  # None: unconditional captions
    max_new_tokens: int
    min_new_tokens: int
    num_beams: int


class GroundSettings(HubSettings, Protocol):
    """A grounder's (grounders.py, groundingdino_py.py)."""

    box_threshold: float
    text_threshold: float
    max_objects: int
    shortest_edge: int
    longest_edge: int
    pad_multiple: int  # transformers backend: resized sides padded up to buckets (0: none)
    text_encoder: str | None  # groundingdino-py only
    config_file: str | None  # groundingdino-py only


class EmbedSettings(ModelSettings, Protocol):
    """The CLIP encoder's (clip.py)."""

    pretrained: str  # an open_clip tag, a .safetensors file, or "none"
    image_crop: str  # center | resize_center
