"""Image loading shared by the model stages: decoded in threads, errors returned in place."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from pipeline.config import PipelineConfig
from pipeline.imageio import ImageDecodeError, load_rgb


def _load(path: str, max_pixels: int) -> Image.Image | ImageDecodeError:
    try:
        return load_rgb(path, max_pixels)
    except ImageDecodeError as e:
        return e


def load_images(paths: list[str], config: PipelineConfig, threads: int) -> list[Image.Image | ImageDecodeError]:
    """RGB images for `paths` in order; a file that fails gives its ImageDecodeError in its place."""
    max_pixels = config.stage("ingest").max_image_pixels
    if threads <= 1 or len(paths) <= 1:
        return [_load(p, max_pixels) for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(_load, paths, [max_pixels] * len(paths)))
