"""`lggseg predict` on NIfTI and DICOM: a real patient of the sample written as a NIfTI case and as DICOM
series (known spacing, non-identity orientation, an oblique plane) gives the same probabilities and masks
as its tif slices, written back in the input's own voxel grid; bad volumes are refused, naming the file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

from conftest import PARAMS
from lggseg.cli import main
from lggseg.data.imageio import dicom, nifti
from lggseg.data.imageio.base import CANONICAL_AXES

SPACING = (3.3, 0.94, 0.94)  # slice, row, column (mm)
STORED_AS = ("R", "A", "S")  # how most converters store NIfTI voxels: not the (S, P, L) the model reads
TILT = 10.0  # degrees: an oblique axial plane
ROLES = ("t1", "flair", "t1ce")  # the tif's channels, in order, as BraTS names the files


def predict_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["predict", *args, "--params", str(PARAMS)])
    return code, capsys.readouterr().err


def tif_patient(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W, 3) images and (S, H, W) {0, 1} masks of a patient folder, slice 1 first."""
    count = len(list(folder.glob("*_mask.tif")))
    images = np.stack([tifffile.imread(folder / f"{folder.name}_{n}.tif") for n in range(1, count + 1)])
    masks = np.stack([tifffile.imread(folder / f"{folder.name}_{n}_mask.tif") > 0 for n in range(1, count + 1)])
    return images, masks.astype(np.uint8)


def stored(canonical: np.ndarray) -> np.ndarray:
    """What `nifti.write_volume(axcodes=STORED_AS)` puts in the file's voxels."""
    return apply_orientation(canonical, ornt_transform(axcodes2ornt(CANONICAL_AXES), axcodes2ornt(STORED_AS)))


@pytest.fixture(scope="module")
def real_patient(real_sample) -> Path:
    # every channel of this patient spans 0-255, so the per-volume min-max stretch gives back the tif exactly
    return real_sample / "TCGA_CS_4941_19960909"


@pytest.fixture(scope="module")
def tif_prediction(trained_project, real_patient, tmp_path_factory):
    paths, _ = trained_project
    out = tmp_path_factory.mktemp("tif") / "out"
    assert main(["predict", str(real_patient), "--model", str(paths.model_dir("unet")), "--out", str(out),
                 "--probabilities", "--params", str(PARAMS)]) == 0
    folder = out / real_patient.name
    count = len(list(folder.glob("*_mask.tif")))
    masks = np.stack([tifffile.imread(folder / f"{real_patient.name}_{n}_mask.tif") > 0 for n in range(1, count + 1)])
    probs = np.stack([tifffile.imread(folder / f"{real_patient.name}_{n}_prob.tif") for n in range(1, count + 1)])
    return masks.astype(np.uint8), probs, json.loads((folder / "report.json").read_text())


def write_nifti_case(folder: Path, case: str, images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    for channel, role in enumerate(ROLES):  # float intensities on another scale, as a scanner's
        affine = nifti.write_volume(folder / f"{case}_{role}.nii.gz", images[..., channel].astype(np.float32) * 2.5 + 10,
                                    SPACING, axcodes=STORED_AS, tilt_degrees=TILT)
    if masks is not None:
        nifti.write_volume(folder / f"{case}_seg.nii.gz", masks * np.uint8(2), SPACING, axcodes=STORED_AS,
                           tilt_degrees=TILT)
    return affine


def test_a_nifti_case_gives_the_tif_slices_masks_in_its_own_geometry(trained_project, real_patient, tif_prediction,
                                                                      tmp_path, capsys):
    paths, _ = trained_project
    images, truth = tif_patient(real_patient)
    case = real_patient.name
    affine = write_nifti_case(tmp_path / "in", case, images, truth)
    code, err = predict_cli(capsys, str(tmp_path / "in"), "--model", str(paths.model_dir("unet")),
                            "--out", str(tmp_path / "out"), "--probabilities")
    assert code == 0, err
    tif_masks, tif_probs, tif_report = tif_prediction
    written = nib.load(tmp_path / "out" / case / f"{case}_mask.nii.gz")
    source = nib.load(tmp_path / "in" / f"{case}_flair.nii.gz")
    # the input's grid: same shape, affine, transforms and codes; overlaid voxel for voxel
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-6)
    assert int(written.header["sform_code"]) == int(source.header["sform_code"]) == 1
    assert np.allclose(written.header.get_qform(), source.header.get_qform(), atol=1e-6)
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(written.dataobj), stored(tif_masks))
    probs = np.asarray(nib.load(tmp_path / "out" / case / f"{case}_prob.nii.gz").dataobj)
    np.testing.assert_allclose(probs, stored(tif_probs), atol=1e-6)
    report = json.loads((tmp_path / "out" / case / "report.json").read_text())
    voxels = int(tif_masks.sum())
    assert report["patient"]["volume_voxels"] == voxels == tif_report["patient"]["volume_voxels"]
    assert report["patient"]["volume_mm3"] == pytest.approx(voxels * np.prod(written.header.get_zooms()), rel=1e-6)
    assert report["patient"]["volume_mm3"] == pytest.approx(voxels * np.prod(SPACING), rel=1e-6)
    assert report["patient"]["dice"] == pytest.approx(tif_report["patient"]["dice"], abs=1e-12)  # from _seg
    geometry = report["input"]["geometry"]
    assert report["input"]["format"] == "nifti" and geometry["orientation"] == "RAS"
    assert geometry["channels"] == {"pre-contrast": str(tmp_path / "in" / f"{case}_t1.nii.gz"),
                                    "FLAIR": str(tmp_path / "in" / f"{case}_flair.nii.gz"),
                                    "post-contrast": str(tmp_path / "in" / f"{case}_t1ce.nii.gz")}
    assert any("oblique acquisition (10.0 degrees" in note for note in report["notes"])
    assert np.allclose(geometry["affine"], affine, atol=1e-5)
    html = (tmp_path / "out" / case / "report.html").read_text()
    assert "nifti" in html.lower() and "RAS" in html


