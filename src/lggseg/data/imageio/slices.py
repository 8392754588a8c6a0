"""2-D slice files (tif, png) of the `images/` + `masks/` layout: read with the size checked before decoding."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from lggseg.data import tiff_guard
from lggseg.data.imageio.base import MAX_SIDE, ImageFormatError

SLICE_SUFFIXES = (".tif", ".tiff", ".png")


def is_slice_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SLICE_SUFFIXES


def read_slice_file(path: Path, name: str | Path | None = None) -> np.ndarray:
    """The pixels of a tif (tiff_guard: header first) or png (Pillow: size first), or ImageFormatError."""
    name = name or path
    if path.suffix.lower() != ".png":
        try:
            return tiff_guard.read_tiff(path, name)
        except tiff_guard.TiffRefusedError as exc:
            raise ImageFormatError(str(exc)) from None
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if max(image.size) > MAX_SIDE:
                    raise ImageFormatError(f"{name}: declares {image.size[0]} x {image.size[1]} pixels, more than the "
                                           f"{MAX_SIDE} per side a slice may have; refused")
                array = np.asarray(image.convert("RGB") if image.mode in ("P", "RGBA", "LA") else image)
    except ImageFormatError:
        raise
    except Exception as exc:  # Pillow: UnidentifiedImageError, truncated data, bombs
        raise ImageFormatError(f"{name}: not a readable png ({type(exc).__name__})") from None
    return array


def as_three_channels(image: np.ndarray, name: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 in the data set's channel order; a grayscale slice is FLAIR, copied into the other two
    channels as the data set did for its patients without them."""
    if image.dtype != np.uint8:
        raise ImageFormatError(f"{name}: pixel type {image.dtype}, expected uint8 (0-255) like the data set's slices")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageFormatError(f"{name}: image of shape {image.shape}, expected H x W (FLAIR) or H x W x 3 "
                               "(pre-contrast, FLAIR, post-contrast) uint8")
    return image
