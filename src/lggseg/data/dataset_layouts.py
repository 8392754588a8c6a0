"""Which layout a data set folder has, and the index of the two layouts for your own data.

- `kaggle`: `<patient>/<patient>_<n>.tif` + `_mask.tif` and `data.csv` (lggseg.data.layout);
- `slices`: `images/` and `masks/` of 2-D slices (tif or png), paired by file name (`masks/<name>.png` or
  `masks/<name>_mask.png` for `images/<name>.png`); the patient and slice number come from
  `data.slices.patient_pattern` on the image's stem, or from `data.slices.patients_csv`;
- `nifti`: nnU-Net v2's / the Decathlon's raw layout (lggseg.data.imageio.cases): one case is one patient,
  its axial slices (inferior first) are its rows.

Every layout gives the same slices.csv (one row per slice, INDEX_COLUMNS), so every later stage runs unchanged.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from lggseg.core.config import DataConfig
from lggseg.data.imageio.base import ImageFormatError
from lggseg.data.imageio.cases import NiftiCase, training_cases
from lggseg.data.imageio.slices import SLICE_SUFFIXES, as_three_channels, is_slice_file, read_slice_file
from lggseg.data.layout import DatasetError, Problem, build_index, detect_layout, raise_or_keep, valid_slices

log = logging.getLogger(__name__)

NO_INSTITUTION = "all"  # the split's strata without a site: one group


def index_dataset(root: Path, cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(slices, dropped) of the data set at `root`, whatever its layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root} (run the download stage first)")
    layout = detect_layout(root, cfg.layout)
    strict = cfg.index.strict
    if layout == "kaggle":
        return build_index(root, strict=strict)
    rows, problems = (_slices_rows(root, cfg) if layout == "slices" else _nifti_rows(root, cfg))
    raise_or_keep(problems, strict, stage="files")
    slices, dropped = valid_slices(root, rows, problems)
    log.info("%s layout: %d slices of %d patients", layout, len(slices), slices["patient_id"].nunique())
    return slices, dropped


# -- images/ + masks/ -----------------------------------------------------------------------------------

def _slices_rows(root: Path, cfg: DataConfig) -> tuple[list[dict], list[Problem]]:
    problems: list[Problem] = []
    images = sorted(p for p in (root / "images").iterdir() if is_slice_file(p))
    if not images:
        raise DatasetError(f"{root / 'images'}: no slice files ({', '.join(SLICE_SUFFIXES)})")
    masks = {p.name: p for p in (root / "masks").iterdir() if is_slice_file(p)}
    owner = _patients_from_csv(root, cfg.slices.patients_csv) if cfg.slices.patients_csv else None
    pattern = re.compile(cfg.slices.patient_pattern)
    candidates: list[dict] = []
    seen: dict[tuple[str, int], str] = {}
    used_masks: set[str] = set()
    for image in images:
        rel = f"images/{image.name}"
        mask = next((masks[f"{image.stem}{suffix}{ext}"] for suffix in ("", "_mask") for ext in SLICE_SUFFIXES
                     if f"{image.stem}{suffix}{ext}" in masks), None)
        if mask is None:
            problems.append(Problem("image_without_mask", rel, f"no masks/{image.stem}.<tif|png> (or _mask)"))
            continue
        used_masks.add(mask.name)
        where = _patient_and_slice(image, owner, pattern, cfg)
        if isinstance(where, str):
            problems.append(Problem("unknown_patient", rel, where))
            continue
        if where[:2] in seen:
            problems.append(Problem("duplicate_slice_number", rel, f"patient {where[0]} slice {where[1]} again "
                                                                   f"(also {seen[where[:2]]})"))
            continue
        seen[where[:2]] = rel
        candidates.append({"patient_id": where[0], "case_id": where[0], "institution": where[2],
                           "slice": where[1], "image_path": rel, "mask_path": f"masks/{mask.name}"})
    for name in sorted(set(masks) - used_masks):
        problems.append(Problem("mask_without_image", f"masks/{name}", "no image of that name in images/"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        checked = list(pool.map(lambda row: _check_pair(root, row), candidates))
    for row in checked:
        problems.extend(row.pop("problems"))
    return checked, problems


def _patients_from_csv(root: Path, name: str) -> dict[str, tuple[str, int | None]]:
    path = root / name
    if not path.is_file():
        raise DatasetError(f"{path}: data.slices.patients_csv names a file that is not in the data set folder")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"image", "patient"} <= set(table.columns):
        raise DatasetError(f"{path}: needs the columns image and patient (and optionally slice); has "
                           f"{', '.join(table.columns)}")
    owner = {}
    for line, row in enumerate(table.itertuples(index=False), start=2):
        if not row.patient.strip():
            raise DatasetError(f"{path}: line {line}: the patient field is empty")
        slice_text = getattr(row, "slice", "")
        owner[Path(row.image).stem] = (row.patient.strip(), int(slice_text) if str(slice_text).strip() else None)
    return owner


def _patient_and_slice(image: Path, owner: dict | None, pattern: re.Pattern,
                       cfg: DataConfig) -> tuple[str, int, str] | str:
    """(patient, slice, institution) of an image, or why it has none."""
    if owner is not None:
        if image.stem not in owner:
            return f"not listed in {cfg.slices.patients_csv}"
        patient, number = owner[image.stem]
        if number is None:
            match = re.search(r"(\d+)$", image.stem)
            if not match:
                return f"{cfg.slices.patients_csv} gives no slice and the name ends in no number"
            number = int(match.group(1))
        return patient, number, NO_INSTITUTION
    match = pattern.match(image.stem)
    if not match:
        return (f"the name does not match data.slices.patient_pattern {cfg.slices.patient_pattern!r} (or list it in "
                "data.slices.patients_csv)")
    institution = match["institution"] if "institution" in pattern.groupindex and match["institution"] else None
    return match["patient"], int(match["slice"]), institution or NO_INSTITUTION


def _check_pair(root: Path, row: dict) -> dict:
    problems: list[Problem] = []
    image = mask = None
    try:
        image = as_three_channels(read_slice_file(root / row["image_path"], row["image_path"]), row["image_path"])
    except ImageFormatError as exc:
        problems.append(Problem("bad_image", row["image_path"], _detail(exc, row["image_path"])))
    try:
        mask = read_slice_file(root / row["mask_path"], row["mask_path"])
    except ImageFormatError as exc:
        problems.append(Problem("bad_mask", row["mask_path"], _detail(exc, row["mask_path"])))
    tumor = 0
    if mask is not None:
        mask = mask[..., 0] if mask.ndim == 3 else mask
        values = set(np.unique(mask).tolist())
        if image is not None and mask.shape != image.shape[:2]:
            problems.append(Problem("bad_mask", row["mask_path"],
                                    f"{mask.shape[1]}x{mask.shape[0]}, its image is {image.shape[1]}x{image.shape[0]}"))
        elif not (values <= {0, 255} or values <= {0, 1}):
            problems.append(Problem("bad_mask_values", row["mask_path"],
                                    f"values {sorted(values)[:8]} are not binary (0/255 or 0/1)"))
        else:
            tumor = int(np.count_nonzero(mask))
    return {**row, "tumor_pixels": tumor, "has_tumor": tumor > 0, "problems": problems}


def _detail(exc: Exception, name: str) -> str:
    text = str(exc)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


def read_slice_pair(root: Path, row: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) mask of one row of the slices layout."""
    image = as_three_channels(read_slice_file(root / row["image_path"]), row["image_path"])
    mask = read_slice_file(root / row["mask_path"])
    return image, mask[..., 0] if mask.ndim == 3 else mask


