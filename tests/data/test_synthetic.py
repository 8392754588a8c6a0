"""Synthetic data: same layout, file formats and table as the real Kaggle set, and a learnable tumor."""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import tifffile

from lggseg.data.provenance import SOURCE_RECORD
from lggseg.data.synthetic import (
    DATA_CSV_COLUMNS,
    INSTITUTIONS,
    KAGGLE_ZIP_PREFIXES,
    generate_dataset,
    write_kaggle_zip,
)

REAL_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "kaggle_3m_sample"
CASE_PATTERN = re.compile(r"SYNTH_([A-Z0-9]{2})_([A-Z0-9]{4})_(\d{8})")  # never TCGA_: not a real patient
SLICES_MIN, SLICES_MAX = 20, 30


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve synthetic patients, generated once for the read-only tests of this module."""
    return generate_dataset(
        tmp_path_factory.mktemp("synthetic"), patients=12, slices_min=SLICES_MIN, slices_max=SLICES_MAX, seed=7
    )


def _case_dirs(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir())


def _read_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 256, 256, 3) and masks (N, 256, 256) of one case, in slice order."""
    count = len(list(case_dir.glob("*_mask.tif")))
    images = np.stack([tifffile.imread(case_dir / f"{case_dir.name}_{n}.tif") for n in range(1, count + 1)])
    masks = np.stack([tifffile.imread(case_dir / f"{case_dir.name}_{n}_mask.tif") for n in range(1, count + 1)])
    return images, masks


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_layout_and_names_follow_the_real_pattern(cohort: Path) -> None:
    assert cohort.name == "kaggle_3m"
    entries = {path.name for path in cohort.iterdir()}
    cases = _case_dirs(cohort)
    assert entries - {case.name for case in cases} == {"data.csv", "README.md", SOURCE_RECORD}
    assert len(cases) == 12
    for case in cases:
        assert CASE_PATTERN.fullmatch(case.name), case.name
        names = {path.name for path in case.iterdir()}
        count = len(names) // 2
        assert SLICES_MIN <= count <= SLICES_MAX
        expected = {f"{case.name}_{n}.tif" for n in range(1, count + 1)}
        expected |= {f"{case.name}_{n}_mask.tif" for n in range(1, count + 1)}
        assert names == expected, case.name


def test_images_and_masks_have_the_real_shapes_and_values(cohort: Path) -> None:
    for case in _case_dirs(cohort)[:3]:
        images, masks = _read_case(case)
        assert images.dtype == np.uint8 and images.shape[1:] == (256, 256, 3)
        assert masks.dtype == np.uint8 and masks.shape[1:] == (256, 256)
        assert set(np.unique(masks)) <= {0, 255}
        assert images.max() < 255  # like the real scans, brightness tops out below 255
        assert np.median(images[:, :8, :8]) < 10  # background is near black
        assert images[..., 1].mean() > 10


def test_tiff_encoding_mirrors_the_real_files(cohort: Path) -> None:
    case = _case_dirs(cohort)[0]
    synthetic = (case / f"{case.name}_1.tif", case / f"{case.name}_1_mask.tif")
    with tifffile.TiffFile(synthetic[0]) as image, tifffile.TiffFile(synthetic[1]) as mask:
        assert image.pages[0].compression == tifffile.COMPRESSION.NONE
        assert image.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert image.pages[0].planarconfig == tifffile.PLANARCONFIG.CONTIG
        assert mask.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert len(image.pages) == len(mask.pages) == 1
    if not REAL_SAMPLE.is_dir():
        return
    real_case = REAL_SAMPLE / "TCGA_CS_4941_19960909"
    real = (real_case / "TCGA_CS_4941_19960909_1.tif", real_case / "TCGA_CS_4941_19960909_1_mask.tif")
    for ours, theirs in zip(synthetic, real):
        with tifffile.TiffFile(ours) as a, tifffile.TiffFile(theirs) as b:
            page_a, page_b = a.pages[0], b.pages[0]
            assert (page_a.shape, page_a.dtype, page_a.compression, page_a.photometric) == (
                page_b.shape,
                page_b.dtype,
                page_b.compression,
                page_b.photometric,
            )


def test_every_patient_has_one_contiguous_run_of_tumor_slices(cohort: Path) -> None:
    for case in _case_dirs(cohort):
        _, masks = _read_case(case)
        positive = np.flatnonzero(masks.any(axis=(1, 2)))
        assert positive.size > 0, case.name
        assert positive[-1] - positive[0] + 1 == positive.size, f"{case.name}: gaps in {positive.tolist()}"


def test_positive_slice_fraction_is_realistic(cohort: Path) -> None:
    positive = total = 0
    for case in _case_dirs(cohort):
        _, masks = _read_case(case)
        positive += int(masks.any(axis=(1, 2)).sum())
        total += masks.shape[0]
    assert 0.25 <= positive / total <= 0.45


