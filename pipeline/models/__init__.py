"""Model backends behind registries: captioners, grounders and the CLIP encoder.

Each backend loads lazily from a hub id, a local directory, or (names starting with `tiny/`) a
small configuration with seeded random weights, built offline. torch and transformers are imported
inside these modules only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from pipeline.registry import Registry

# Model loads in this process, by backend: a dask worker must show one per model however many chunks it ran.
LOAD_COUNTS: Counter[str] = Counter()


def load_counts() -> dict[str, int]:
    """This process's model loads by backend (what a test asks each dask worker)."""
    return dict(LOAD_COUNTS)


CAPTIONERS: Registry[type] = Registry("captioner")
GROUNDERS: Registry[type] = Registry("grounder")


_BACKENDS: dict[tuple[Any, ...], Any] = {}


def shared_backend(kind: str, factory: Callable[[Any, str], Any], cfg: Any, device: str) -> Any:
    """One backend (and so one loaded model) per configuration and device in this process, shared by
    every stage instance that asks for it (a dask worker loads each model once, whatever the data root)."""
    key = (kind, cfg, resolve_device(device))
    if key not in _BACKENDS:
        _BACKENDS[key] = factory(cfg, device)
    return _BACKENDS[key]


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