# -- NIfTI cases ----------------------------------------------------------------------------------------

def _nifti_rows(root: Path, cfg: DataConfig) -> tuple[list[dict], list[Problem]]:
    try:
        cases = training_cases(root)
    except ImageFormatError as exc:
        raise DatasetError(str(exc)) from None
    rows, problems = [], []
    for case in cases:
        image_rel, mask_rel = _relative_paths(root, case)
        try:
            volume = case.read(cfg.nifti.lesion_labels)
        except ImageFormatError as exc:
            problems.append(Problem("bad_case", image_rel, str(exc)))
            continue
        assert volume.masks is not None
        for index, mask in enumerate(volume.masks):
            tumor = int(mask.sum())
            rows.append({"patient_id": case.case, "case_id": case.case, "institution": NO_INSTITUTION,
                         "slice": index + 1, "image_path": image_rel, "mask_path": mask_rel, "tumor_pixels": tumor,
                         "has_tumor": tumor > 0})
    labels = cfg.nifti.lesion_labels
    if rows and labels and not any(row["has_tumor"] for row in rows):
        raise DatasetError(f"{root / 'labelsTr'}: no voxel of any case has a label of data.nifti.lesion_labels "
                           f"{labels}; which values the masks hold: dataset.json's 'labels'")
    return rows, problems


def _relative_paths(root: Path, case: NiftiCase) -> tuple[str, str]:
    image = case.channels.get("FLAIR") or case.four_d
    assert image is not None and case.truth is not None
    return str(image.relative_to(root)), str(case.truth.relative_to(root))


def nifti_case_volumes(root: Path) -> dict[str, NiftiCase]:
    """case name -> its files, for preprocess."""
    return {case.case: case for case in training_cases(Path(root))}
