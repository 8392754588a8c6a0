"""What every volume reader shares: the data set's orientation and intensity scale, and the record
(`Geometry`) that lets a writer put a mask back where the input's voxels are.

Orientation: the data set's slices are axial, anterior at the top, inferior slice first (measured on
the real sample: slice 1 shows the skull base, the last one the vertex). The volume array is therefore
(S, P, L): axis 0 inferior -> superior, rows anterior -> posterior, columns patient right -> left, the
radiological display of an axial DICOM image. Any input is brought to it by nibabel's axis permutations
and flips only, never resampled: the mask written back overlays the input voxel for voxel.

Intensity: every channel of every real volume spans 0 to 250-255 with at most 0.02 per mille of its
voxels at 255 (the 5 patients of kaggle_3m_sample): a per-volume min-max stretch to 8 bits, not a
percentile clip (which would saturate ~1% of voxels). `scale_to_uint8` does the same to any volume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.affines import obliquity, voxel_sizes
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

CANONICAL_AXES = ("S", "P", "L")
CHANNEL_ROLES = ("pre-contrast", "FLAIR", "post-contrast")  # the data set's channel order
FLAIR_CHANNEL = CHANNEL_ROLES.index("FLAIR")
MAX_SIDE = 4096
MAX_VOXELS = 2**28
"""Most voxels one volume may declare (1 GiB as float32; a 512 x 512 x 400 scan has 2**26.6)."""
MAX_IN_PLANE_ANISOTROPY = 1.2
"""Largest ratio of the two in-plane pixel sizes after reorientation: above it the axial plane is
not what the scanner acquired (a sagittal or coronal 2-D series with thick slices), and the model would
see the brain stretched."""
OBLIQUE_NOTE_DEGREES = 1.0


class ImageFormatError(ValueError):
    """A case cannot be read; the message names the file or folder and what is wrong."""


@dataclass
class Geometry:
    """What the (S, P, L) array lost, for the report and for the writer."""

    format: str  # "nifti" | "dicom"
    source: list[str]  # the files read, the FLAIR one first
    affine: np.ndarray  # voxel (input order) -> RAS+ mm
    shape: tuple[int, int, int]  # the input's voxel grid
    header: Any = None  # the NIfTI header to write masks with (None: a new one from the affine)
    identifiers: dict = field(default_factory=dict)  # DICOM UIDs, series description
    channels: dict = field(default_factory=dict)  # role -> file, or "FLAIR copied"
    notes: list[str] = field(default_factory=list)

    @property
    def to_canonical(self) -> np.ndarray:
        return ornt_transform(io_orientation(self.affine), axcodes2ornt(CANONICAL_AXES))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (slices, rows, columns) of the (S, P, L) array."""
        return canonical_spacing(self.affine, self.shape)

    def record(self) -> dict:
        """What report.json says of the input's geometry."""
        return {"format": self.format, "files": self.source, "shape": list(self.shape),
                "orientation": "".join(aff2axcodes(self.affine)), "spacing_mm": [round(v, 6) for v in self.spacing],
                "affine": np.round(self.affine, 6).tolist(), "read_as": "axial slices (S, P, L), not resampled",
                "intensity": "per-volume min-max to 0-255 per channel, as the data set's tifs",
                "channels": self.channels, **({"dicom": self.identifiers} if self.identifiers else {})}


