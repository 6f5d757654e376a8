"""A synthetic image set for the demo and tests, made in code (nothing downloaded).

Real images are smooth random scenes (a sky gradient, ground, soft blobs, mild sensor noise).
Fake images are drawn from the same scene generator and then carry a generator's artifact:
`toygan` a periodic checkerboard from transposed-convolution upsampling, `toydiff` an over-smoothed,
over-saturated look. A detector can learn either difference; the tiny profile's random-weight
models turn it into features the head separates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SIZE = 256
GENERATORS = ("toygan", "toydiff")


def scene(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A smooth random RGB scene, float in [0, 1], shape (size, size, 3)."""
    y, x = np.mgrid[0:size, 0:size] / size
    horizon = rng.uniform(0.3, 0.7)
    sky = rng.uniform(0.4, 1.0, 3) * (1 - 0.5 * y[..., None])
    ground = rng.uniform(0.1, 0.6, 3) * (0.7 + 0.3 * y[..., None])
    img = np.where((y < horizon)[..., None], sky, ground)
    for _ in range(rng.integers(2, 6)):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.9), rng.uniform(0.05, 0.2)
        mask = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r**2)))[..., None]
        img = img * (1 - mask) + rng.uniform(0, 1, 3) * mask
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def add_artifact(img: np.ndarray, generator: str, rng: np.random.Generator) -> np.ndarray:
    if generator == "toygan":
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        checker = (((yy // 2) + (xx // 2)) % 2) * 2 - 1
        return np.clip(img + 0.25 * checker[..., None] * rng.uniform(0.8, 1.2), 0, 1)
    if generator == "toydiff":
        pil = Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(5))
        smooth = np.asarray(pil, dtype=np.float64) / 255
        mean = smooth.mean(axis=2, keepdims=True)
        return np.clip(mean + 2.5 * (smooth - mean), 0, 1)
    raise ValueError(f"unknown demo generator {generator!r}")


def make_images(root: Path, n_per_class: int = 40, seed: int = 0) -> Path:
    """Write `root/<generator>/{0_real,1_fake}/NNNN.png` (skips files that already exist)."""
    for g_index, generator in enumerate(GENERATORS):
        for label, folder in enumerate(("0_real", "1_fake")):
            out = root / generator / folder
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                path = out / f"{i:04d}.png"
                if path.exists():
                    continue
                rng = np.random.default_rng([seed, g_index, label, i])
                img = scene(rng)
                if label == 1:
                    img = add_artifact(img, generator, rng)
                tmp = path.with_suffix(".tmp")
                Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp, format="PNG")
                tmp.replace(path)
    return root


def make_unseen(root: Path, n_per_class: int = 4, seed: int = 1) -> Path:
    """An unlabelled folder for predict: new scenes of both kinds, and one truncated file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_per_class):
        for label, generator in enumerate(("real", *GENERATORS)):
            path = root / f"{generator}-{i:02d}.png"
            if path.exists():
                continue
            rng = np.random.default_rng([seed, label, i])
            img = scene(rng)
            if generator != "real":
                img = add_artifact(img, generator, rng)
            Image.fromarray((img * 255).round().astype(np.uint8)).save(path, format="PNG")
    broken = root / "broken.png"
    if not broken.exists():
        broken.write_bytes((root / "real-00.png").read_bytes()[:300])
    return root
