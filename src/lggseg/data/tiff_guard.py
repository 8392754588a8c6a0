"""Header-first TIFF reading for every reader of slices (`index` for the data set, `predict` for new scans).

A TIFF says in its header how large it is; the pixels may be anything or nothing. A 1 kB file can declare
60000 x 60000 x 3 pixels, and decoding it allocates 10 GB before finding out there is no data. So the
header is read first (tifffile's TiffFile: pages, shape, dtype, without decoding) and a file that declares
more than a slice can be is refused, naming the file, its declared size and the limit; only then are the
pixels decoded.

Messages never quote the file's bytes (tifffile's own "not a TIFF file: header=b'...'" would echo the
first bytes of any file, a secret one included): they say what is wrong, not what is in it.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

MAX_SIDE = 4096
"""Most pixels along either side of a slice (the data set's are 256; scanners' up to 1024)."""
MAX_CHANNELS = 4
"""Most samples per pixel (the data set's slices have 3: pre-contrast, FLAIR, post-contrast; masks 1)."""
MAX_PAGES = 1
"""A slice is one image: multi-page TIFFs (stacks, pyramids) are refused rather than guessed at."""
MAX_DECODED_BYTES = 256 * 2**20
"""Most bytes one decoded slice may take (4096 x 4096 x 4 uint16 is 128 MiB)."""
MAX_FILE_BYTES = 2 * MAX_DECODED_BYTES
"""Largest file read into memory (predict hashes the bytes it decodes); compressed data is smaller."""


class TiffRefusedError(ValueError):
    """A TIFF that is not used; `detail` says why without the path, str() is `<name>: <detail>`."""

    kind = "unreadable_tif"

    def __init__(self, name: str | Path, detail: str):
        super().__init__(f"{name}: {detail}")
        self.name, self.detail = str(name), detail


class UnreadableTiffError(TiffRefusedError):
    """Not a TIFF, damaged, truncated, not a regular file or not readable."""


class OversizedTiffError(TiffRefusedError):
    """The header declares more pixels, channels or pages than a slice can have."""

    kind = "oversized_tif"


@dataclass(frozen=True)
class TiffHeader:
    """What a TIFF declares about its first image series, read without decoding pixels."""

    pages: int
    width: int
    height: int
    channels: int  # samples per pixel
    depth: int  # > 1 only for volumetric (SGI image depth) tiles
    shape: tuple[int, ...]  # of the series tifffile would decode
    dtype: np.dtype

    @property
    def decoded_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


def read_tiff(source: Path | bytes, name: str | Path | None = None) -> np.ndarray:
    """The pixels of the one-image TIFF at `source` (a path, or the file's bytes), header checked first.

    Raises UnreadableTiffError or OversizedTiffError naming `name` (default: the path)."""
    if name is None:
        if isinstance(source, bytes):
            raise TypeError("read_tiff of bytes needs the name of the file they came from")
        name = source
    if not isinstance(source, bytes):
        _check_regular_file(source, name)  # opening a FIFO named like a slice would block for ever
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with tifffile.TiffFile(handle) as tif:
            header = read_header(tif)
            check_header(header, name)
            return tif.asarray()
    except TiffRefusedError:
        raise
    except Exception as exc:  # tifffile and its codecs raise many types for damaged files
        raise UnreadableTiffError(name, f"cannot read as TIFF ({_why_unreadable(exc)}); the file is damaged, "
                                        "truncated or not a TIFF") from None


def read_header(tif: tifffile.TiffFile) -> TiffHeader:
    """Pages, sizes and pixel type as the file declares them (nothing is decoded)."""
    page = tif.pages.first
    series = tif.series[0]
    if series.dtype is None:
        raise ValueError("unsupported sample format")
    return TiffHeader(pages=len(tif.pages), width=int(page.imagewidth), height=int(page.imagelength),
                      channels=int(page.samplesperpixel), depth=int(page.imagedepth),
                      shape=tuple(int(n) for n in series.shape), dtype=np.dtype(series.dtype))


def check_header(header: TiffHeader, name: str | Path) -> None:
    """Refuse a header that declares more than a slice can be (see the MAX_* limits)."""
    page_pixels = header.width * header.height * header.channels * header.depth
    series_pixels = int(np.prod(header.shape, dtype=object))
    too_big = (header.pages > MAX_PAGES or header.width > MAX_SIDE or header.height > MAX_SIDE
               or header.channels > MAX_CHANNELS or header.depth > 1 or series_pixels > page_pixels
               or header.decoded_bytes > MAX_DECODED_BYTES)
    if too_big:
        raise OversizedTiffError(name, (
            f"the TIFF declares {header.width}x{header.height} pixels, {header.channels} channel(s)"
            f"{f', depth {header.depth}' if header.depth > 1 else ''}, {header.pages} page(s), shape "
            f"{'x'.join(map(str, header.shape))} {header.dtype} ({header.decoded_bytes / 2**20:.0f} MiB decoded); "
            f"a slice may have at most {MAX_SIDE}x{MAX_SIDE} pixels, {MAX_CHANNELS} channels, {MAX_PAGES} page "
            f"and {MAX_DECODED_BYTES // 2**20} MiB: refused before decoding"))


def read_file_bytes(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES (a FIFO or device would block or never end)."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer (no effect on files)
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UnreadableTiffError(path, "not a regular file (a device, FIFO or folder): refused")
            if info.st_size > MAX_FILE_BYTES:
                raise OversizedTiffError(path, f"file of {info.st_size / 2**20:.0f} MiB; a slice file may have at "
                                               f"most {MAX_FILE_BYTES // 2**20} MiB: refused")
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UnreadableTiffError(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None


def _check_regular_file(path: Path, name: str | Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UnreadableTiffError(name, f"cannot read ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(mode):
        raise UnreadableTiffError(name, "not a regular file (a device, FIFO or folder): refused")


def _why_unreadable(exc: Exception) -> str:
    """A reason that quotes nothing from the file (tifffile's messages may hold its first bytes)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, tifffile.TiffFileError) and str(exc).startswith("not a TIFF file"):
        return "no TIFF header"
    return type(exc).__name__
