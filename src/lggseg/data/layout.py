"""The Kaggle layout: `kaggle_3m/<patient>/<patient>_<n>.tif` + `_<n>_mask.tif` and `data.csv`.

`build_index` turns a tree into one row per slice and validates every file on the way.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lggseg.data import tiff_guard

log = logging.getLogger(__name__)

REAL_PREFIX = "TCGA"  # the Kaggle LGG data set's patients, from The Cancer Genome Atlas
SYNTHETIC_PREFIX = "SYNTH"  # `lggseg synth`'s patients: every folder, file, case ID and report says they are not real
PATIENT_PREFIXES = (REAL_PREFIX, SYNTHETIC_PREFIX)
PATIENT_RE = re.compile(
    r"^(?P<case_id>(?P<prefix>" + "|".join(PATIENT_PREFIXES) + r")_(?P<institution>[A-Z0-9]{2})_[A-Z0-9]{4})_(?P<date>\d{8})$"
)
IMAGE_SHAPE = (256, 256, 3)
MASK_SHAPE = (256, 256)
INDEX_COLUMNS = [
    "patient_id", "case_id", "institution", "slice", "image_path", "mask_path", "tumor_pixels", "has_tumor",
]


class DatasetError(ValueError):
    """The data set on disk is invalid; the message lists the offending files."""


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    detail: str


def detect_layout(root: Path, configured: str = "auto") -> str:
    """`configured`, checked against the tree, or the layout the tree has."""
    root = Path(root)
    found = ("nifti" if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()
             else "slices" if (root / "images").is_dir() and (root / "masks").is_dir() else "kaggle")
    if configured not in ("auto", found):
        markers = {"nifti": "dataset.json, imagesTr/ and labelsTr/", "slices": "images/ and masks/",
                   "kaggle": "patient folders and data.csv"}
        raise DatasetError(f"{root}: data.layout is {configured}, but the folder has no {markers[configured]} "
                           f"(it looks like the {found} layout; set data.layout: auto or {found})")
    return found


def parse_patient_id(patient_id: str) -> tuple[str, str]:
    """`TCGA_CS_4941_19960909` -> (`TCGA_CS_4941`, `CS`); `SYNTH_CS_4941_19960909` -> (`SYNTH_CS_4941`, `CS`)."""
    match = PATIENT_RE.match(patient_id)
    if not match:
        raise DatasetError(f"{patient_id}: patient folder name does not match TCGA_<inst>_<id>_<date> "
                           "(or SYNTH_<inst>_<id>_<date> for synthetic data)")
    return match["case_id"], match["institution"]


def is_patient_folder_name(name: str) -> bool:
    """A name that starts like a patient folder of the data set (real `TCGA_` or synthetic `SYNTH_`)."""
    return name.startswith(tuple(f"{prefix}_" for prefix in PATIENT_PREFIXES))


def is_synthetic_case(case: str) -> bool:
    """A case named by `lggseg synth` (`SYNTH_<inst>_<id>_<date>`), not a patient."""
    return str(case).startswith(f"{SYNTHETIC_PREFIX}_")


def slice_number(name: str, patient_id: str) -> int | None:
    """`<patient>_<n>.tif` or `<patient>_<n>_mask.tif` -> n (None for any other name)."""
    match = re.fullmatch(re.escape(patient_id) + r"_(\d+)(?:_mask)?\.tif", name)
    return int(match.group(1)) if match else None


def build_index(root: Path, strict: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index and validate the tree at `root`; returns (slices, dropped).

    strict: raise `DatasetError` for the first class of problem found, listing all its files.
    Otherwise the offending slices are dropped and returned in `dropped` (kind, path, detail).
    Slice-number gaps are only warned about.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root} (run the download stage first)")
    patient_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not patient_dirs:
        raise DatasetError(f"{root}: no patient folders")
    problems: list[Problem] = []
    candidates: list[dict] = []
    for patient_dir in patient_dirs:
        candidates.extend(_pair_slices(root, patient_dir, problems))
    raise_or_keep(problems, strict, stage="layout")

    checked = _check_files(root, candidates)
    file_problems = [p for row in checked for p in row.pop("problems")]
    problems.extend(file_problems)
    raise_or_keep(file_problems, strict, stage="files")
    slices, dropped = valid_slices(root, checked, problems)
    _warn_gaps(slices)
    return join_clinical(slices, root / "data.csv", strict=strict), dropped


def valid_slices(root: Path, rows: list[dict], problems: list[Problem]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(slices, dropped): the rows none of whose files has a problem, in patient and slice order, and the
    problems as a table (kind, path, detail)."""
    bad_paths = {p.path for p in problems}
    rows = [r for r in rows if r["image_path"] not in bad_paths and r["mask_path"] not in bad_paths]
    if not rows:
        raise DatasetError(f"{root}: no valid slices left after validation")
    slices = pd.DataFrame(rows, columns=INDEX_COLUMNS).sort_values(["patient_id", "slice"], ignore_index=True)
    return slices, pd.DataFrame([p.__dict__ for p in problems], columns=["kind", "path", "detail"])


