"""New scans to segment (`lggseg predict`): one slice, one patient folder, or a folder of patient folders,
in the data set's naming (`<case>_<n>.tif`, optional `<case>_<n>_mask.tif` beside each image).

Everything is checked as it is read and a problem names its file: unreadable or truncated TIFFs,
images that are not H x W x 3 uint8 (H x W grayscale is read as FLAIR, for FLAIR-only models).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from lggseg.data.preprocess import FLAIR_CHANNEL

TIF_SUFFIXES = (".tif", ".tiff")
MASK_RE = re.compile(r"_mask$", re.IGNORECASE)
NUMBER_RE = re.compile(r"_(\d+)$")


class ScanError(ValueError):
    """An input scan cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class ScanSlice:
    image: Path
    mask: Path | None
    number: int | None  # n of `<case>_<n>.tif`; None when the name carries no number


@dataclass(frozen=True)
class PatientScan:
    case: str
    folder: Path
    slices: tuple[ScanSlice, ...]

    @property
    def slice_numbers(self) -> list[int]:
        """The n of each `<case>_<n>.tif`; position (from 1) for names without a number."""
        return [s.number if s.number is not None else i + 1 for i, s in enumerate(self.slices)]


@dataclass
class PatientImages:
    """A patient's slices as read, in slice order: (H, W, 3) uint8 images (sizes may differ)."""

    images: list[np.ndarray]
    masks: list[np.ndarray] | None  # {0, 1} uint8 per slice; None when Dice cannot be computed
    sha256: list[str]
    notes: list[str] = field(default_factory=list)
    grayscale: bool = False


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TIF_SUFFIXES and not MASK_RE.search(path.stem)


def find_patients(input_path: Path) -> tuple[list[PatientScan], bool]:
    """(patients, whether INPUT is a folder of patient folders). INPUT: one slice .tif, one patient
    folder, or a folder holding patient folders (the whole kaggle_3m/ works)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise ScanError(f"{input_path}: no such file or folder")
    if input_path.is_file():
        if not is_image_file(input_path):
            raise ScanError(f"{input_path}: not a slice image (expected <case>_<n>.tif, not a _mask.tif)")
        case = input_path.parent.name if input_path.stem.startswith(input_path.parent.name + "_") else input_path.stem
        return [PatientScan(case, input_path.parent, (_slice(input_path),))], False
    own = _patient_slices(input_path)
    if own:
        return [PatientScan(input_path.name, input_path, own)], False
    patients = [PatientScan(d.name, d, slices) for d in sorted(p for p in input_path.iterdir() if p.is_dir())
                if (slices := _patient_slices(d))]
    if not patients:
        raise ScanError(f"{input_path}: no .tif slices in it or in its sub-folders (expected <case>_<n>.tif)")
    return patients, True


def _patient_slices(folder: Path) -> tuple[ScanSlice, ...]:
    images = [p for p in folder.iterdir() if is_image_file(p)]
    slices = [_slice(p) for p in images]
    # slice numbers sort as numbers: _10 comes after _9
    return tuple(sorted(slices, key=lambda s: (s.number is None, s.number or 0, s.image.name)))


def _slice(image: Path) -> ScanSlice:
    number = NUMBER_RE.search(image.stem)
    mask = next((m for m in (image.with_name(f"{image.stem}_mask{s}") for s in TIF_SUFFIXES) if m.is_file()), None)
    return ScanSlice(image, mask, int(number.group(1)) if number else None)


def read_tif(path: Path) -> tuple[np.ndarray, str]:
    """(array, sha256 of the file) or ScanError naming the file."""
    try:
        data = Path(path).read_bytes()
        return tifffile.imread(io.BytesIO(data)), hashlib.sha256(data).hexdigest()
    except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError) as exc:
        raise ScanError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {str(exc)[:200]}); "
                        "the file is damaged or truncated") from None


def as_rgb_slice(image: np.ndarray, path: Path, flair_only: bool) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 for prepare_image, and whether the input was grayscale. Grayscale (H, W) is
    accepted for FLAIR-only models only: it is placed in the FLAIR channel."""
    if image.dtype != np.uint8:
        raise ScanError(f"{path}: pixel type {image.dtype}, expected uint8 (0-255) like the data set's slices")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if not flair_only:
            raise ScanError(f"{path}: grayscale {image.shape[0]}x{image.shape[1]} image, but the model was trained on "
                            "three channels (pre-contrast, FLAIR, post-contrast); only FLAIR-only models "
                            "(preprocess.channels: flair) accept grayscale slices")
        rgb = np.zeros((*image.shape, 3), dtype=np.uint8)
        rgb[:, :, FLAIR_CHANNEL] = image
        return rgb, True
    if image.ndim != 3 or image.shape[2] != 3:
        raise ScanError(f"{path}: image of shape {image.shape}, expected H x W x 3 (pre-contrast, FLAIR, "
                        "post-contrast) uint8")
    return image, False


def read_patient(scan: PatientScan, flair_only: bool) -> PatientImages:
    """Read and check every slice and mask of `scan`. A mask of another size than its image, or masks for
    only some slices, leave Dice out with a note (the prediction is still made)."""
    images, hashes, masks, notes = [], [], [], []
    grayscale = False
    mask_problem = None if all(s.mask for s in scan.slices) else (
        f"masks for {sum(s.mask is not None for s in scan.slices)} of {len(scan.slices)} slices: Dice skipped"
        if any(s.mask for s in scan.slices) else "no ground-truth masks")
    for item in scan.slices:
        image, digest = read_tif(item.image)
        image, gray = as_rgb_slice(image, item.image, flair_only)
        grayscale |= gray
        images.append(image)
        hashes.append(digest)
        if item.mask is not None and mask_problem is None:
            mask, _ = read_tif(item.mask)
            mask = mask[..., 0] if mask.ndim == 3 else mask
            if mask.shape != image.shape[:2]:
                mask_problem = (f"{item.mask.name}: mask {mask.shape[1]}x{mask.shape[0]} differs from its image "
                                f"{image.shape[1]}x{image.shape[0]}: Dice skipped")
            else:
                masks.append((mask > 0).astype(np.uint8))
    if grayscale:
        notes.append("grayscale input read as the FLAIR channel")
    if mask_problem and mask_problem != "no ground-truth masks":
        notes.append(mask_problem)
    return PatientImages(images, None if mask_problem else masks, hashes, notes, grayscale)
