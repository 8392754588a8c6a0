import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from lggseg import pipeline
from lggseg.data.layout import DatasetError, build_index
from lggseg.paths import Paths

from conftest import tiny_config


@pytest.fixture
def project(tmp_path, synthetic_tree) -> Paths:
    """A project whose data/raw/kaggle_3m is a private copy of the synthetic tree (safe to damage)."""
    paths = Paths.at(tmp_path)
    shutil.copytree(synthetic_tree, paths.dataset)
    return paths


def _first_patient(paths: Paths) -> Path:
    return sorted(p for p in paths.dataset.iterdir() if p.is_dir())[0]


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
    empty = paths.dataset / "TCGA_ZZ_0000_20000101"
    empty.mkdir()
    return empty.name, "empty_patient_folder"


BREAKERS = [_break_missing_mask, _break_missing_image, _break_unreadable, _break_shape, _break_dtype,
            _break_mask_values, _break_empty_patient]


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
