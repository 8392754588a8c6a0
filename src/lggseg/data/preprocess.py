"""Slices -> fixed-size uint8 arrays per split that later stages open by memory map.

`prepare_image` / `prepare_mask` are the per-slice transforms; inference (`lggseg predict`) calls
the same functions so that a model always sees what it was trained on. Values stay uint8 on disk
(4x smaller than float32); `to_model_input` scales them to [0, 1] on load.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from lggseg.core.atomic import staged_dir, write_json
from lggseg.core.config import DataConfig, PreprocessConfig
from lggseg.core.diskspace import block_size, on_disk, require_free_space
from lggseg.core.paths import SPLITS, Paths
from lggseg.data.dataset_layouts import nifti_case_volumes, read_slice_pair
from lggseg.data.imageio.base import FLAIR_CHANNEL  # channel order: pre-contrast, FLAIR, post-contrast
from lggseg.data.layout import detect_layout
from lggseg.data.provenance import NOT_RECORDED, recorded_source
from lggseg.data.split import check_no_leak, slices_for

log = logging.getLogger(__name__)

SPLIT_FILES = ("images.npy", "masks.npy", "slices.csv")


def prepare_image(image: np.ndarray, size: int, channels: str) -> np.ndarray:
    """(H, W, 3) uint8 slice -> (size, size, C) uint8; C = 3 for `all`, 1 for `flair`."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if channels == "flair":
        image = image[:, :, FLAIR_CHANNEL : FLAIR_CHANNEL + 1]
    if image.shape[:2] != (size, size):
        shrinking = size < image.shape[0]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interpolation)
        if image.ndim == 2:  # cv2 drops a single channel axis
            image = image[:, :, None]
    return np.ascontiguousarray(image, dtype=np.uint8)


def prepare_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) mask with values 0/255 or 0/1 -> (size, size) uint8 in {0, 1} (nearest neighbour)."""
    binary: np.ndarray = (mask > 0).astype(np.uint8)
    if binary.shape != (size, size):
        binary = cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)
    return binary


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def flair_view(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> the FLAIR channel (N, H, W), whether C is 3 (all) or 1 (flair only)."""
    return images[..., FLAIR_CHANNEL] if images.shape[-1] == 3 else images[..., 0]


def preprocess_dataset(
    slices: pd.DataFrame, splits: dict, dataset_root: Path, out_dir: Path, cfg: PreprocessConfig, workers: int = 4,
    data: DataConfig | None = None,
) -> dict:
    """Write `out_dir/<split>/{images.npy, masks.npy, slices.csv}` and `out_dir/manifest.json` atomically.
    `data` says the data set's layout (data.layout, data.nifti); default: the Kaggle layout."""
    data = data or DataConfig(layout="kaggle")
    layout = detect_layout(dataset_root, data.layout)
    check_no_leak({name: splits[name] for name in SPLITS})
    manifest: dict = {"size": cfg.size, "channels": cfg.channels, "in_channels": cfg.in_channels, "layout": layout,
                      "splits": {},
                      "data_source": recorded_source(dataset_root) or NOT_RECORDED}  # what training records
    rows_of = {name: slices_for(slices, splits[name]) for name in SPLITS}
    # the arrays are memory maps: a page written to a full disk kills the process (SIGBUS), so the space
    # is checked here and then reserved per file (`_reserved_array`) before anything is written
    require_free_space(out_dir.parent, _bytes_needed(rows_of, cfg, block_size(out_dir.parent)),
                       f"{out_dir} ({', '.join(f'{n} {len(r)}' for n, r in rows_of.items())} slices at "
                       f"{cfg.size}x{cfg.size}x{cfg.in_channels} uint8)")
    with staged_dir(out_dir) as staging:
        for name in SPLITS:
            rows = rows_of[name]
            manifest["splits"][name] = _write_split(rows, dataset_root, staging / name, cfg, workers, layout, data)
        manifest["fingerprint"] = hashlib.sha256(
            "".join(manifest["splits"][n]["sha256"] for n in SPLITS).encode()
        ).hexdigest()[:16]
        write_json(staging / "manifest.json", manifest)
    return manifest


