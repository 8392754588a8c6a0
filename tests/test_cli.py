import zipfile

import pytest

from conftest import PARAMS, tiny_config
from lggseg.cli import main
from lggseg.core.redaction import redact
from lggseg.tracking.store import project_root


def test_stage_error_is_reported_once_with_the_file(tmp_path, capsys):
    code = main(["split", "--params", str(PARAMS), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("error:") == 1 and "slices.csv is missing (run the index stage)" in err


def test_bad_override_names_the_key(tmp_path, capsys):
    code = main(["index", "--params", str(PARAMS), "--root", str(tmp_path), "--set", "data.index.strikt=true"])
    assert code == 1 and "data.index.strikt" in capsys.readouterr().err


def test_train_needs_an_architecture():
    with pytest.raises(SystemExit):
        main(["train", "--params", str(PARAMS)])


def test_synth_writes_tree_and_kaggle_zip(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "syn"), "--patients", "2", "--slices-min", "3", "--slices-max", "4",
                 "--zip", str(tmp_path / "lgg.zip")]) == 0
    patients = [p for p in (tmp_path / "syn" / "kaggle_3m").iterdir() if p.is_dir()]
    assert len(patients) == 2
    names = zipfile.ZipFile(tmp_path / "lgg.zip").namelist()
    assert any(n.startswith("kaggle_3m/") for n in names) and any(n.startswith("lgg-mri-segmentation/kaggle_3m/") for n in names)


def test_synth_writes_each_layout_a_reader_of_lggseg_reads(tmp_path, capsys):
    from lggseg.data.dataset_layouts import index_dataset
    from lggseg.data.imageio import dicom
    from lggseg.data.scans import find_patients, read_scan

    common = ["--patients", "2", "--slices-min", "3", "--slices-max", "4"]
    for layout in ("slices", "nifti", "dicom"):
        assert main(["synth", str(tmp_path), "--layout", layout, *common]) == 0
        assert f"wrote {tmp_path / f'synthetic_{layout}'}" in capsys.readouterr().out
    for layout in ("slices", "nifti"):
        slices, _ = index_dataset(tmp_path / f"synthetic_{layout}", tiny_config().data)
        assert slices["patient_id"].nunique() == 2 and slices["patient_id"].str.startswith("SYNTH_").all()
    study = next(p for p in (tmp_path / "synthetic_dicom").iterdir() if p.is_dir())
    assert len({dicom.pydicom.dcmread(f).SeriesInstanceUID for f in dicom.dicom_files(study)}) == 3
    scans, _ = find_patients(study)
    assert set(read_scan(scans[0], flair_only=False).volume.geometry.channels) == {"pre-contrast", "FLAIR",
                                                                                   "post-contrast"}
    with pytest.raises(SystemExit):  # argparse: not a layout
        main(["synth", str(tmp_path / "x"), "--layout", "png"])
    assert main(["synth", str(tmp_path / "z"), "--layout", "nifti", "--zip", str(tmp_path / "a.zip")]) == 1
    assert "--zip writes the Kaggle archive: it goes with --layout kaggle, not nifti" in capsys.readouterr().err


def test_temp_experiment_copies_log_into_the_repository_store(tmp_path):
    repo = tmp_path / "repo"
    assert project_root(repo / ".dvc" / "tmp" / "exps" / "tmpabc123") == repo
    assert project_root(repo) == repo


def test_credentials_in_uris_are_redacted():
    assert redact("http://alice:s3cret@mlflow.example:5000/api") == "http://***@mlflow.example:5000/api"
    assert redact("postgresql://u:p@db/mlflow") == "postgresql://***@db/mlflow"
    assert redact("sqlite:////abs/mlruns/mlflow.db") == "sqlite:////abs/mlruns/mlflow.db"


def test_version(capsys):
    from lggseg import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lggseg {__version__}" and __version__[0].isdigit()