def canonical_spacing(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[float, float, float]:
    """Voxel size in mm along (slices, rows, columns) once a volume with this affine is (S, P, L)."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_AXES))
    canonical = affine @ inv_ornt_aff(transform, shape[:3])
    slices, rows, columns = (float(v) for v in voxel_sizes(canonical))
    return slices, rows, columns


@dataclass
class Volume:
    case: str
    images: np.ndarray  # (S, H, W, 3) uint8
    masks: np.ndarray | None  # (S, H, W) uint8 {0, 1}, or None
    geometry: Geometry


def check_declared_size(shape: tuple[int, ...], name: str | Path) -> None:
    """Refuse a header that declares more than a scan can be, before any voxel is decoded."""
    if any(side > MAX_SIDE for side in shape[:3]) or math.prod(shape) > MAX_VOXELS:
        raise ImageFormatError(f"{name}: declares {' x '.join(map(str, shape))} voxels, more than a scan can be "
                               f"(at most {MAX_SIDE} per side and {MAX_VOXELS} in all); refused")


def check_geometry(affine: np.ndarray, shape: tuple[int, ...], name: str | Path) -> list[str]:
    """The orientation must be determinable and the axial plane close to isotropic; returns notes."""
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageFormatError(f"{name}: the orientation cannot be determined (the voxel-to-world matrix is "
                               "singular or not finite)")
    _, rows, columns = canonical_spacing(affine, shape)
    if max(rows, columns) / min(rows, columns) > MAX_IN_PLANE_ANISOTROPY:
        raise ImageFormatError(
            f"{name}: not an axial acquisition ({''.join(aff2axcodes(affine))}, voxels "
            f"{' x '.join(f'{v:g}' for v in voxel_sizes(affine))} mm): its axial slices would have "
            f"{columns:g} x {rows:g} mm pixels, which lggseg does not resample; resample the scan to axial "
            "slices first (e.g. with 3D Slicer or `mri_convert --out_orientation`)")
    notes = []
    angle = float(np.degrees(obliquity(affine)).max())
    if angle > OBLIQUE_NOTE_DEGREES:
        notes.append(f"oblique acquisition ({angle:.1f} degrees off the nearest axis): read along its own slices, "
                     "taken as axial, not resampled")
    return notes


def to_canonical(data: np.ndarray, geometry: Geometry) -> np.ndarray:
    """An array in the input's voxel order (i, j, k[, c]) -> (S, P, L[, c])."""
    return np.ascontiguousarray(apply_orientation(data, geometry.to_canonical))


def from_canonical(data: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The inverse of `to_canonical`: a (S, P, L) mask back in the input's voxel order."""
    back = ornt_transform(axcodes2ornt(CANONICAL_AXES), io_orientation(geometry.affine))
    return np.ascontiguousarray(apply_orientation(data, back))


def scale_to_uint8(volume: np.ndarray, name: str | Path) -> np.ndarray:
    """Per-volume min-max stretch to 0-255 (rounded), as the data set's tifs were made."""
    volume = np.asarray(volume, dtype=np.float64)
    if not np.all(np.isfinite(volume)):
        raise ImageFormatError(f"{name}: holds NaN or infinite intensities")
    low, high = float(volume.min()), float(volume.max())
    if high <= low:
        raise ImageFormatError(f"{name}: every voxel has the same intensity ({low:g}): an empty scan")
    return np.rint((volume - low) * (255.0 / (high - low))).astype(np.uint8)


def stack_channels(flair: np.ndarray, others: Mapping[str, np.ndarray | None], channels: dict[str, str]) -> np.ndarray:
    """(S, H, W) uint8 FLAIR and the other roles (None: missing) -> (S, H, W, 3) in the data set's order;
    a missing channel gets the FLAIR, as the data set did for its patients without one (noted in `channels`)."""
    stacked = np.empty((*flair.shape, 3), dtype=np.uint8)
    for index, role in enumerate(CHANNEL_ROLES):
        array = flair if index == FLAIR_CHANNEL else others.get(role)
        if array is None:
            array = flair
            channels[role] = "FLAIR copied (missing)"
        stacked[..., index] = array
    return stacked


def binary_mask(labels: np.ndarray, lesion_labels: list[int] | None, name: str | Path) -> np.ndarray:
    """A label map -> {0, 1}: every label > 0, or only `lesion_labels` (e.g. BraTS 1, 2, 4)."""
    if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.rint(labels)):
        raise ImageFormatError(f"{name}: a mask must hold whole-number labels")
    if lesion_labels is None:
        return (labels > 0).astype(np.uint8)
    return np.isin(labels, lesion_labels).astype(np.uint8)  # a case may have none (an LGG without enhancement)
