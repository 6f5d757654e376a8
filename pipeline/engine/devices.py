"""Which device a stage's work runs on: `auto` is the worker's pinned GPU (ITEM_DEVICE), else the
first GPU torch sees, else the CPU. Here, not with the models, because the engine decides by it too
(whether to prepare batches ahead in a thread)."""

from __future__ import annotations

import os

from pipeline.engine.errors import UsageError


def resolve_device(device: str) -> str:
    """The device `device` means on this machine. A CUDA device that torch cannot see is a one-line
    error, not a traceback from deep in a model."""
    if device == "auto":
        if os.environ.get("ITEM_DEVICE"):
            return os.environ["ITEM_DEVICE"]
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= count:
            seen = f"{count} CUDA device(s)" if count else "no CUDA device (torch.cuda.is_available() is False)"
            raise UsageError(f"--device {device}: torch sees {seen}; use --device cpu, or auto")
    return device


CORES_ENV = "ITEM_CORES_PER_GPU"  # set on each local GPU worker by the executor: its share of the cores


def cores_per_gpu() -> int:
    """The CPU cores one GPU's feed may use: the executor's share for this worker, else this process's
    cores over the GPUs torch sees."""
    if os.environ.get(CORES_ENV):
        return int(os.environ[CORES_ENV])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    import torch

    return max(1, cores // max(1, torch.cuda.device_count()))
