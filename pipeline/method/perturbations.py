"""perturb: the paper's robustness grid (Fig. 4) as derived images that flow through every stage.

Gaussian noise sigma in {0.001, 0.005, 0.01}, on pixel values scaled to [0, 1] (sigma 0.01 is
2.55 grey levels), added per pixel and channel, then clipped and rounded back to 8 bits (`noise`:
sigma is the standard deviation, as the symbol reads: at 0.001 about 5% of pixels change by one
grey level; `noise_var`: the same levels read as variances, std = sqrt(level), 0.03 to 0.1 of the
range, as code built on skimage's `random_noise(var=...)` would apply them; docs/method.md); Gaussian
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

# The paper's grid (Fig. 4), levels from mildest to strongest.
GRID: dict[str, tuple[float, ...]] = {"noise": (0.001, 0.005, 0.01), "blur": (1, 2, 3), "jpeg": (75, 50, 25)}
# Other readings of the grid, asked for by name (`item perturb --kinds noise_var,blur,jpeg`).
VARIANTS: dict[str, tuple[float, ...]] = {"noise_var": GRID["noise"]}
KINDS: dict[str, tuple[float, ...]] = {**GRID, **VARIANTS}


def label(kind: str, level: float) -> str:
    return f"{kind}:{level:g}"


def apply(image: Image.Image, kind: str, level: float, seed: int, source_id: str) -> tuple[bytes, str]:
    """The perturbed image's file bytes and extension."""
    buf = io.BytesIO()
    if kind in ("noise", "noise_var"):
        key = hashlib.sha256(f"{seed}:{source_id}:{level}".encode()).digest()  # one draw for both readings
        rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
        arr = np.asarray(image, dtype=np.float64) / 255.0
        std = level if kind == "noise" else float(np.sqrt(level))
        noisy = np.clip(arr + rng.normal(0.0, std, arr.shape), 0.0, 1.0)
        Image.fromarray((noisy * 255.0).round().astype(np.uint8)).save(buf, format="PNG")
        return buf.getvalue(), "png"
    if kind == "blur":
        image.filter(ImageFilter.GaussianBlur(radius=level)).save(buf, format="PNG")
        return buf.getvalue(), "png"
    if kind == "jpeg":
        image.save(buf, format="JPEG", quality=int(level))
        return buf.getvalue(), "jpg"
    raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(KINDS)}")
