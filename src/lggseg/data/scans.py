"""New scans to segment (`lggseg predict`): tif slices in the data set's naming (one slice, one patient
folder, or a folder of patient folders: `<case>_<n>.tif`, optional `<case>_<n>_mask.tif` beside each image),
or volumes: a NIfTI file, a folder of NIfTI cases, or a DICOM folder (read by lggseg.data.imageio).

Everything is checked as it is read and a problem names its file: unreadable or truncated TIFFs,
images that are not H x W x 3 uint8 (H x W grayscale is read as FLAIR, for FLAIR-only models), headers
declaring more than a slice can be (lggseg.data.tiff_guard, before decoding), symbolic links that lead out
of the input folder, and two files for one slice number (`_10.tif` and `_010.tif`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lggseg.data import tiff_guard
from lggseg.data.imageio import dicom, nifti
from lggseg.data.imageio.base import FLAIR_CHANNEL, ImageFormatError, Volume
from lggseg.data.imageio.cases import NiftiCase, nifti_cases_in, single_file_case

TIF_SUFFIXES = (".tif", ".tiff")
MASK_RE = re.compile(r"_mask$", re.IGNORECASE)
NUMBER_RE = re.compile(r"_(\d+)$")
MAX_PATIENT_DECODED_BYTES = 2**30
"""Most bytes a patient's decoded slices and masks may take together (a Kaggle patient takes about 20 MB):
each file is limited by tiff_guard, this bounds a folder of many large, valid files."""


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


@dataclass(frozen=True)
class VolumeScan:
    """A case given as a volume: NIfTI files (`nifti_case`) or a DICOM folder (`series` picks FLAIR)."""

    case: str
    folder: Path  # the file or folder the case was read from
    nifti_case: NiftiCase | None = None
    series: str | None = None

    @property
    def format(self) -> str:
        return "dicom" if self.nifti_case is None else "nifti"


Scan = PatientScan | VolumeScan


@dataclass
class PatientImages:
    """A patient's slices as read, in slice order: (H, W, 3) uint8 images (sizes may differ)."""

    images: list[np.ndarray]
    masks: list[np.ndarray] | None  # {0, 1} uint8 per slice; None when Dice cannot be computed
    sha256: list[str | None]  # of each slice's file (None for a volume's slices: see `files`)
    slice_numbers: list[int]
    slice_names: list[str]  # what each slice is called in report.json
    notes: list[str] = field(default_factory=list)
    grayscale: bool = False
    volume: Volume | None = None  # NIfTI / DICOM input: its geometry, for the mask writer
    files: dict[str, str] = field(default_factory=dict)  # a volume's source files -> sha256


def is_image_file(path: Path) -> bool:
    return path.is_file() and is_image_name(path)


def is_image_name(path: Path) -> bool:
    """`<case>_<n>.tif` (or .tiff, any case), not a `_mask.tif`."""
    return path.suffix.lower() in TIF_SUFFIXES and not MASK_RE.search(path.stem)


def input_tree(input_path: Path) -> Path:
    """The folder predict reads from, links resolved: INPUT itself, or the folder of a single slice."""
    input_path = Path(input_path)
    return (input_path.parent if input_path.is_file() else input_path).resolve()