NPY_HEADER_BYTES = 128  # what np.lib.format writes before the data of a small-shaped array
MANIFEST_BYTES = 4096


def _bytes_needed(rows_of: dict[str, pd.DataFrame], cfg: PreprocessConfig, block: int) -> int:
    """What the output folder will occupy: per split the two arrays and slices.csv, and the manifest."""
    sizes = [MANIFEST_BYTES]
    for rows in rows_of.values():
        pixels = len(rows) * cfg.size * cfg.size
        sizes += [NPY_HEADER_BYTES + pixels * cfg.in_channels, NPY_HEADER_BYTES + pixels,
                  len(rows.to_csv(index=False).encode())]
    return on_disk(sizes, block)


def _reserved_array(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A uint8 .npy memory map whose disk blocks are allocated up front: a full disk is an OSError (ENOSPC)
    here, never a SIGBUS later when a page of the map is written."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):  # not on macOS / Windows: the free-space check is all there
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        finally:
            os.close(fd)
    return array


def _write_split(rows: pd.DataFrame, dataset_root: Path, split_dir: Path, cfg: PreprocessConfig, workers: int,
                 layout: str, data: DataConfig) -> dict:
    split_dir.mkdir(parents=True)
    n, size, c = len(rows), cfg.size, cfg.in_channels
    images = _reserved_array(split_dir / "images.npy", (n, size, size, c))
    masks = _reserved_array(split_dir / "masks.npy", (n, size, size))

    def load(i: int) -> None:
        row = rows.iloc[i]
        if layout == "slices":
            image, mask = read_slice_pair(dataset_root, row)
        else:
            image, mask = tifffile.imread(dataset_root / row["image_path"]), tifffile.imread(dataset_root / row["mask_path"])
        images[i] = prepare_image(image, size, cfg.channels)
        masks[i] = prepare_mask(mask, size)

    def load_case(case: str) -> None:  # a NIfTI case is read once for all its slices
        volume = cases[case].read(data.nifti.lesion_labels)
        assert volume.masks is not None
        for i in np.flatnonzero(rows["patient_id"].to_numpy() == case):
            k = int(rows.iloc[i]["slice"]) - 1
            images[i] = prepare_image(volume.images[k], size, cfg.channels)
            masks[i] = prepare_mask(volume.masks[k], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        if layout == "nifti":
            cases = nifti_case_volumes(dataset_root)
            list(pool.map(load_case, rows["patient_id"].unique()))
        else:
            list(pool.map(load, range(n)))
    digest = hashlib.sha256()
    for array in (images, masks):
        array.flush()
        digest.update(np.ascontiguousarray(array).data.cast("B"))
    rows.to_csv(split_dir / "slices.csv", index=False)
    digest.update((split_dir / "slices.csv").read_bytes())
    return {"slices": n, "patients": int(rows["patient_id"].nunique()), "sha256": digest.hexdigest()}


def load_split(processed_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Memory-mapped (images N x H x W x C uint8, masks N x H x W uint8) and the slice table of a split."""
    split_dir = Path(processed_dir) / split
    missing = [f for f in SPLIT_FILES if not (split_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{split_dir}: missing {', '.join(missing)} (run the preprocess stage)")
    images = np.load(split_dir / "images.npy", mmap_mode="r")
    masks = np.load(split_dir / "masks.npy", mmap_mode="r")
    table = pd.read_csv(split_dir / "slices.csv")
    if not len(images) == len(masks) == len(table):
        raise ValueError(f"{split_dir}: images, masks and slices.csv disagree in length")
    return images, masks, table


def processed_manifest(paths: Paths) -> dict:
    """data/processed/manifest.json: what preprocess wrote and with which settings."""
    manifest_path = paths.processed / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing (run the preprocess stage)")
    return json.loads(manifest_path.read_text())
