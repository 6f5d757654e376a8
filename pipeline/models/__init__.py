"""Model backends behind registries: captioners, grounders and the CLIP encoder.

Each backend loads lazily from a hub id, a local directory, or (names starting with `tiny/`) the
small configuration of `tiny.py` with seeded random weights, built offline. Every backend follows
one small Protocol: built from its stage config (the fields it reads are named in `settings.py`) and a
device, `load()` once, then the model call. torch and transformers are imported inside the model code
paths only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pipeline.engine.devices import resolve_device  # noqa: F401 (backends import it from here)
from pipeline.engine.errors import UsageError
from pipeline.engine.hub import hub_cache_dir, is_hub_id, resolve_revision
from pipeline.engine.registry import Registry

# Model loads in this process, by backend: a dask worker must show one per model however many chunks it ran.
LOAD_COUNTS: Counter[str] = Counter()


def load_counts() -> dict[str, int]:
    """This process's model loads by backend (what a test asks each dask worker)."""
    return dict(LOAD_COUNTS)


class Backend(Protocol):
    """A model behind a stage: constructed as `cls(stage_config, device)`, loaded once, lazily."""

    def load(self) -> None:
        """Load the model now (the stage calls this before its first chunk; a failure stops the run)."""


class Captioner(Backend, Protocol):
    reads: ClassVar[str]  # "image": caption() takes RGB images; "caption": it takes the manifest's captions

    def caption(self, inputs: list) -> list[str | None]:
        """One caption per input (None: no caption for it, an error row)."""


class Grounder(Backend, Protocol):
    def ground(self, images: list, captions: list[str]) -> list[list[dict[str, Any]]]:
        """Per image, the objects its caption names: {"phrase", "box" (pixels x0 y0 x1 y1), "score"}."""


class Encoder(Backend, Protocol):
    def image_transform(self, image: Any) -> Any: ...

    def crop_transform(self, image: Any) -> Any: ...

    def encode_images(self, batch: Any) -> Any: ...

    def encode_texts(self, texts: list[str]) -> Any: ...

    @property
    def context_length(self) -> int: ...  # text tokens the text tower takes (CLIP: 77)

    def truncated(self, texts: list[str]) -> list[bool]: ...  # which texts are past context_length


CAPTIONERS: Registry[type[Captioner]] = Registry("captioner")
GROUNDERS: Registry[type[Grounder]] = Registry("grounder")
ENCODERS: Registry[type[Encoder]] = Registry("encoder")


_BACKENDS: dict[tuple[Any, ...], Any] = {}


def shared_backend(kind: str, factory: Callable[[Any, str], Any], cfg: Any, device: str) -> Any:
    """One backend (and so one loaded model) per configuration and device in this process, shared by
    every stage instance that asks for it (a dask worker loads each model once, whatever the data root).

    Keyed by the commit a hub revision names too: `revision: null` is one config whatever main is, and
    a backend loaded at one commit must not serve a stage whose fingerprint records another."""
    commit = resolve_revision(cfg.model, cfg.revision) if hasattr(cfg, "revision") else None
    key = (kind, cfg, commit, resolve_device(device))
    if key not in _BACKENDS:
        _BACKENDS[key] = factory(cfg, device)
    return _BACKENDS[key]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _needs_hub(model: str, revision: str | None = None) -> bool:
    """A hub id whose `revision` is not in the local cache (so loading it would go to the network).

    Looked up at that revision: the backends load a resolved commit, and a snapshot downloaded by
    commit has no `refs/main` to find it by."""
    if not is_hub_id(model):  # a local path, a tiny model, or not a hub id at all
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        # The cache directory as of now (the library reads its variables once, at import).
        cached = try_to_load_from_cache(model, "config.json", cache_dir=hub_cache_dir(), revision=revision)
        return not isinstance(cached, str)
    except Exception:  # an old or absent huggingface_hub: let the loader decide
        return False


@contextmanager
def loading(stage: str, model: str, revision: str | None = None) -> Iterator[None]:
    """Turn a failure to load a stage's model into one line that says which model, where it was
    looked for and how to point the configuration elsewhere (the traceback stays under -v).

    A hub id that is not cached, with no network, fails in seconds instead of after the hub
    client's retries."""
    try:
        if not os.environ.get("HF_HUB_OFFLINE") and _needs_hub(model, revision) and not hub_reachable():
            raise ConnectionError("the Hugging Face hub cannot be reached (no network?) and the model is not cached")
        yield
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300].rstrip(".")
        local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
        if local:
            where = f"the local path {model}"
        else:
            home = os.environ.get("HF_HOME", "~/.cache/huggingface")
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            where = f"the Hugging Face hub id {model!r} (revision {revision or 'default'}; cache {home}{offline})"
        raise UsageError(
            f"{stage}: cannot load the model from {where}: {type(e).__name__}: {first}. Download it, or set "
            f"`{stage}.model` in params.yaml to a local directory; `--profile tiny` runs offline with small "
            "random-weight models."
        ) from e


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]



def to_device(tensor: Any, device: str) -> Any:
    """A CPU tensor on the model's device. On CUDA the copy goes from pinned (page-locked) memory and
    does not block: the host goes on queueing work while it runs (the stream orders the kernels that
    read it)."""
    if not str(device).startswith("cuda"):
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@contextmanager
def inference(cfg: Any) -> Iterator[None]:
    """A model call: inference mode, with TF32 exactly as the stage config says (`tf32`, default
    off). torch turns cuDNN's TF32 on by default, so without this a GPU's convolutions would round
    differently from a CPU's under one fingerprint; the flags are put back afterwards."""
    import torch

    tf32 = bool(getattr(cfg, "tf32", False))
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# The backends register themselves on import (after the registries above exist).
from pipeline.models import captioners, clip, grounders, groundingdino_py  # noqa: E402, F401
