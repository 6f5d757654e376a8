"""Content keys: every row of every stage is keyed by the sha256 of the image file's bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def image_id_of_bytes(data: bytes) -> str:
    """The image_id of a file's content: its sha256, lower-case hex (64 characters)."""
    return hashlib.sha256(data).hexdigest()


def read_with_id(path: str | Path) -> tuple[bytes, str]:
    """Read a file whole and return its bytes and image_id."""
    data = Path(path).read_bytes()
    return data, image_id_of_bytes(data)


def short_hash(text: str, length: int = 12) -> str:
    """A short, stable hex digest of a string (used for configuration fingerprints)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def is_image_id(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