def test_a_dicom_study_gives_the_tif_slices_masks_in_the_series_geometry(trained_project, real_patient,
                                                                         tif_prediction, tmp_path, capsys):
    from pydicom.uid import generate_uid

    paths, _ = trained_project
    images, _ = tif_patient(real_patient)
    study, frame = generate_uid(), generate_uid()
    for series, description in enumerate(("T1 AX pre", "AX T2 FLAIR", "T1 AX post Gd")):
        dicom.write_series(tmp_path / "study" / f"series{series}", images[..., series].astype(np.uint16) * 7 + 3,
                           spacing=SPACING, description=description, series_number=series + 2, study_uid=study,
                           patient_id="ANON", tilt_degrees=TILT, frame_uid=frame)
    code, err = predict_cli(capsys, str(tmp_path / "study"), "--model", str(paths.model_dir("unet")),
                            "--out", str(tmp_path / "out"), "--probabilities")
    assert code == 0, err
    tif_masks, tif_probs, tif_report = tif_prediction
    written = nib.load(tmp_path / "out" / "study" / "study_mask.nii.gz")
    # voxel order (column, row, slice) of the series, slices sorted by position (the files are named in reverse)
    assert written.shape == (256, 256, len(images))
    assert np.array_equal(np.asarray(written.dataobj), tif_masks.transpose(2, 1, 0))
    probs = np.asarray(nib.load(tmp_path / "out" / "study" / "study_prob.nii.gz").dataobj)
    np.testing.assert_allclose(probs, tif_probs.transpose(2, 1, 0), atol=1e-6)
    # voxel (0, 0, k) lies at slice k's ImagePositionPatient (LPS), in RAS
    for k in (0, len(images) - 1):
        first = sorted(dicom.dicom_files(tmp_path / "study" / "series1"))[len(images) - 1 - k]
        lps = np.array(__import__("pydicom").dcmread(first).ImagePositionPatient, dtype=float)
        assert np.allclose(written.affine @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)
    assert np.allclose(written.header.get_zooms(), (0.94, 0.94, 3.3), atol=1e-5)
    report = json.loads((tmp_path / "out" / "study" / "report.json").read_text())
    assert report["input"]["format"] == "dicom"
    assert report["patient"]["volume_mm3"] == pytest.approx(int(tif_masks.sum()) * np.prod(SPACING), rel=1e-6)
    assert report["input"]["geometry"]["dicom"]["SeriesDescription"] == "AX T2 FLAIR"
    assert set(report["input"]["geometry"]["channels"]) == {"pre-contrast", "FLAIR", "post-contrast"}
    assert "ANON" not in json.dumps(report)  # the PatientID stays out of the report
    assert tif_report["patient"]["volume_voxels"] == report["patient"]["volume_voxels"]


def test_a_flair_only_volume_says_which_channels_were_copied(trained_project, real_patient, tmp_path, capsys):
    paths, _ = trained_project
    images, _ = tif_patient(real_patient)
    (tmp_path / "in").mkdir()
    nifti.write_volume(tmp_path / "in" / "scan.nii.gz", images[..., 1], SPACING)
    code, err = predict_cli(capsys, str(tmp_path / "in" / "scan.nii.gz"), "--model", str(paths.model_dir("unet")),
                            "--out", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "scan" / "report.json").read_text())
    assert report["input"]["geometry"]["channels"]["pre-contrast"] == "FLAIR copied (missing)"
    assert any("the FLAIR was copied into that channel" in note for note in report["notes"])
    assert (tmp_path / "out" / "scan" / "scan_mask.nii.gz").is_file()
    # a folder of case folders, as BraTS ships its cases
    for case in ("BraTS_001", "BraTS_002"):
        (tmp_path / "brats" / case).mkdir(parents=True)
        nifti.write_volume(tmp_path / "brats" / case / f"{case}_flair.nii.gz", images[..., 1], SPACING)
        nifti.write_volume(tmp_path / "brats" / case / f"{case}_t2.nii.gz", images[..., 0], SPACING)  # not used
    code, err = predict_cli(capsys, str(tmp_path / "brats"), "--model", str(paths.model_dir("unet")),
                            "--out", str(tmp_path / "brats-out"))
    assert code == 0, err
    summary = (tmp_path / "brats-out" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[1].startswith("BraTS_001,")


def _volume(tmp_path: Path, name: str, data: np.ndarray, affine: np.ndarray, codes: int = 1) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=codes)
    image.set_sform(affine, code=codes)
    nib.save(image, tmp_path / name)
    return tmp_path / name


