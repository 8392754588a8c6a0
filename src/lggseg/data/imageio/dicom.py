"""DICOM series through pydicom: a folder (searched recursively) -> the FLAIR series as a Volume, and the
pre- and post-contrast T1 series as channels when they share its voxel grid.

Which series is FLAIR: `--series` (a SeriesInstanceUID, a SeriesNumber, or words of the
SeriesDescription), else the one series whose SeriesDescription or ProtocolName says FLAIR, else the only
series there is. A T1 series on the same grid is the pre-contrast channel, one that also says post /
+C / Gd / contrast the post-contrast channel; a missing one gets the FLAIR, as the data set did.
The mask is written as NIfTI in the series' geometry (`nifti.write_mask`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lggseg.data.imageio.base import (
    Geometry,
    ImageFormatError,
    Volume,
    check_declared_size,
    check_geometry,
    scale_to_uint8,
    stack_channels,
    to_canonical,
)

MAX_FILES = 4096
FLAIR_RE = re.compile(r"flair|t2[ _-]?f\b|dark[ _-]?fluid", re.IGNORECASE)
T1_RE = re.compile(r"t1", re.IGNORECASE)
POST_RE = re.compile(r"post|\+ ?c\b|gad|\bgd\b|t1ce|t1c\b|contrast|mprage.*gd", re.IGNORECASE)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ by 1%


@dataclass
class Series:
    uid: str
    files: list[tuple[Path, pydicom.Dataset]]  # headers only

    @property
    def first(self) -> pydicom.Dataset:
        return self.files[0][1]

    @property
    def description(self) -> str:
        return " ".join(str(self.first.get(k, "")) for k in ("SeriesDescription", "ProtocolName")).strip()

    @property
    def number(self) -> str:
        return str(self.first.get("SeriesNumber", ""))

    def label(self) -> str:
        return f"#{self.number or '?'} '{self.description or 'no description'}' ({len(self.files)} files, {self.uid})"


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as file:
            return file.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink() and p.name != "DICOMDIR"
                  and is_dicom_file(p))


def read_series_folder(folder: Path, case: str, series: str | None = None) -> Volume:
    files = dicom_files(folder)
    if not files:
        raise ImageFormatError(f"{folder}: no DICOM files in it (none starts with the DICM preamble)")
    if len(files) > MAX_FILES:
        raise ImageFormatError(f"{folder}: {len(files)} DICOM files, more than the {MAX_FILES} of one study; "
                               "point at one patient's study or series")
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    patients = set()
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise ImageFormatError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from None
        if "PixelData" not in header and "SeriesInstanceUID" not in header:
            continue
        patients.add(str(header.get("PatientID", "")))
        by_series[str(header.get("SeriesInstanceUID", "no SeriesInstanceUID"))].append((path, header))
    if len(patients) > 1:
        raise ImageFormatError(f"{folder}: DICOM files of {len(patients)} patients (PatientID differs); point at "
                               "one patient's folder")
    all_series = [Series(uid, items) for uid, items in sorted(by_series.items())]
    flair = pick_flair(all_series, series, folder)
    files, geometry = _series_geometry(flair, folder)
    volume = _series_pixels(files, geometry)
    others: dict[str, np.ndarray | None] = {}
    geometry.channels = {"FLAIR": f"series {flair.label()}"}
    for role, candidate in _contrast_series(all_series, flair).items():
        other_files, other_geometry = _series_geometry(candidate, folder)  # headers only: pixels if it is used
        if other_geometry.shape == geometry.shape and np.allclose(other_geometry.affine, geometry.affine, atol=1e-3):
            array = _series_pixels(other_files, other_geometry)
            others[role] = to_canonical(scale_to_uint8(array, candidate.files[0][0]), geometry)
            geometry.channels[role] = f"series {candidate.label()}"
            geometry.source += [str(p) for p, _ in candidate.files]
        else:
            geometry.notes.append(f"series {candidate.label()} looks {role} but lies on another voxel grid than the "
                                  "FLAIR: not used (register and resample it to use it)")
    flair_canonical = to_canonical(scale_to_uint8(volume, flair.files[0][0]), geometry)
    images = stack_channels(flair_canonical, others, geometry.channels)
    return Volume(case, images, None, geometry)


def pick_flair(all_series: list[Series], wanted: str | None, folder: Path) -> Series:
    listing = "; ".join(s.label() for s in all_series)
    if wanted:
        matches = [s for s in all_series if wanted in (s.uid, s.number)] or \
            [s for s in all_series if wanted.lower() in s.description.lower()]
        if len(matches) != 1:
            raise ImageFormatError(f"{folder}: --series {wanted!r} matches {len(matches)} series; the series are: "
                                   f"{listing}")
        return matches[0]
    flair = [s for s in all_series if FLAIR_RE.search(s.description)]
    if len(flair) == 1:
        return flair[0]
    if not flair and len(all_series) == 1:
        return all_series[0]
    why = "several series say FLAIR" if flair else "no series says FLAIR"
    raise ImageFormatError(f"{folder}: {why}; choose one with --series UID, NUMBER or words of its description. "
                           f"The series are: {listing}")


def _contrast_series(all_series: list[Series], flair: Series) -> dict[str, Series]:
    found: dict[str, Series] = {}
    for series in sorted(all_series, key=lambda s: s.number):
        if series is flair or not T1_RE.search(series.description) or FLAIR_RE.search(series.description):
            continue
        role = "post-contrast" if POST_RE.search(series.description) else "pre-contrast"
        found.setdefault(role, series)
    return found


def _series_geometry(series: Series, folder: Path) -> tuple[list[Path], Geometry]:
    """A series' files in slice order and its geometry (RAS affine, voxels (columns, rows, slices)), from the
    headers alone."""
    headers = [h for _, h in series.files]
    name = f"{folder}: series {series.label()}"
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        missing = [str(p) for p, h in series.files if key not in h]
        if missing:
            raise ImageFormatError(f"{missing[0]}: no {key}; the orientation cannot be determined")
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise ImageFormatError(f"{name}: a multi-frame (enhanced) image; export it as one file per slice")
    orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
    for path, header in series.files:
        if not np.allclose(np.array(header.ImageOrientationPatient, dtype=float), orientation, atol=1e-4):
            raise ImageFormatError(f"{path}: its ImageOrientationPatient differs from the rest of {name}")
        if (header.Rows, header.Columns) != (headers[0].Rows, headers[0].Columns) or not np.allclose(
                np.array(header.PixelSpacing, dtype=float), np.array(headers[0].PixelSpacing, dtype=float)):
            raise ImageFormatError(f"{path}: its size or pixel spacing differs from the rest of {name}")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    positions = np.array([np.array(h.ImagePositionPatient, dtype=float) for h in headers])
    order = np.argsort(positions @ normal)
    files = [series.files[i] for i in order]
    along = (positions @ normal)[order]
    gaps = np.diff(along)
    if len(gaps) and gaps.min() < 1e-3:
        at = int(np.argmin(gaps))
        raise ImageFormatError(f"{files[at + 1][0]}: at the same position as {files[at][0].name} ({along[at]:.2f} mm) "
                               f"in {name}: two acquisitions mixed in one series")
    if len(gaps) > 1 and gaps.max() - gaps.min() > SPACING_TOLERANCE * float(np.median(gaps)):
        at = int(np.argmax(np.abs(gaps - np.median(gaps))))
        raise ImageFormatError(f"{name}: inconsistent slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm; "
                               f"{gaps[at]:.3g} mm between {files[at][0].name} and {files[at + 1][0].name}): "
                               "missing slices or a mixed series")
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    check_declared_size((columns, rows, len(files)), name)
    row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
    slice_spacing = float(np.median(gaps)) if len(gaps) else float(headers[0].get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * column_spacing  # voxel axis 0: along a row (the column index)
    lps[:3, 1] = column_cosine * row_spacing  # voxel axis 1: down a column (the row index)
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = positions[order[0]]
    affine = LPS_TO_RAS @ lps
    first = headers[0]
    geometry = Geometry("dicom", [str(p) for p, _ in files], affine, (columns, rows, len(files)),
                        identifiers={"StudyInstanceUID": str(first.get("StudyInstanceUID", "")),
                                     "SeriesInstanceUID": series.uid, "SeriesNumber": series.number,
                                     "SeriesDescription": str(first.get("SeriesDescription", "")),
                                     "Modality": str(first.get("Modality", ""))})
    geometry.notes += check_geometry(affine, geometry.shape, name)
    return [p for p, _ in files], geometry


def _series_pixels(files: list[Path], geometry: Geometry) -> np.ndarray:
    """The rescaled voxels of a series' files (slice order) as (columns, rows, slices)."""
    columns, rows, _ = geometry.shape
    pixels = []
    for path in files:
        try:
            dataset = pydicom.dcmread(path)
            array = dataset.pixel_array.astype(np.float64)
        except Exception as exc:  # pydicom raises many kinds for damaged or compressed pixel data
            raise ImageFormatError(f"{path}: cannot decode its pixel data ({type(exc).__name__}: {exc})") from None
        if array.shape != (rows, columns):
            raise ImageFormatError(f"{path}: pixel data of shape {array.shape}, expected {rows} x {columns}")
        pixels.append(array * float(dataset.get("RescaleSlope", 1) or 1) + float(dataset.get("RescaleIntercept", 0) or 0))
    return np.stack(pixels, axis=-1).transpose(1, 0, 2)  # (rows, columns, slices) -> (columns, rows, slices)


