"""NIfTI (`.nii`, `.nii.gz`) through nibabel: a case's modality files -> Volume, and a mask -> NIfTI in the
input's voxel grid, with its affine and header (it overlays the scan in ITK-SNAP, 3D Slicer or FSLeyes)."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation

from lggseg.data.imageio.base import (
    CANONICAL_AXES,
    CHANNEL_ROLES,
    Geometry,
    ImageFormatError,
    Volume,
    binary_mask,
    check_declared_size,
    check_geometry,
    from_canonical,
    scale_to_uint8,
    stack_channels,
    to_canonical,
)

SUFFIXES = (".nii.gz", ".nii")
SAME_GRID_MM = 1e-3


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def stem(path: Path) -> str:
    """`BraTS_001_flair.nii.gz` -> `BraTS_001_flair`."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_image(path: Path, volumes: int = 1) -> tuple[nib.Nifti1Image, np.ndarray]:
    """(image, voxels in the file's order) of a 3-D NIfTI, or of a 4-D one with `volumes` volumes
    (the MSD layout's channels); the header is checked before any voxel is decoded."""
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise ImageFormatError(f"{path}: no such file") from None
    except Exception as exc:  # nibabel's ImageFileError, a gzip without NIfTI header, ...
        raise ImageFormatError(f"{path}: not a NIfTI image ({type(exc).__name__})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageFormatError(f"{path}: a {type(image).__name__}, not a NIfTI image")
    shape = tuple(int(v) for v in image.shape)
    check_declared_size(shape, path)
    if len(shape) == 4 and shape[3] == 1 and volumes == 1:
        shape = shape[:3]
    expected = 3 if volumes == 1 else 4
    if len(shape) != expected or (volumes > 1 and shape[3] < volumes):
        wanted = "one 3-D volume per file (e.g. <case>_flair.nii.gz)" if volumes == 1 else \
            f"a 4-D image of at least {volumes} volumes (the channels dataset.json names)"
        raise ImageFormatError(f"{path}: a {len(shape)}-D image of shape {' x '.join(map(str, image.shape))}; "
                               f"expected {wanted}")
    if image.header["sform_code"] == 0 and image.header["qform_code"] == 0:
        raise ImageFormatError(f"{path}: the orientation cannot be determined (qform_code and sform_code are 0: "
                               "no voxel-to-world transform in the header)")
    try:
        data = np.asanyarray(image.dataobj).reshape(shape)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ImageFormatError(f"{path}: cannot read its voxels (truncated or damaged: {type(exc).__name__})") from None
    return image, data


def read_case(case: str, channels: dict[str, Path], mask: Path | None = None,
              lesion_labels: list[int] | None = None, four_d: Path | None = None,
              four_d_roles: dict[int, str] | None = None) -> Volume:
    """A case from one file per channel (`channels`: role -> file, FLAIR required) or from one 4-D file
    (`four_d`, volume index -> role). Every channel and the mask must lie on the FLAIR's voxel grid."""
    arrays: dict[str, np.ndarray] = {}
    if four_d is not None:
        roles = four_d_roles or {}
        image, data = load_image(four_d, volumes=max(roles) + 1 if roles else 1)
        for index, role in roles.items():
            arrays[role] = data[..., index]
        sources = {role: f"{four_d} volume {index}" for index, role in roles.items()}
        reference, reference_path = image, four_d
    else:
        if "FLAIR" not in channels:
            raise ImageFormatError(f"{case}: no FLAIR image among {', '.join(str(p) for p in channels.values())}")
        reference, arrays["FLAIR"] = load_image(channels["FLAIR"])
        reference_path = channels["FLAIR"]
        for role, path in channels.items():
            if role != "FLAIR":
                image, arrays[role] = load_image(path)
                _check_same_grid(image, reference, path, reference_path)
        sources = {role: str(path) for role, path in channels.items()}
    if "FLAIR" not in arrays:
        raise ImageFormatError(f"{reference_path}: none of its channels is FLAIR")
    geometry = Geometry("nifti", [str(reference_path)] + [str(p) for r, p in channels.items() if r != "FLAIR"],
                        reference.affine.copy(), tuple(arrays["FLAIR"].shape), header=reference.header.copy(),
                        channels={role: sources[role] for role in CHANNEL_ROLES if role in sources})
    geometry.notes += check_geometry(geometry.affine, geometry.shape, reference_path)
    scaled = {role: to_canonical(scale_to_uint8(array, sources[role]), geometry) for role, array in arrays.items()}
    images = stack_channels(scaled["FLAIR"], scaled, geometry.channels)
    truth = None
    if mask is not None:
        mask_image, labels = load_image(mask)
        _check_same_grid(mask_image, reference, mask, reference_path)
        truth = to_canonical(binary_mask(labels, lesion_labels, mask), geometry)
        geometry.source.append(str(mask))
    return Volume(case, images, truth, geometry)


def _check_same_grid(image: nib.Nifti1Image, reference: nib.Nifti1Image, path: Path, reference_path: Path) -> None:
    if image.shape[:3] != reference.shape[:3] or not np.allclose(image.affine, reference.affine, atol=SAME_GRID_MM):
        raise ImageFormatError(f"{path}: not on the voxel grid of {reference_path.name} (shape "
                               f"{'x'.join(map(str, image.shape[:3]))} vs {'x'.join(map(str, reference.shape[:3]))}, or "
                               "another affine); register and resample it to that scan first")


def write_mask(path: Path, mask: np.ndarray, geometry: Geometry, dtype: type = np.uint8) -> None:
    """A (S, P, L) mask (or probability map, dtype float32) -> NIfTI in the input's grid: same shape, affine,
    qform/sform and codes, the rest of the header kept (intensity scaling reset)."""
    data = from_canonical(np.asarray(mask).astype(dtype), geometry)
    header = geometry.header
    if header is None:  # DICOM input: a new header, the scanner's frame in both transforms
        image = nib.Nifti1Image(data, geometry.affine)
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
    else:
        kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = kind(data, geometry.affine, header.copy())
        image.set_qform(header.get_qform(), code=int(header["qform_code"]))
        image.set_sform(header.get_sform(), code=int(header["sform_code"]))
    image.set_data_dtype(dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["descrip"] = b"lggseg predict: lesion mask (1)" if dtype == np.uint8 else b"lggseg predict: probability"
    nib.save(image, path)


def canonical_affine(spacing: tuple[float, float, float], tilt_degrees: float = 0.0,
                     origin: tuple[float, float, float] = (120.0, 120.0, -60.0)) -> np.ndarray:
    """Voxel (slice, row, column) of an (S, P, L) array -> RAS+ mm: slices go superior, rows posterior,
    columns to the patient's left; `tilt_degrees` turns the image plane about the head-foot axis."""
    angle = np.radians(tilt_degrees)
    along_row = np.array([-np.cos(angle), -np.sin(angle), 0.0])  # toward the left (-R), tilted
    down_column = np.array([np.sin(angle), -np.cos(angle), 0.0])  # toward posterior (-A), tilted
    affine = np.eye(4)
    affine[:3, 0] = np.array([0.0, 0.0, 1.0]) * spacing[0]
    affine[:3, 1] = down_column * spacing[1]
    affine[:3, 2] = along_row * spacing[2]
    affine[:3, 3] = origin
    return affine


def write_volume(path: Path, canonical: np.ndarray, spacing: tuple[float, float, float], *,
                 axcodes: tuple[str, str, str] = CANONICAL_AXES, tilt_degrees: float = 0.0) -> np.ndarray:
    """Write an (S, P, L) volume as NIfTI with its voxels stored in the order `axcodes` (e.g. ('R', 'A', 'S'),
    as most converters write); returns the affine. For `lggseg synth` and the tests."""
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    transform = ornt_transform(axcodes2ornt(CANONICAL_AXES), axcodes2ornt(axcodes))
    data = apply_orientation(canonical, transform)
    affine = canonical_affine(spacing, tilt_degrees) @ inv_ornt_aff(transform, canonical.shape)
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return affine
