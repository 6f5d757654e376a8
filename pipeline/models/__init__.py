"""Model backends behind registries: captioners, grounders and the CLIP encoder.

Each backend loads lazily from a hub id, a local directory, or (names starting with `tiny/`) a
small configuration with seeded random weights, built offline. torch and transformers are imported
inside these modules only.
"""

from __future__ import annotations

import os
from collections import Counter

from pipeline.registry import Registry

# Model loads in this process, by backend: a dask worker must show one per model however many chunks it ran.
LOAD_COUNTS: Counter[str] = Counter()

CAPTIONERS: Registry[type] = Registry("captioner")
GROUNDERS: Registry[type] = Registry("grounder")


def resolve_device(device: str) -> str:
    """`auto` is the worker's pinned GPU (ITEM_DEVICE), else the first GPU torch sees, else the CPU."""
    if device != "auto":
        return device
    if os.environ.get("ITEM_DEVICE"):
        return os.environ["ITEM_DEVICE"]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