MR_IMAGE_STORAGE = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.4")


def write_series(folder: Path, volume: np.ndarray, *, spacing: tuple[float, float, float], description: str,
                 series_number: int, study_uid: str, patient_id: str, tilt_degrees: float = 0.0,
                 origin: tuple[float, float, float] = (-120.0, -120.0, -60.0), frame_uid: str | None = None) -> list[Path]:
    """Write an (S, P, L) volume (axial, inferior slice first; uint16) as one MR series, a file per slice.

    spacing: (slice, row, column) mm. tilt_degrees rotates the image plane about the head-foot axis (an
    oblique axial series). For `lggseg synth --layout dicom` and the tests: a real writer, not a viewer's export."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    angle = np.radians(tilt_degrees)
    row_cosine = np.array([np.cos(angle), np.sin(angle), 0.0])  # LPS: along a row toward the patient's left
    column_cosine = np.array([-np.sin(angle), np.cos(angle), 0.0])  # down a column toward posterior
    normal = np.cross(row_cosine, column_cosine)  # toward superior
    series_uid = generate_uid()
    frame_uid = frame_uid or generate_uid()
    slices, rows, columns = volume.shape
    written = []
    for index in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{series_number:03d}_{slices - index:04d}.dcm"  # names in reverse: order comes from positions
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.Modality = patient_id, patient_id, "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, series_number, index + 1
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_cosine, *column_cosine)]
        position = np.array(origin) + normal * spacing[0] * index
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(volume[index], dtype="<u2").tobytes()
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
