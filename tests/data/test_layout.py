import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.data.layout import DatasetError, build_index, is_synthetic_case, parse_patient_id


def _first_patient(paths: Paths) -> Path:
    return sorted(p for p in paths.dataset.iterdir() if p.is_dir())[0]


def test_patient_folder_names_are_real_tcga_or_synthetic():
    assert parse_patient_id("TCGA_CS_4941_19960909") == ("TCGA_CS_4941", "CS")
    assert parse_patient_id("SYNTH_HT_0A1B_20000101") == ("SYNTH_HT_0A1B", "HT")  # the institution stays parsed
    assert is_synthetic_case("SYNTH_HT_0A1B_20000101") and not is_synthetic_case("TCGA_CS_4941_19960909")
    for name in ("SYN_CS_4941_19960909", "TCGA_CS_4941", "synth_CS_4941_19960909"):
        with pytest.raises(DatasetError, match=name):
            parse_patient_id(name)


def test_synthetic_index_names_every_patient_synthetic(synthetic_tree):
    slices, _ = build_index(synthetic_tree)
    assert slices["patient_id"].map(is_synthetic_case).all() and slices["case_id"].str.startswith("SYNTH_").all()


def test_real_sample_index(real_sample):
    slices, dropped = build_index(real_sample)
    assert len(slices) == 116 and int(slices["has_tumor"].sum()) == 37 and dropped.empty
    assert slices["patient_id"].nunique() == 5
    per_patient = slices.groupby("patient_id")["slice"].agg(["count", "min", "max"])
    assert (per_patient["min"] == 1).all() and (per_patient["count"] == per_patient["max"]).all()
    first = slices[slices["patient_id"] == "TCGA_CS_4941_19960909"]
    assert first["slice"].tolist() == list(range(1, 24))  # numeric order: 10 after 9
    assert first["case_id"].iloc[0] == "TCGA_CS_4941" and first["institution"].iloc[0] == "CS"
    # joined with data.csv: TCGA_CS_4941 has age 67 and RNASeqCluster 2 in the real file
    assert first["age_at_initial_pathologic"].iloc[0] == 67 and first["RNASeqCluster"].iloc[0] == 2
    assert (slices["tumor_pixels"] > 0).eq(slices["has_tumor"]).all()


def test_synthetic_index_columns_and_order(synthetic_tree):
    slices, _ = build_index(synthetic_tree)
    for column in ("patient_id", "case_id", "institution", "slice", "image_path", "mask_path", "tumor_pixels",
                   "has_tumor", "RNASeqCluster", "death01"):
        assert column in slices.columns
    assert (synthetic_tree / slices["image_path"].iloc[0]).is_file()
    assert not Path(slices["image_path"].iloc[0]).is_absolute()
    assert slices.groupby("patient_id")["slice"].apply(lambda s: s.is_monotonic_increasing).all()


def _break_missing_mask(paths):
    victim = sorted(_first_patient(paths).glob("*_3_mask.tif"))[0]
    victim.unlink()
    return victim.name.replace("_mask", ""), "image_without_mask"


def _break_missing_image(paths):
    victim = sorted(_first_patient(paths).glob("*_4.tif"))[0]
    victim.unlink()
    return victim.name.replace(".tif", "_mask.tif"), "mask_without_image"


def _break_unreadable(paths):
    victim = sorted(_first_patient(paths).glob("*_5.tif"))[0]
    victim.write_bytes(b"not a tif at all")
    return victim.name, "unreadable_tif"


def _break_shape(paths):
    victim = sorted(_first_patient(paths).glob("*_6.tif"))[0]
    tifffile.imwrite(victim, np.zeros((128, 128, 3), np.uint8))
    return victim.name, "bad_image"


def _break_dtype(paths):
    victim = sorted(_first_patient(paths).glob("*_6_mask.tif"))[0]
    tifffile.imwrite(victim, np.zeros((256, 256), np.uint16))
    return victim.name, "bad_mask"


def _break_mask_values(paths):
    victim = sorted(_first_patient(paths).glob("*_7_mask.tif"))[0]
    mask = np.zeros((256, 256), np.uint8)
    mask[10:20, 10:20] = 128
    tifffile.imwrite(victim, mask)
    return victim.name, "bad_mask_values"


def _break_empty_patient(paths):
    empty = paths.dataset / "SYNTH_ZZ_0000_20000101"
    empty.mkdir()
    return empty.name, "empty_patient_folder"


def _break_duplicate_slice_number(paths):
    victim = sorted(_first_patient(paths).glob("*_3.tif"))[0]  # `_03.tif` is slice 3 as well
    shutil.copy(victim, victim.with_name(victim.name.replace("_3.tif", "_03.tif")))
    return victim.name.replace("_3.tif", "_03.tif"), "duplicate_slice_number"


def _break_link_outside(paths):
    victim = sorted(_first_patient(paths).glob("*_4.tif"))[0]
    elsewhere = paths.root.parent / f"elsewhere-{paths.root.name}.tif"
    shutil.copy(victim, elsewhere)  # a valid slice, but not of this data set
    victim.unlink()
    victim.symlink_to(elsewhere)
    return victim.name, "link_outside_data"


BREAKERS = [_break_missing_mask, _break_missing_image, _break_unreadable, _break_shape, _break_dtype,
            _break_mask_values, _break_empty_patient, _break_duplicate_slice_number, _break_link_outside]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[7:])
