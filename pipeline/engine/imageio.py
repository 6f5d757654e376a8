"""Decoding image files into RGB, safely, with one documented rule for every odd case.

The format is decided from the bytes (Pillow's content sniffing), never from the extension.
Rules, applied in this order:
1. The file must be identified by Pillow from its content; otherwise the error names the cause.
2. Decompression bombs: above `max_pixels` pixels the file is rejected (Pillow's warning is raised
   as an error, so nothing between the warning and the hard limit slips through).
3. Multi-frame files (animated GIF/APNG/WebP, multi-page TIFF): the first frame is used.
4. The first frame is fully decoded; truncated or corrupt data is an error, never a partial image.
5. EXIF orientation is applied, so boxes and crops refer to the image as a viewer shows it.
6. Conversion to 8-bit RGB: 16-bit and 32-bit integer images are scaled by their bit depth,
   float images (PFM) are clipped to [0, 1]; CMYK and LAB are converted by Pillow; an alpha
   channel (or palette transparency) is composited onto white.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.engine.errors import RowError

# Pillow's own default; configurable per run through ingest.max_image_pixels (stages/ingest.py).
DEFAULT_MAX_PIXELS = 89_478_485


class ImageDecodeError(RowError, ValueError):
    """A file that cannot become an RGB image: `kind` for the error row's `error_kind`, `str(err)` for
    its message."""


@dataclass(frozen=True)
class ImageInfo:
    """What ingest records of a decodable file."""

    format: str
    width: int
    height: int
    mode: str
    n_frames: int
    jpeg_quality: int | None = None  # estimated from the luminance quantisation table (JPEG only)


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, ImageInfo]:
    """Decode file bytes into an RGB image following the module's rules.

    Raises:
        ImageDecodeError: with a readable reason (empty, not an image, bomb, truncated, ...).
    """
    if not data:
        raise ImageDecodeError("empty_file")
    # Pillow's limit is a module global; set it for this call (stage runs decode in one config).
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's per-file chatter (odd tags, EXIF) is not an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            info = ImageInfo(
                img.format or "unknown", img.width, img.height, img.mode, getattr(img, "n_frames", 1), jpeg_quality(img)
            )
            _check_size(img, max_pixels)
            img.load()  # a freshly opened file sits on its first frame
            rgb = _to_rgb(_upright(img))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(*_unidentified_reason(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError("decompression_bomb", str(e)) from None
    except MemoryError:
        raise ImageDecodeError("decompression_bomb", "out of memory while decoding") from None
    except OSError as e:
        if "cannot find loader" in str(e):
            detail = f"{info.format}: {e} (Pillow has no decoder for it here)"
            raise ImageDecodeError("unsupported_format", detail) from None
        raise ImageDecodeError("corrupt_image", f"{type(e).__name__}: {e}") from None
    except Exception as e:  # any decoder failure is this file's problem, reported on its row
        raise ImageDecodeError("corrupt_image", f"{type(e).__name__}: {e}") from None
    return rgb, info


def _upright(img: Image.Image) -> Image.Image:
    """The image as it should be shown (EXIF orientation applied). exif_transpose copies the image even
    when there is nothing to turn (a fifth of the decode time of a 1 MP JPEG): only call it when needed."""
    if img.getexif().get(ExifTags.Base.Orientation) not in (2, 3, 4, 5, 6, 7, 8):
        return img  # no tag, the identity, or a value exif_transpose ignores too
    return ImageOps.exif_transpose(img) or img


# Containers Pillow cannot open without a plugin, recognised by their leading bytes.
_NEEDS_PLUGIN = {
    b"heic": "HEIF/HEIC",
    b"heix": "HEIF/HEIC",
    b"hevc": "HEIF/HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
}


def _unidentified_reason(data: bytes) -> tuple[str, str]:
    if data[4:8] == b"ftyp" and data[8:12] in _NEEDS_PLUGIN:
        plugin = "needs the pillow-heif plugin (pip install pillow-heif)"
        return "unsupported_format", f"{_NEEDS_PLUGIN[data[8:12]]}: {plugin}"
    return "not_an_image", "Pillow cannot identify the format from the bytes"


# libjpeg's standard luminance table (quality 50); a file's table is this one scaled by its quality.
_STANDARD_LUMA = (
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
)


def jpeg_quality(img: Image.Image) -> int | None:
    """The libjpeg quality (1-100) a JPEG was saved at, estimated from its luminance table."""
    tables = getattr(img, "quantization", None)
    if img.format != "JPEG" or not tables or 0 not in tables:
        return None
    scale = 100.0 * sum(tables[0]) / sum(_STANDARD_LUMA)
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(max(round(quality), 1), 100))


def _check_size(img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError("invalid_dimensions", f"{w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError("decompression_bomb", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _scale_to_l(img).convert("RGB")
    if mode == "LAB":
        return ImageCms.applyTransform(
            img, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        )
    if mode == "P" and "transparency" in img.info or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _scale_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image -> 8-bit L by its value range."""
    arr = np.asarray(img)
    if img.mode == "F":
        scaled = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0
    else:
        top = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        scaled = np.clip(arr.astype(np.float64), 0, top) * (255.0 / top)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def load_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, image_id: str | None = None) -> Image.Image:
    """Read a file (or any location: archive member, Parquet row, URL) and decode it to RGB (same rules
    as `decode`).

    With `image_id`, the bytes read must be that image's (their sha256): a row is never computed from
    bytes other than the ones its id names, so a file replaced after ingest is an error, not a feature.
    """
    from pipeline.engine import locations

    return _checked_decode(path, locations.read_many([path])[0], image_id, max_pixels)


def read_error_kind(error: OSError) -> str:
    """The row error kind of a failed read."""
    if isinstance(error, FileNotFoundError):
        return "file_missing"
    if isinstance(error, TimeoutError):
        return "read_timeout"
    return getattr(error, "kind", "unreadable_file")  # a LocationError says which


def _checked_decode(path: str, data: bytes | OSError, image_id: str | None, max_pixels: int) -> Image.Image:
    if isinstance(data, OSError):
        hint = " (moved? ingest it from its new place)" if isinstance(data, FileNotFoundError) else ""
        raise ImageDecodeError(read_error_kind(data), f"{type(data).__name__}: {data.strerror or data}{hint}")
    if image_id is not None and hashlib.sha256(data).hexdigest() != image_id:
        raise ImageDecodeError(
            "file_changed",
            f"{path} no longer holds the bytes of this image; re-ingest it "
            "(`item ingest` gives the new content its own image_id)",
        )
    return decode(data, max_pixels)[0]


def _decode_or_error(
    path: str, data: bytes | OSError, image_id: str, max_pixels: int
) -> Image.Image | ImageDecodeError:
    try:
        return _checked_decode(path, data, image_id, max_pixels)
    except ImageDecodeError as e:
        return e


def load_images(
    paths: list[str], image_ids: list[str], max_pixels: int, threads: int, limits: Any = None
) -> list[Image.Image | ImageDecodeError]:
    """RGB images for `paths` in order, each checked against its image_id; bytes are read with one open
    per container (a tar shard, a Parquet file), then decoded in threads. A file that fails
    (unreadable, changed since ingest, undecodable) gives its error in its place."""
    from pipeline.engine import locations

    datas = locations.read_many(paths, limits or locations.LIMITS)
    args = (paths, datas, image_ids, [max_pixels] * len(paths))
    if threads <= 1 or len(paths) <= 1:
        return list(map(_decode_or_error, *args))
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(_decode_or_error, *args))