def _pair_slices(root: Path, patient_dir: Path, problems: list[Problem]) -> list[dict]:
    patient_id = patient_dir.name
    rel_dir = patient_dir.relative_to(root)
    try:
        case_id, institution = parse_patient_id(patient_id)
    except DatasetError as exc:
        problems.append(Problem("bad_patient_folder", str(rel_dir), str(exc)))
        return []
    images: dict[int, str] = {}
    masks: dict[int, str] = {}
    ambiguous: set[int] = set()
    data_root = root.resolve()
    for f in sorted(patient_dir.iterdir()):
        n = slice_number(f.name, patient_id)
        if n is None:
            continue
        rel = str(rel_dir / f.name)
        if not f.resolve().is_relative_to(data_root):  # a link out of the data set: another file, not this slice
            problems.append(Problem("link_outside_data", rel, f"links out of the data folder (to {f.resolve()})"))
            continue
        kind = masks if f.name.endswith("_mask.tif") else images
        if n in kind:  # `_10.tif` and `_010.tif`: which one is slice 10 cannot be decided
            problems.append(Problem("duplicate_slice_number", rel, f"slice {n} again (also {kind[n]})"))
            ambiguous.add(n)
            continue
        kind[n] = rel
    for n in ambiguous:
        for kind in (images, masks):
            if n in kind:
                problems.append(Problem("duplicate_slice_number", kind.pop(n), f"slice {n} has more than one file"))
    if not images and not masks and not ambiguous:
        problems.append(Problem("empty_patient_folder", str(rel_dir), "no slice tifs"))
        return []
    for n in sorted(images.keys() - masks.keys()):
        problems.append(Problem("image_without_mask", images[n], "no matching _mask.tif"))
    for n in sorted(masks.keys() - images.keys()):
        problems.append(Problem("mask_without_image", masks[n], "no matching image tif"))
    return [
        {"patient_id": patient_id, "case_id": case_id, "institution": institution, "slice": n,
         "image_path": images[n], "mask_path": masks[n]}
        for n in sorted(images.keys() & masks.keys())
    ]