def test_brain_is_smaller_at_the_ends_of_the_stack(cohort: Path) -> None:
    for case in _case_dirs(cohort)[:4]:
        images, _ = _read_case(case)
        head_area = (images[..., 1] > 12).sum(axis=(1, 2))
        middle = head_area[len(head_area) // 3 : 2 * len(head_area) // 3].max()
        assert head_area[0] < middle and head_area[-1] < middle, case.name


def test_tumor_is_inside_the_head_and_clearly_brighter_in_flair(cohort: Path) -> None:
    for case in _case_dirs(cohort):
        images, masks = _read_case(case)
        tumor = masks > 0
        flair = images[..., 1].astype(np.float64)
        assert flair[tumor].min() > 12, f"{case.name}: tumor pixel on the background"
        assert not tumor[:, [0, -1], :].any() and not tumor[:, :, [0, -1]].any()
        outside = (flair > 12) & ~tumor  # brain (and scalp) outside the tumor
        contrasts = [
            images[..., channel][tumor].mean() - images[..., channel][outside].mean() for channel in range(3)
        ]
        assert contrasts[1] > 25, f"{case.name}: FLAIR contrast {contrasts[1]:.1f}"
        assert abs(contrasts[0]) < contrasts[1] and abs(contrasts[2]) < contrasts[1], case.name
        assert tumor.sum() < 0.5 * (flair > 12).sum()


def test_patients_span_at_least_four_institutions(cohort: Path) -> None:
    institutions = {CASE_PATTERN.fullmatch(case.name).group(1) for case in _case_dirs(cohort)}
    assert institutions <= set(INSTITUTIONS)
    assert len(institutions) >= 4


@pytest.mark.parametrize("patients", [4, 5, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_four_patients_cover_four_institutions(tmp_path: Path, patients: int, seed: int) -> None:
    root = generate_dataset(tmp_path, patients=patients, slices_min=1, slices_max=1, seed=seed)
    institutions = {CASE_PATTERN.fullmatch(case.name).group(1) for case in _case_dirs(root)}
    assert len(institutions) >= 4


def test_data_csv_has_the_real_header_and_one_row_per_patient(cohort: Path) -> None:
    with (cohort / "data.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    if (REAL_SAMPLE / "data.csv").is_file():
        with (REAL_SAMPLE / "data.csv").open(newline="") as handle:
            assert header == next(csv.reader(handle))
    assert header == list(DATA_CSV_COLUMNS)
    patient_ids = [row[0] for row in rows]
    folder_ids = sorted(case.name.rsplit("_", 1)[0] for case in _case_dirs(cohort))
    assert sorted(patient_ids) == folder_ids
    assert len(set(patient_ids)) == len(patient_ids)
    assert all(len(row) == len(header) for row in rows)
    cells = [cell for row in rows for cell in row[1:]]
    assert "" in cells  # the real table has empty cells too
    assert all(cell == "" or cell.isdigit() for cell in cells)
    ages = [int(row[header.index("age_at_initial_pathologic")]) for row in rows]
    assert all(18 <= age <= 90 for age in ages)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    def tree(folder: str, seed: int) -> dict[str, bytes]:
        return _tree_bytes(generate_dataset(tmp_path / folder, patients=3, slices_min=2, slices_max=4, seed=seed))

    first, again, other = tree("a", 11), tree("b", 11), tree("c", 12)
    assert first == again
    assert first != other
    assert set(first) != set(other)  # other patient IDs, not only other pixels


def test_patient_images_do_not_repeat_across_patients(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path, patients=3, slices_min=3, slices_max=3, seed=5)
    middle_slices = [_read_case(case)[0][1].tobytes() for case in _case_dirs(root)]
    assert len(set(middle_slices)) == 3


def test_existing_data_is_never_overwritten(tmp_path: Path) -> None:
    generate_dataset(tmp_path, patients=1, slices_min=1, slices_max=1, seed=0)
    with pytest.raises(FileExistsError, match="kaggle_3m"):
        generate_dataset(tmp_path, patients=1, slices_min=1, slices_max=1, seed=0)


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ({"patients": 0}, "patients"),
        ({"slices_min": 0, "slices_max": 3}, "slices_min"),
        ({"slices_min": 5, "slices_max": 4}, "slices_max"),
        ({"seed": -1}, "seed"),
        ({"patients": 2.5}, "patients"),
    ],
)
def test_invalid_arguments_name_the_parameter(tmp_path: Path, arguments: dict, parameter: str) -> None:
    valid = {"patients": 2, "slices_min": 1, "slices_max": 3, "seed": 0}
    with pytest.raises(ValueError, match=parameter):
        generate_dataset(tmp_path, **(valid | arguments))
    assert not (tmp_path / "kaggle_3m").exists()


def test_kaggle_zip_holds_the_tree_twice_with_safe_names(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "data", patients=2, slices_min=2, slices_max=3, seed=3)
    zip_path = write_kaggle_zip(root, tmp_path / "nested" / "lgg-mri-segmentation.zip")
    assert zip_path == tmp_path / "nested" / "lgg-mri-segmentation.zip"
    files = _tree_bytes(root)
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        for name in names:
            path = PurePosixPath(name)
            assert not path.is_absolute() and ".." not in path.parts and "\\" not in name, name
        assert sorted(names) == sorted(prefix + relative for prefix in KAGGLE_ZIP_PREFIXES for relative in files)
        for prefix in ("kaggle_3m/", "lgg-mri-segmentation/kaggle_3m/"):
            for relative, content in files.items():
                assert archive.read(prefix + relative) == content
    assert write_kaggle_zip(root, tmp_path / "again.zip").read_bytes() == zip_path.read_bytes()
    assert [path.name for path in zip_path.parent.iterdir()] == [zip_path.name]  # no temp file left


def test_kaggle_zip_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        write_kaggle_zip(tmp_path / "missing", tmp_path / "out.zip")
