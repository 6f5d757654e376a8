"""Content keys: every row of every stage is keyed by the sha256 of the image file's bytes."""

from __future__ import annotations

import hashlib


def image_id_of_bytes(data: bytes) -> str:
    """The image_id of a file's content: its sha256, lower-case hex (64 characters)."""
    return hashlib.sha256(data).hexdigest()


def short_hash(text: str, length: int = 12) -> str:
    """A short, stable hex digest of a string (used for configuration fingerprints)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
