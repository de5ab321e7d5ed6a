"""Image decoding and resizing shared by every stage (training, export calibration, device).

One decoder and one resize, so the pixels a model sees on a Raspberry Pi are the pixels it
was trained on.

Resize: Pillow's ``BILINEAR`` filter (a triangle filter whose support widens with the
downscale factor, so downscaling is antialiased), applied to the decoded 8-bit RGB image,
result rounded back to uint8. No cropping: SDSS cutouts are square and centred; a
non-square image is stretched to the square size.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

RESIZE_FILTER = Image.Resampling.BILINEAR


class ImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    16-bit and 32-bit greyscale ("I;16", "I") are scaled from their full range, not
    clipped at 255 as Pillow's own ``convert("L")`` would do; alpha is composited on
    black (the sky's colour), palette and CMYK go through Pillow's conversions.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=1.0)), 1e-12)
        grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def read_rgb(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode a JPEG or PNG (any mode) to an RGB uint8 array of shape (H, W, 3).

    Args:
        source: a file path or the encoded bytes.

    Returns:
        A new, writable uint8 array (H, W, 3).

    Raises:
        ImageError: the file is missing, truncated, corrupt or not an image.
    """
    return decode(source)[0]


def decode(source: str | os.PathLike | bytes) -> tuple[np.ndarray, str]:
    """``read_rgb`` that also says the file's own Pillow mode (``RGB``, ``L``, ``I;16``, ...),
    so a caller can tell which images were converted.

    Raises:
        ImageError: as ``read_rgb``.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except OSError as exc:
        raise ImageError(f"{name}: cannot open image ({exc.strerror or exc})") from exc
    try:
        with stream, Image.open(stream) as img:
            img.load()
            mode = img.mode
            rgb = _to_rgb(img)
            arr = np.array(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # a header claiming far more pixels than a cutout
        raise ImageError(f"{name}: refused, its header claims too many pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable JPEG/PNG image ({exc})") from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name}: decoded to shape {arr.shape}, expected (H, W, 3)")
    return arr, mode


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to ``size`` (an int for square, or (height, width)).

    Returns a new array; the input is returned as a copy when it already has that size.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"resize expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if image.shape[:2] == (height, width):
        return image.copy()
    out = Image.fromarray(image, "RGB").resize((width, height), RESIZE_FILTER)
    return np.array(out, dtype=np.uint8)


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to RGB uint8 and resize it to ``size`` if given."""
    image = read_rgb(path)
    return image if size is None else resize(image, size)


def is_jpeg(data: bytes) -> bool:
    """True when ``data`` starts with the JPEG SOI marker and ends with EOI."""
    return len(data) > 4 and data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only: the order of
    ``resize``'s size and of numpy's image shapes.

    Raises:
        ImageError: missing, not an image, or a header claiming a decompression bomb's size.
    """
    try:
        with Image.open(Path(path)) as img:
            return img.height, img.width
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused, its header claims too many pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