def find_patients(input_path: Path, series: str | None = None) -> tuple[list[Scan], bool]:
    """(patients, whether INPUT holds several). INPUT: one slice .tif, one patient folder, a folder holding
    patient folders (the whole kaggle_3m/ works), a NIfTI file, a folder of NIfTI cases, or a DICOM folder."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise ScanError(f"{input_path}: no such file or folder")
    tree = input_tree(input_path)
    volumes = _find_volumes(input_path, series)
    if volumes:
        return volumes, len(volumes) > 1
    if series is not None:
        raise ScanError(f"{input_path}: --series is for DICOM folders, and this is none")
    if input_path.is_file():
        if not is_image_file(input_path):
            raise ScanError(f"{input_path}: not a slice image (expected <case>_<n>.tif, not a _mask.tif)")
        case = input_path.parent.name if input_path.stem.startswith(input_path.parent.name + "_") else input_path.stem
        return [PatientScan(case, input_path.parent, (_slice(input_path, tree),))], False
    own = _patient_slices(input_path, tree)
    if own:
        return [PatientScan(input_path.name, input_path, own)], False
    patients: list[Scan] = [PatientScan(d.name, d, slices) for d in sorted(p for p in input_path.iterdir() if p.is_dir())
                if (slices := _patient_slices(d, tree))]
    if not patients:
        raise ScanError(f"{input_path}: no .tif slices in it or in its sub-folders (expected <case>_<n>.tif), no NIfTI "
                        "files (.nii, .nii.gz) and no DICOM files in it")
    return patients, True


def _find_volumes(input_path: Path, series: str | None) -> list[Scan]:
    """NIfTI or DICOM input as cases, or [] when INPUT is tif slices."""
    try:
        if input_path.is_file():
            if nifti.is_nifti_name(input_path):
                case = single_file_case(input_path)
                return [VolumeScan(case.case, input_path, case)]
            if dicom.is_dicom_file(input_path):
                raise ScanError(f"{input_path}: one DICOM file; give the folder of its series")
            return []
        if any(is_image_name(p) for p in input_path.iterdir()):
            return []
        cases = nifti_cases_in(input_path) or [  # or a folder of case folders, as BraTS ships
            case for folder in sorted(p for p in input_path.iterdir() if p.is_dir()) for case in nifti_cases_in(folder)]
        if cases:
            return [VolumeScan(c.case, c.channels["FLAIR"].parent, c) for c in cases]
        if not any(p.is_dir() and any(is_image_name(f) for f in p.iterdir()) for p in input_path.iterdir()) \
                and dicom.dicom_files(input_path):
            return [VolumeScan(input_path.resolve().name, input_path, series=series)]
    except ImageFormatError as exc:
        raise ScanError(str(exc)) from None
    return []


def _patient_slices(folder: Path, tree: Path) -> tuple[ScanSlice, ...]:
    slices = [_slice(p, tree) for p in folder.iterdir() if is_image_name(p)]
    _check_one_file_per_slice(folder, slices)
    # slice numbers sort as numbers: _10 comes after _9
    return tuple(sorted(slices, key=lambda s: (s.number is None, s.number or 0, s.image.name)))


def _check_one_file_per_slice(folder: Path, slices: list[ScanSlice]) -> None:
    """`_10.tif` and `_010.tif` (or `_10.TIF`, `_10.tiff`) are both slice 10: which one is meant is a guess."""
    by_number = defaultdict(list)
    for item in slices:
        if item.number is not None:
            by_number[item.number].append(item.image.name)
    clashes = {n: sorted(names) for n, names in sorted(by_number.items()) if len(names) > 1}
    if clashes:
        listing = "; ".join(f"slice {n}: {', '.join(names)}" for n, names in clashes.items())
        raise ScanError(f"{folder}: more than one file for the same slice number ({listing}); keep one per slice")


def _slice(image: Path, tree: Path) -> ScanSlice:
    _check_readable_in_tree(image, tree)
    number = NUMBER_RE.search(image.stem)
    masks = [m for m in (image.with_name(f"{image.stem}_mask{s}") for s in TIF_SUFFIXES) if os.path.lexists(m)]
    if len(masks) > 1:
        raise ScanError(f"{image}: two masks for one slice ({', '.join(m.name for m in masks)}); keep one")
    for mask in masks:
        _check_readable_in_tree(mask, tree)
    return ScanSlice(image, masks[0] if masks else None, int(number.group(1)) if number else None)


def _check_readable_in_tree(path: Path, tree: Path) -> None:
    """A slice or mask must be a regular file inside the input folder: a link out of it would read another
    patient's (or anybody's) file as this one's, without a word."""
    target = path.resolve()
    if not target.is_relative_to(tree):
        raise ScanError(f"{path}: a symbolic link out of the input folder {tree} (to {target}): refused; "
                        "copy the file into the folder if it belongs to this patient")
    if not target.is_file():
        raise ScanError(f"{path}: not a regular file (a dangling link, a folder, a FIFO or a device): refused")


def read_tif(path: Path) -> tuple[np.ndarray, str]:
    """(array, sha256 of the file) or ScanError naming the file; the header is checked before decoding."""
    try:
        data = tiff_guard.read_file_bytes(path)
        return tiff_guard.read_tiff(data, path), hashlib.sha256(data).hexdigest()
    except tiff_guard.TiffRefusedError as exc:
        raise ScanError(str(exc)) from None


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
    decoded_bytes = 0
    for item in scan.slices:
        image, digest = read_tif(item.image)
        decoded_bytes += image.nbytes
        _check_patient_size(scan, decoded_bytes)
        image, gray = as_rgb_slice(image, item.image, flair_only)
        grayscale |= gray
        images.append(image)
        hashes.append(digest)
        if item.mask is not None and mask_problem is None:
            mask, _ = read_tif(item.mask)
            decoded_bytes += mask.nbytes
            _check_patient_size(scan, decoded_bytes)
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
    return PatientImages(images, None if mask_problem else masks, list(hashes), scan.slice_numbers,
                         [s.image.name for s in scan.slices], notes, grayscale)


def read_scan(scan: Scan, flair_only: bool) -> PatientImages:
    """Any case predict was given, read and checked (`read_patient` for tif slices)."""
    if isinstance(scan, PatientScan):
        return read_patient(scan, flair_only)
    try:
        if scan.nifti_case is not None:
            volume = scan.nifti_case.read()
        else:
            volume = dicom.read_series_folder(scan.folder, scan.case, scan.series)
    except ImageFormatError as exc:
        raise ScanError(str(exc)) from None
    geometry = volume.geometry
    notes = list(geometry.notes)
    copied = [role for role, source in geometry.channels.items() if "copied" in source]
    if copied and not flair_only:
        notes.append(f"no {' or '.join(copied)} image: the FLAIR was copied into that channel, as the data set did "
                     "for its patients without one (the model saw few such patients: expect a lower Dice)")
    files = {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in geometry.source}
    numbers = list(range(1, len(volume.images) + 1))
    name = Path(geometry.source[0]).name if scan.format == "nifti" else f"series {geometry.identifiers['SeriesNumber']}"
    return PatientImages(list(volume.images), None if volume.masks is None else list(volume.masks),
                         [None] * len(numbers), numbers, [f"{name}, axial slice {n}" for n in numbers], notes,
                         volume=volume, files=files)


def _check_patient_size(scan: PatientScan, decoded_bytes: int) -> None:
    if decoded_bytes > MAX_PATIENT_DECODED_BYTES:
        raise ScanError(f"{scan.folder}: the slices of {scan.case} take more than "
                        f"{MAX_PATIENT_DECODED_BYTES // 2**20} MiB decoded ({len(scan.slices)} slices); refused "
                        "(split the folder, or predict fewer slices at a time)")