BRAIN = np.random.default_rng(0).integers(0, 255, (20, 24, 8)).astype(np.float32)


@pytest.mark.parametrize("bad, message", [
    ("not_nifti", "not a NIfTI image"),
    ("four_d", "a 4-D image of shape 20 x 24 x 8 x 2; expected one 3-D volume per file"),
    ("no_orientation", "the orientation cannot be determined (qform_code and sform_code are 0"),
    ("sagittal_thick", "not an axial acquisition"),
    ("truncated", "cannot read its voxels"),
    ("other_grid", "not on the voxel grid of case_flair.nii.gz"),
])
def test_a_bad_nifti_is_refused_in_one_line_naming_it(trained_project, tmp_path, capsys, bad, message):
    paths, _ = trained_project
    name = tmp_path / "case_flair.nii.gz"
    if bad == "not_nifti":
        name.write_bytes(gzip.compress(b"just some text, not an image\n" * 20))
    elif bad == "four_d":
        _volume(tmp_path, name.name, np.stack([BRAIN, BRAIN], axis=-1), np.diag([1.0, 1, 1, 1]))
    elif bad == "no_orientation":
        _volume(tmp_path, name.name, BRAIN, np.diag([1.0, 1, 1, 1]), codes=0)
    elif bad == "sagittal_thick":  # 5 mm sagittal slices: the axial plane would have 5 x 1 mm pixels
        _volume(tmp_path, name.name, BRAIN, np.diag([5.0, 1, 1, 1]))
    elif bad == "truncated":
        full = _volume(tmp_path, "full.nii", BRAIN, np.diag([1.0, 1, 1, 1]))
        name = tmp_path / "case_flair.nii"
        name.write_bytes(full.read_bytes()[:2000])
        full.unlink()
    else:
        _volume(tmp_path, name.name, BRAIN, np.diag([1.0, 1, 1, 1]))
        target = _volume(tmp_path, "case_t1.nii.gz", BRAIN[:, :, :6], np.diag([1.0, 1, 1, 1]))
        name = target
    code, err = predict_cli(capsys, str(tmp_path), "--model", str(paths.model_dir("unet")), "--out",
                            str(tmp_path.parent / f"{tmp_path.name}-out"))
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(lines) == 1 and str(name) in lines[0] and message in lines[0], err


@pytest.mark.parametrize("bad, message", [
    ("missing_slice", "inconsistent slice spacing"),
    ("same_position", "at the same position as"),
    ("two_flair", "several series say FLAIR"),
])
def test_a_bad_dicom_series_is_refused_naming_it(trained_project, tmp_path, capsys, bad, message):
    from pydicom.uid import generate_uid

    paths, _ = trained_project
    volume = (BRAIN.transpose(2, 0, 1) * 10).astype(np.uint16)
    study = generate_uid()
    files = dicom.write_series(tmp_path / "study" / "a", volume, spacing=(3.0, 1.0, 1.0), description="AX FLAIR",
                               series_number=1, study_uid=study, patient_id="P")
    if bad == "missing_slice":
        files[3].unlink()
    elif bad == "same_position":
        import pydicom

        ds = pydicom.dcmread(files[2])
        ds.ImagePositionPatient = pydicom.dcmread(files[3]).ImagePositionPatient
        ds.save_as(files[2])
    else:
        dicom.write_series(tmp_path / "study" / "b", volume, spacing=(3.0, 1.0, 1.0), description="FLAIR 2",
                           series_number=2, study_uid=study, patient_id="P")
    code, err = predict_cli(capsys, str(tmp_path / "study"), "--model", str(paths.model_dir("unet")), "--out",
                            str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(lines) == 1 and message in lines[0], err
    if bad == "two_flair":  # --series picks one
        code, err = predict_cli(capsys, str(tmp_path / "study"), "--model", str(paths.model_dir("unet")), "--out",
                                str(tmp_path / "out"), "--series", "2")
        assert code == 0, err
        report = json.loads((tmp_path / "out" / "study" / "report.json").read_text())
        assert report["input"]["geometry"]["dicom"]["SeriesDescription"] == "FLAIR 2"
