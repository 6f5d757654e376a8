"""Decoding rules: format from bytes, first frame, RGB conversion, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.engine.imageio import ImageDecodeError, decode


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_format_comes_from_bytes_not_name():
    data = encode(Image.new("RGB", (8, 6), (10, 20, 30)), "PNG")
    img, info = decode(data)
    assert info.format == "PNG" and (info.width, info.height) == (8, 6)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (10, 20, 30)


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img, _ = decode(encode(rgba, "PNG"))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    img, info = decode(encode(Image.fromarray(arr), "PNG"))
    assert info.mode.startswith("I")
    assert img.getpixel((0, 0)) == (128, 128, 128)


def test_animated_uses_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img, info = decode(buf.getvalue())
    assert info.n_frames == 2
    assert img.getpixel((0, 0))[0] > 200


def test_cmyk_becomes_rgb():
    img, _ = decode(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    r, g, b = img.getpixel((1, 1))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
        (encode(Image.new("RGB", (64, 64)), "PNG")[:60], "corrupt or truncated"),
    ],
)
def test_bad_bytes_give_readable_reasons(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode(data)


def test_decompression_bomb_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    decode(data, max_pixels=10_000)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode(data, max_pixels=9_999)


ORIENTATION = Path(__file__).resolve().parents[3] / "shared" / "data" / "odd" / "orientation"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_only_when_asked(orientation):
    """A picture stored turned, with the EXIF tag saying how to show it, decodes upright: equal to
    the same pixels stored upright; orientation 1 leaves the pixels alone."""
    upright = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3) * 3)
    # exif_transpose's inverse for each tag: how a camera would store the upright picture.
    stored = {
        1: upright,
        2: upright.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        3: upright.transpose(Image.Transpose.ROTATE_180),
        4: upright.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        5: upright.transpose(Image.Transpose.TRANSPOSE),
        6: upright.transpose(Image.Transpose.ROTATE_90),
        7: upright.transpose(Image.Transpose.TRANSVERSE),
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif)
    rgb, info = decode(buf.getvalue())
    assert np.array_equal(np.asarray(rgb), np.asarray(upright))
    assert (info.width, info.height) == stored.size  # the file's own dimensions are recorded


@pytest.mark.skipif(not ORIENTATION.is_dir(), reason="../shared/data/odd not beside the checkout")
def test_real_files_with_orientation_tags_decode_upright():
    for path in sorted(ORIENTATION.glob("hopper_orientation_*.jpg")):
        rgb, _ = decode(path.read_bytes())
        turned = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        assert np.array_equal(np.asarray(rgb), np.asarray(turned)), path.name
