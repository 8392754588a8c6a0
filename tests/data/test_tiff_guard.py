"""Header-first TIFF checks (lggseg.data.tiff_guard): small files that declare huge images are refused
before any pixel is decoded, by every reader (index here, predict in tests/test_predict_safety.py)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.data import tiff_guard
from lggseg.data.layout import DatasetError

SECRET = "s3cr:$6$Zq9v1/hash-of-the-admin:19000:0:99999:7:::\n"  # /etc/shadow-like


def declared_tif(path: Path, width: int, height: int, channels: int = 3, dtype=np.uint8) -> Path:
    """A tiny TIFF (a 16 x 16 image's bytes) whose header declares `width` x `height` pixels: what an
    attacker sends. Decoding it would allocate the declared size before finding the data missing."""
    tifffile.imwrite(path, np.zeros((16, 16, channels) if channels > 1 else (16, 16), dtype))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages.first.tags
        tags["ImageWidth"].overwrite(width)
        tags["ImageLength"].overwrite(height)
    return path


def many_channels(path: Path) -> Path:
    tifffile.imwrite(path, np.zeros((16, 16, 6), np.uint8), photometric="minisblack", planarconfig="contig")
    return path


def two_pages(path: Path) -> Path:
    with tifffile.TiffWriter(path) as tif:
        for _ in range(2):
            tif.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    return path


# (builder, what the message must say of the declared size)
BOMBS = {
    "20000x20000x3": (lambda p: declared_tif(p, 20000, 20000), "20000x20000 pixels"),
    "60000x60000x3": (lambda p: declared_tif(p, 60000, 60000), "60000x60000 pixels"),
    "too_wide": (lambda p: declared_tif(p, 5000, 16), "5000x16 pixels"),
    "too_tall": (lambda p: declared_tif(p, 16, 5000), "16x5000 pixels"),
    "six_channels": (many_channels, "6 channel(s)"),
    "two_pages": (two_pages, "2 page(s)"),
    # every side within the limit, but 4096 x 4096 x 4 float64 is 512 MiB decoded
    "too_many_bytes": (lambda p: declared_tif(p, 4096, 4096, 4, np.float64), "512 MiB decoded"),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_header_declaring_more_than_a_slice_is_refused_before_decoding(tmp_path, bomb):
    build, declared = BOMBS[bomb]
    path = build(tmp_path / "TCGA_XX_0001_1.tif")
    assert path.stat().st_size < 20_000  # the file is small; what it declares is not
    tracemalloc.start()
    try:
        with pytest.raises(tiff_guard.OversizedTiffError) as err:
            tiff_guard.read_tiff(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert message.startswith(f"{path}: the TIFF declares ") and declared in message and "\n" not in message
    assert "at most 4096x4096 pixels, 4 channels, 1 page and 256 MiB" in message
    assert peak < 20 * 2**20  # nothing near the declared size was allocated


def test_a_slice_within_the_limits_reads_as_tifffile_reads_it(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", pixels, compression="zlib")
    np.testing.assert_array_equal(tiff_guard.read_tiff(tmp_path / "a.tif"), pixels)
    np.testing.assert_array_equal(tiff_guard.read_tiff((tmp_path / "a.tif").read_bytes(), "a.tif"), pixels)


@pytest.mark.parametrize("content", [SECRET.encode(), b"II*\x00" + SECRET.encode(), b"MM\x00*" + SECRET.encode()])
def test_an_unreadable_file_is_named_without_quoting_its_bytes(tmp_path, content):
    path = tmp_path / "x_1.tif"
    path.write_bytes(content)
    with pytest.raises(tiff_guard.UnreadableTiffError) as err:
        tiff_guard.read_tiff(path)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read as TIFF")
    for fragment in ("s3cr", "admin", "$6$", "Zq9v1"):  # tifffile alone would quote the first bytes
        assert fragment not in message


def test_a_fifo_named_like_a_slice_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "x_1.tif"
    os.mkfifo(fifo)
    with pytest.raises(tiff_guard.UnreadableTiffError, match="not a regular file"):
        tiff_guard.read_tiff(fifo)
    with pytest.raises(tiff_guard.UnreadableTiffError, match="not a regular file"):
        tiff_guard.read_file_bytes(fifo)


# -- index: strict refuses, lenient drops and lists (as unreadable files are) -------------------------


def plant_bomb(paths: Paths) -> Path:
    patient = sorted(p for p in paths.dataset.iterdir() if p.is_dir())[0]
    return declared_tif(patient / f"{patient.name}_5.tif", 60000, 60000)


def test_strict_index_refuses_a_bomb_naming_it_and_keeps_old_output(project):
    cfg = tiny_config()
    pipeline.index(cfg, project)
    good = project.slices_csv.read_bytes()
    bomb = plant_bomb(project)
    with pytest.raises(DatasetError) as err:
        pipeline.index(cfg, project)
    message = str(err.value)
    assert "(oversized_tif)" in message and f"{bomb.parent.name}/{bomb.name}: the TIFF declares 60000x60000" in message
    assert "data.index.strict: false" in message
    assert project.slices_csv.read_bytes() == good


def test_lenient_index_drops_and_lists_a_bomb(project):
    bomb = plant_bomb(project)
    pipeline.index(tiny_config("data.index.strict=false"), project)
    dropped = pd.read_csv(project.dropped_csv)
    row = dropped[dropped["path"].str.endswith(bomb.name)]
    assert row["kind"].tolist() == ["oversized_tif"] and "60000x60000" in row["detail"].item()
    assert not pd.read_csv(project.slices_csv)["image_path"].str.endswith(bomb.name).any()
