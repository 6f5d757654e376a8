"""perturb: the paper's robustness grid (Fig. 4) as derived images that flow through every stage.

Gaussian noise sigma in {0.001, 0.005, 0.01}, on pixel values scaled to [0, 1] (sigma 0.01 is
2.55 grey levels), added per pixel and channel, then clipped and rounded back to 8 bits; Gaussian
blur sigma in {1, 2, 3} pixels (Pillow's GaussianBlur, whose radius is the standard deviation);
JPEG re-compression at quality {75, 50, 25} (libjpeg, 4:2:0). Real and fake images get the same
operations; the noise is seeded by (seed, source image_id, level), so the same run twice writes the
same bytes, and so the same image_ids. A derived image is a new image: its own image_id, with
`source_id` and `perturbation` (e.g. "jpeg:50") in the manifest; it keeps its source's label,
generator, dataset and split. Noise and blur results are stored as PNG (lossless), JPEG ones as JPEG.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageFilter

GRID: dict[str, tuple[float, ...]] = {"noise": (0.001, 0.005, 0.01), "blur": (1, 2, 3), "jpeg": (75, 50, 25)}


def label(kind: str, level: float) -> str:
    return f"{kind}:{level:g}"


def apply(image: Image.Image, kind: str, level: float, seed: int, source_id: str) -> tuple[bytes, str]:
    """The perturbed image's file bytes and extension."""
    buf = io.BytesIO()
    if kind == "noise":
        key = hashlib.sha256(f"{seed}:{source_id}:{level}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
        arr = np.asarray(image, dtype=np.float64) / 255.0
        noisy = np.clip(arr + rng.normal(0.0, level, arr.shape), 0.0, 1.0)
        Image.fromarray((noisy * 255.0).round().astype(np.uint8)).save(buf, format="PNG")
        return buf.getvalue(), "png"
    if kind == "blur":
        image.filter(ImageFilter.GaussianBlur(radius=level)).save(buf, format="PNG")
        return buf.getvalue(), "png"
    if kind == "jpeg":
        image.save(buf, format="JPEG", quality=int(level))
        return buf.getvalue(), "jpg"
    raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(GRID)}")