def _check_files(root: Path, candidates: list[dict]) -> list[dict]:
    """Read every image and mask once (threads: tif decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda row: _check_slice(root, row), candidates))


def _check_slice(root: Path, row: dict) -> dict:
    problems: list[Problem] = []
    image = _read(root / row["image_path"], row["image_path"], problems)
    if image is not None and (image.shape != IMAGE_SHAPE or image.dtype != np.uint8):
        problems.append(Problem("bad_image", row["image_path"],
                                f"expected {IMAGE_SHAPE} uint8, got {image.shape} {image.dtype}"))
    mask = _read(root / row["mask_path"], row["mask_path"], problems)
    tumor_pixels = 0
    if mask is not None:
        if mask.shape != MASK_SHAPE or mask.dtype != np.uint8:
            problems.append(Problem("bad_mask", row["mask_path"],
                                    f"expected {MASK_SHAPE} uint8, got {mask.shape} {mask.dtype}"))
        else:
            values = set(np.unique(mask).tolist())
            if not (values <= {0, 255} or values <= {0, 1}):
                problems.append(Problem("bad_mask_values", row["mask_path"],
                                        f"values {sorted(values)[:8]} are not binary (0/255 or 0/1)"))
            tumor_pixels = int(np.count_nonzero(mask))
    return {**row, "tumor_pixels": tumor_pixels, "has_tumor": tumor_pixels > 0, "problems": problems}


def _read(path: Path, rel: str, problems: list[Problem]) -> np.ndarray | None:
    """The pixels, or None with a Problem: unreadable_tif, or oversized_tif when the header declares more
    than a slice can be (refused before decoding, see tiff_guard)."""
    try:
        return tiff_guard.read_tiff(path, rel)
    except tiff_guard.TiffRefusedError as exc:
        problems.append(Problem(exc.kind, rel, exc.detail))
        return None


def raise_or_keep(problems: list[Problem], strict: bool, stage: str) -> None:
    if not problems or not strict:
        for p in problems:
            log.warning("dropping %s: %s (%s)", p.path, p.kind, p.detail)
        return
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_kind[p.kind].append(p)
    kind, first = next(iter(by_kind.items()))
    listing = "\n".join(f"  {p.path}: {p.detail}" for p in first)
    others = [k for k in by_kind if k != kind]
    more = f"\n(also found: {', '.join(others)})" if others else ""
    raise DatasetError(
        f"{len(first)} file(s) fail validation ({kind}):\n{listing}{more}\n"
        "Fix or remove them, or set data.index.strict: false to drop them (listed in data/interim/dropped.csv)."
    )


def _warn_gaps(slices: pd.DataFrame) -> None:
    for patient_id, numbers in slices.groupby("patient_id")["slice"]:
        expected = set(range(1, int(numbers.max()) + 1))
        missing = sorted(expected - set(numbers))
        if missing:
            log.warning("%s: slice numbers missing: %s", patient_id, missing[:10])


def join_clinical(slices: pd.DataFrame, data_csv: Path, strict: bool = True) -> pd.DataFrame:
    """Left-join the per-patient `data.csv` columns on case_id (its `Patient` column).

    Rows pandas would take without a word (fields missing or extra, no patient ID, a patient twice with
    other values) are refused when `strict`, else warned about: short rows keep empty cells, long rows are
    skipped, and of a patient's differing rows the first is used."""
    if not data_csv.is_file():
        raise DatasetError(f"{data_csv}: data.csv is missing")
    problems, long_lines = clinical_row_problems(data_csv)
    if problems and strict:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DatasetError(f"{data_csv}: {len(problems)} malformed row(s): {shown}. Fix the file, or set "
                           "data.index.strict: false to index with them (short rows left empty, long rows "
                           "skipped, a patient's first row used)")
    for problem in problems:
        log.warning("%s: %s", data_csv, problem)
    try:
        # index_col=False: a long first row must not turn the Patient column into the index
        clinical = pd.read_csv(data_csv, skiprows=[line - 1 for line in long_lines], index_col=False)
    except Exception as exc:
        raise DatasetError(f"{data_csv}: cannot read data.csv: {exc}") from None
    if "Patient" not in clinical.columns:
        raise DatasetError(f"{data_csv}: no 'Patient' column")
    clinical = clinical.rename(columns={"Patient": "case_id"}).drop_duplicates("case_id")
    missing = sorted(set(slices["case_id"]) - set(clinical["case_id"]))
    if missing:
        log.warning("%s: no clinical row for %s", data_csv, ", ".join(missing))
    return slices.merge(clinical, on="case_id", how="left", validate="many_to_one")


def clinical_row_problems(data_csv: Path) -> tuple[list[str], list[int]]:
    """One 'line N (patient): what' per data.csv row with another number of fields than the header, without a
    patient ID, or repeating a patient with other values (empty cells are normal: the real file has some);
    and the line numbers of the rows with too many fields."""
    problems: list[str] = []
    long_lines: list[int] = []
    with open(data_csv, newline="", encoding="utf-8-sig", errors="replace") as file:
        reader = csv.reader(file)
        header = next((row for row in reader if row), None)
        if header is None or "Patient" not in header:
            return problems, long_lines  # read_csv's own checks name these
        patient_at = header.index("Patient")
        first_seen: dict[str, tuple[int, list[str]]] = {}
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue  # blank lines: pandas skips them too
            line = reader.line_num
            patient = row[patient_at].strip() if len(row) > patient_at else ""
            who = f"line {line} ({patient or 'no patient ID'})"
            if len(row) != len(header):
                problems.append(f"{who}: {len(row)} fields, the header has {len(header)}")
                if len(row) > len(header):
                    long_lines.append(line)
            elif not patient:
                problems.append(f"{who}: the Patient field is empty")
            elif patient in first_seen and first_seen[patient][1] != row:
                earlier_line, earlier = first_seen[patient]
                differing = [name for name, a, b in zip(header, earlier, row) if a != b]
                problems.append(f"{who}: patient listed again (line {earlier_line}) with other "
                                f"{', '.join(differing[:4])}{' ...' if len(differing) > 4 else ''}")
            first_seen.setdefault(patient, (line, row))
    return problems, long_lines