def test_strict_index_names_the_file_and_keeps_old_output(project, breaker):
    cfg = tiny_config()
    pipeline.index(cfg, project)
    good = project.slices_csv.read_bytes()
    name, kind = breaker(project)
    with pytest.raises(DatasetError) as err:
        pipeline.index(cfg, project)
    assert name in str(err.value) and kind in str(err.value) and "data.index.strict: false" in str(err.value)
    assert project.slices_csv.read_bytes() == good  # the earlier good output survives
    assert not list(project.interim.glob(".*.tmp"))


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[7:])
def test_lenient_index_drops_and_lists(project, breaker):
    before, _ = build_index(project.dataset)
    name, kind = breaker(project)
    pipeline.index(tiny_config("data.index.strict=false"), project)
    slices = pd.read_csv(project.slices_csv)
    dropped = pd.read_csv(project.dropped_csv)
    assert kind in set(dropped["kind"]) and dropped["path"].str.contains(name, regex=False).any()
    assert not slices["image_path"].str.contains(name, regex=False).any()
    assert not slices["mask_path"].str.contains(name, regex=False).any()
    assert len(slices) >= len(before) - 1


def test_strict_lists_all_files_of_a_kind(project):
    patient = _first_patient(project)
    removed = [sorted(patient.glob(f"*_{n}_mask.tif"))[0] for n in (2, 9)]
    for f in removed:
        f.unlink()
    with pytest.raises(DatasetError, match="2 file\\(s\\) fail validation \\(image_without_mask\\)") as err:
        build_index(project.dataset)
    for f in removed:
        assert f.name.replace("_mask", "") in str(err.value)


def test_slice_gap_warns(project, caplog):
    patient = _first_patient(project)
    for f in patient.glob(f"{patient.name}_5*.tif"):
        if f.name in (f"{patient.name}_5.tif", f"{patient.name}_5_mask.tif"):
            f.unlink()
    with caplog.at_level(logging.WARNING):
        slices, dropped = build_index(project.dataset)
    assert dropped.empty and 5 not in slices.loc[slices["patient_id"] == patient.name, "slice"].tolist()
    assert any("slice numbers missing: [5]" in r.getMessage() for r in caplog.records)


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="data set folder not found: .*kaggle_3m"):
        build_index(tmp_path / "kaggle_3m")


def test_missing_data_csv_is_named(project):
    (project.dataset / "data.csv").unlink()
    with pytest.raises(DatasetError, match="data.csv is missing"):
        build_index(project.dataset)


def _data_csv_lines(paths: Paths) -> list[str]:
    return (paths.dataset / "data.csv").read_text().splitlines()


def _indexed_row(lines: list[str], paths: Paths) -> int:
    """The position in `lines` of the data.csv row of the first patient folder (one that is indexed)."""
    case_id = "_".join(_first_patient(paths).name.split("_")[:3])
    return next(i for i, line in enumerate(lines) if line.startswith(case_id + ","))


def _short_row(paths):
    lines = _data_csv_lines(paths)
    i = _indexed_row(lines, paths)
    lines[i] = ",".join(lines[i].split(",")[:5])
    return lines, f"line {i + 1} ({lines[i].split(',')[0]}): 5 fields, the header has"


def _long_row(paths):
    lines = _data_csv_lines(paths)
    i = _indexed_row(lines, paths)
    lines[i] += ",1,2"
    return lines, f"line {i + 1} ({lines[i].split(',')[0]}): {lines[i].count(',') + 1} fields, the header has"


def _no_patient_id(paths):
    lines = _data_csv_lines(paths)
    lines.append("," + ",".join(lines[1].split(",")[1:]))
    return lines, f"line {len(lines)} (no patient ID): the Patient field is empty"


def _patient_twice(paths):
    lines = _data_csv_lines(paths)
    i = _indexed_row(lines, paths)
    header = lines[0].split(",")
    age = header.index("age_at_initial_pathologic")
    copy = lines[i].split(",")
    copy[age] = str(int(copy[age]) + 30)
    lines.append(",".join(copy))
    return lines, f"line {len(lines)} ({copy[0]}): patient listed again (line {i + 1}) with other age_at_initial_pathologic"


DATA_CSV_BREAKERS = [_short_row, _long_row, _no_patient_id, _patient_twice]


@pytest.mark.parametrize("breaker", DATA_CSV_BREAKERS, ids=lambda f: f.__name__[1:])
def test_a_malformed_data_csv_row_is_refused_in_strict_mode_naming_line_and_patient(project, breaker):
    cfg = tiny_config()
    pipeline.index(cfg, project)
    good = project.slices_csv.read_bytes()
    lines, expected = breaker(project)
    (project.dataset / "data.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        pipeline.index(cfg, project)
    message = str(err.value)
    assert expected in message and "data.csv" in message and "data.index.strict: false" in message
    assert "\n" not in message
    assert project.slices_csv.read_bytes() == good


@pytest.mark.parametrize("breaker", DATA_CSV_BREAKERS, ids=lambda f: f.__name__[1:])
def test_a_malformed_data_csv_row_is_warned_about_in_lenient_mode(project, breaker, caplog):
    before, _ = build_index(project.dataset)
    lines, expected = breaker(project)
    (project.dataset / "data.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        pipeline.index(tiny_config("data.index.strict=false"), project)
    assert any(expected in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    slices = pd.read_csv(project.slices_csv)
    assert len(slices) == len(before)  # one row per slice: a repeated patient is not joined twice
    first = _first_patient(project).name
    ages = slices.loc[slices["patient_id"] == first, "age_at_initial_pathologic"]
    original = before.loc[before["patient_id"] == first, "age_at_initial_pathologic"]
    if breaker is _patient_twice:  # the first row is the one used
        assert ages.tolist() == original.tolist()


def test_empty_cells_of_a_complete_data_csv_row_are_fine(real_sample, caplog):
    """The real data.csv has empty cells; that is no malformed row."""
    with caplog.at_level(logging.WARNING):
        build_index(real_sample, strict=True)
    assert not [r for r in caplog.records if "data.csv" in r.getMessage()]
