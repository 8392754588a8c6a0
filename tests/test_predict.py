"""`lggseg predict` end to end: models trained in the tests, synthetic and real patients, the registry and
local folders, the reports, and every kind of bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from conftest import PARAMS, mlflow_client, tiny_config
from lggseg import pipeline
from lggseg.cli import main
from lggseg.core.paths import Paths
from lggseg.data.preprocess import prepare_mask
from lggseg.evaluation.evaluate import count_table
from lggseg.metrics.segmentation import segmentation_summary, slice_dice
from lggseg.model.devices import resolve_runtime
from lggseg.model.inference import predict_probabilities
from lggseg.model.networks import ModelSpec, create_model

SYNTHETIC_CHAMPION = "models:/lgg-synthetic-segmentation@champion"  # TINY trains on synthetic data
EXTERNAL = re.compile(r"https?://|<link\b|<script[^>]*\bsrc=|\bsrc=\"(?!data:)", re.IGNORECASE)


def run_predict(capsys, *args: str) -> tuple[int, str, str]:
    if "--params" not in args:  # never the user's params.yaml
        args = (*args, "--params", str(PARAMS))
    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return code, out, err


def split_test_patients(paths: Paths) -> list[Path]:
    splits = json.loads(paths.splits_json.read_text())
    return [paths.dataset / patient for patient in splits["test"]]


def written_masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*_mask.tif"))}


def truth_and_prediction(patient: Path, predicted: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Ground truth and written prediction ({0, 1}, slice order) with the slice table the metric code takes."""
    numbers = sorted(int(p.stem.rsplit("_", 2)[-2]) for p in patient.glob("*_mask.tif"))
    truth = np.stack([tifffile.imread(patient / f"{patient.name}_{n}_mask.tif") > 0 for n in numbers])
    pred = np.stack([tifffile.imread(predicted / f"{patient.name}_{n}_mask.tif") > 0 for n in numbers])
    table = pd.DataFrame({"patient_id": patient.name, "slice": numbers})
    return truth.astype(np.uint8), pred.astype(np.uint8), table


def dice_at_model_size(patient: Path, predicted: Path, size: int) -> float:
    """The per-patient Dice of the written masks brought back to the model's size. Evaluation scored
    these very masks at that size (the written ones are them, enlarged by nearest neighbour), so this
    is evaluation's Dice exactly."""
    truth, pred, table = truth_and_prediction(patient, predicted)
    small = lambda masks: np.stack([prepare_mask(m, size) for m in masks])  # noqa: E731
    return segmentation_summary(count_table(small(truth), small(pred), table))["dice_patient_mean"]


def check_report_matches_metric_code(patient: Path, predicted: Path) -> dict:
    """report.json's Dice (per patient and per slice) is what the evaluation's metric code gives on the same
    slices; returns the report."""
    report = json.loads((predicted / "report.json").read_text())
    truth, pred, table = truth_and_prediction(patient, predicted)
    counts = count_table(truth, pred, table)
    assert report["patient"]["dice"] == pytest.approx(segmentation_summary(counts)["dice_patient_mean"], abs=1e-12)
    assert [s["dice"] for s in report["slices"]] == pytest.approx(slice_dice(counts).tolist(), abs=1e-12)
    assert [s["predicted_pixels"] for s in report["slices"]] == pred.reshape(len(pred), -1).sum(axis=1).tolist()
    return report


def test_predict_a_patient_with_the_champion_writes_masks_and_reports(trained_project, tmp_path, capsys):
    paths, _ = trained_project
    patient = split_test_patients(paths)[0]
    out = tmp_path / "out"
    code, stdout, err = run_predict(capsys, str(patient), "--model", SYNTHETIC_CHAMPION, "--out", str(out),
                                    "--root", str(paths.root), "--params", str(PARAMS))
    assert code == 0, err
    folder = out / patient.name
    assert f"{patient.name}: " in stdout and "report.html" in stdout
    masks = written_masks(folder)
    assert set(masks) == {p.name for p in patient.glob("*_mask.tif")}  # named like the data set's
    for mask in masks.values():
        assert mask.dtype == np.uint8 and mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    report = check_report_matches_metric_code(patient, folder)
    assert report["model"]["uri"] == "models:/lgg-synthetic-segmentation@champion"
    champion = mlflow_client(paths).get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
    assert report["model"]["registered_model"] == "lgg-synthetic-segmentation"
    assert report["model"]["version"] == str(champion.version)
    assert report["model"]["run_id"] == champion.run_id
    assert report["model"]["size"] == 64 and report["model"]["channels"] == "all"
    assert report["patient"]["dice"] > 0.4  # a trained model on an easy synthetic patient
    assert len(report["slices"]) == len(masks) and all(len(s["sha256"]) == 64 for s in report["slices"])
    assert report["patient"]["volume_voxels"] == sum(int((m > 0).sum()) for m in masks.values())
    assert report["patient"]["volume_mm3"] is None and "not a diagnostic device" in report["disclaimer"]
    html = (folder / "report.html").read_text()
    assert not EXTERNAL.search(html) and "data:image/png;base64," in html
    assert not (out / "summary.csv").exists()  # one patient: no index


def test_the_model_says_what_it_was_trained_on_and_warns_off_synthetic_data(trained_project, patient_copy, tmp_path,
                                                                            capsys):
    paths, _ = trained_project
    patient = split_test_patients(paths)[0]
    common = ("--model", SYNTHETIC_CHAMPION, "--root", str(paths.root))
    manifest = json.loads((paths.processed / "manifest.json").read_text())
    # on synthetic scans (the data set's own folder records it): what it was trained on, no warning
    code, _, err = run_predict(capsys, str(patient), *common, "--out", str(tmp_path / "synthetic"))
    assert code == 0, err
    report = json.loads((tmp_path / "synthetic" / patient.name / "report.json").read_text())
    trained_on = report["model"]["trained_on"]
    assert trained_on["data_source"] == "synthetic" and trained_on["data_fingerprint"] == manifest["fingerprint"]
    assert trained_on["patients"] == {s: manifest["splits"][s]["patients"] for s in ("train", "val", "test")}
    assert trained_on["slices"] == {s: manifest["splits"][s]["slices"] for s in ("train", "val")}
    assert trained_on["input_size"] == manifest["size"] and report["warnings"] == []
    assert f"trained on synthetic data: {manifest['splits']['train']['patients']} train" in err
    assert "SYNTHETIC data only" not in err
    # the same patient copied out of its data set has no record of being synthetic: a warning everywhere
    code, _, err = run_predict(capsys, str(patient_copy.parent), *common, "--out", str(tmp_path / "unknown"))
    assert code == 0, err
    report = json.loads((tmp_path / "unknown" / patient.name / "report.json").read_text())
    assert "trained on SYNTHETIC data only" in err and "no synthetic-data record" in report["warnings"][0]
    for page in (tmp_path / "unknown" / patient.name / "report.html", tmp_path / "unknown" / "index.html"):
        assert "SYNTHETIC data only" in page.read_text(), page


def test_registry_uri_and_local_folder_give_identical_masks(trained_project, tmp_path, capsys):
    paths, _ = trained_project
    patient = split_test_patients(paths)[-1]
    common = ("--root", str(paths.root), "--params", str(PARAMS))
    # the version registered by the latest evaluation of models/unet (other tests may have added versions)
    version = str(mlflow_client(paths).get_model_version_by_alias("lgg-synthetic-unet", "candidate").version)
    for name, model in (("registry", f"models:/lgg-synthetic-unet/{version}"), ("local", str(paths.model_dir("unet")))):
        code, _, err = run_predict(capsys, str(patient), "--model", model, "--out", str(tmp_path / name), *common)
        assert code == 0, err
    registry, local = (written_masks(tmp_path / n / patient.name) for n in ("registry", "local"))
    assert registry.keys() == local.keys() and all(np.array_equal(registry[k], local[k]) for k in registry)
    reports = [json.loads((tmp_path / n / patient.name / "report.json").read_text()) for n in ("registry", "local")]
    assert reports[0]["patient"] == reports[1]["patient"]
    assert reports[0]["model"]["version"] == version and reports[1]["model"]["version"] is None


def test_the_registered_model_carries_its_preprocessing_and_has_no_pickle(trained_project):
    """MLflow users get the settings too (the model's metadata), and the network is a torch.export archive."""
    from mlflow.models import Model

    paths, _ = trained_project
    client = mlflow_client(paths)
    version = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
    folder = Path(client.get_logged_model(version.source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    settings = Model.load(str(folder / "MLmodel")).metadata["lggseg"]
    assert settings["preprocess"] == {"size": 64, "channels": "all"} and settings["spec"]["encoder"] == "resnet18"
    assert settings == json.loads((folder / "extra_files" / "inference.json").read_text())
    assert (folder / "data" / "model.pt2").is_file() and not list(folder.rglob("*.pth"))
    assert torch.load(folder / "extra_files" / "best.pt", weights_only=True)["preprocess"] == settings["preprocess"]


def test_an_unknown_model_uri_lists_what_the_registry_holds(trained_project, tmp_path, capsys):
    paths, _ = trained_project
    code, _, err = run_predict(capsys, str(split_test_patients(paths)[0]), "--model", "models:/lgg-nothing@champion",
                               "--out", str(tmp_path / "out"), "--root", str(paths.root), "--params", str(PARAMS))
    assert code == 1
    assert "models:/lgg-nothing@champion" in err and "is not in the registry" in err
    client = mlflow_client(paths)
    for name, alias in (("lgg-synthetic-unet", "candidate"), ("lgg-synthetic-fpn", "candidate"),
                        ("lgg-synthetic-segmentation", "champion")):
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        current = client.get_model_version_by_alias(name, alias).version
        assert f"{name} (versions {', '.join(map(str, versions))}; @{alias}={current})" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_patients_gets_a_summary_and_an_index(trained_project, tmp_path, capsys):
    paths, _ = trained_project
    source = tmp_path / "kaggle_3m"
    source.mkdir()
    for patient in split_test_patients(paths):
        shutil.copytree(patient, source / patient.name)
    shutil.copy(paths.dataset / "data.csv", source / "data.csv")  # other files in the tree are ignored
    out = tmp_path / "out"
    code, stdout, err = run_predict(capsys, str(source), "--model", str(paths.model_dir("fpn")), "--out", str(out),
                                    "--root", str(paths.root))
    assert code == 0, err
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["case"]) == sorted(p.name for p in source.iterdir() if p.is_dir())
    assert "index.html" in stdout
    index = (out / "index.html").read_text()
    assert not EXTERNAL.search(index)
    for case in summary["case"]:
        assert f'href="{case}/report.html"' in index and (out / case / "report.html").is_file()
        check_report_matches_metric_code(source / case, out / case)


def test_a_single_slice(trained_project, tmp_path, capsys):
    paths, _ = trained_project
    image = sorted(p for p in split_test_patients(paths)[0].glob("*.tif") if not p.stem.endswith("_mask"))[0]
    code, _, err = run_predict(capsys, str(image), "--model", str(paths.model_dir("unet")), "--out", str(tmp_path / "o"),
                               "--probabilities")
    assert code == 0, err
    folder = tmp_path / "o" / image.parent.name
    assert sorted(p.name for p in folder.glob("*.tif")) == [f"{image.stem}_mask.tif", f"{image.stem}_prob.tif"]
    probabilities = tifffile.imread(folder / f"{image.stem}_prob.tif")
    assert probabilities.dtype == np.float32 and probabilities.shape == (256, 256)
    assert 0 <= probabilities.min() and probabilities.max() <= 1
    assert json.loads((folder / "report.json").read_text())["slices"][0]["image"] == image.name


# -- bad input: a clear error naming the file, nothing written ---------------------------------------


@pytest.fixture
def patient_copy(trained_project, tmp_path) -> Path:
    paths, _ = trained_project
    patient = split_test_patients(paths)[0]
    return Path(shutil.copytree(patient, tmp_path / "in" / patient.name))


def first_image(patient: Path) -> Path:
    return patient / f"{patient.name}_1.tif"


def predict_local(capsys, trained_project, patient: Path, out: Path, *extra: str) -> tuple[int, str]:
    paths, _ = trained_project
    code, _, err = run_predict(capsys, str(patient), "--model", str(paths.model_dir("unet")), "--out", str(out), *extra)
    return code, err


def test_a_truncated_tif_is_named_and_nothing_is_written(trained_project, patient_copy, tmp_path, capsys):
    image = patient_copy / f"{patient_copy.name}_5.tif"
    image.write_bytes(image.read_bytes()[:1000])
    code, err = predict_local(capsys, trained_project, patient_copy, tmp_path / "out")
    assert code == 1 and f"{image}: cannot read as TIFF" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_grayscale_slice_is_refused_by_a_three_channel_model(trained_project, patient_copy, tmp_path, capsys):
    image = first_image(patient_copy)
    tifffile.imwrite(image, tifffile.imread(image)[:, :, 1])
    code, err = predict_local(capsys, trained_project, patient_copy, tmp_path / "out")
    assert code == 1 and f"{image}: grayscale 256x256 image" in err and "preprocess.channels: flair" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["uint16", "four_channels"])
def test_an_image_that_is_not_hxwx3_uint8_is_named(trained_project, patient_copy, tmp_path, capsys, bad):
    image = first_image(patient_copy)
    pixels = tifffile.imread(image)
    tifffile.imwrite(image, pixels.astype(np.uint16) * 200 if bad == "uint16" else np.dstack([pixels, pixels[:, :, :1]]))
    code, err = predict_local(capsys, trained_project, patient_copy, tmp_path / "out")
    assert code == 1 and str(image) in err
    assert ("pixel type uint16" in err) if bad == "uint16" else ("expected H x W x 3" in err)


def test_an_empty_folder_is_named(trained_project, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = predict_local(capsys, trained_project, empty, tmp_path / "out")
    assert code == 1 and f"{empty}: no .tif slices" in err


def test_a_mask_of_another_size_skips_the_dice_with_a_warning(trained_project, patient_copy, tmp_path, capsys, caplog):
    mask = patient_copy / f"{patient_copy.name}_2_mask.tif"
    tifffile.imwrite(mask, np.zeros((128, 128), np.uint8))
    code, err = predict_local(capsys, trained_project, patient_copy, tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / patient_copy.name / "report.json").read_text())
    assert report["patient"]["dice"] is None and "differs from its image" in report["patient"]["dice_note"]
    assert all(s["dice"] is None for s in report["slices"])
    assert any("differs from its image" in r.getMessage() for r in caplog.records)
    assert len(written_masks(tmp_path / "out" / patient_copy.name)) == len(list(patient_copy.glob("*_mask.tif")))


def test_an_existing_output_is_refused_unless_overwrite(trained_project, patient_copy, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = predict_local(capsys, trained_project, patient_copy, out)
    assert code == 0, err
    (out / "keep.txt").write_text("earlier results")
    code, err = predict_local(capsys, trained_project, patient_copy, out)
    assert code == 1 and f"{out} exists" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "earlier results"
    # predict wrote it (its .lggseg-predictions.json is there): replaced as a whole; folders predict did not
    # write are refused even with --overwrite (tests/test_predict_safety.py)
    code, err = predict_local(capsys, trained_project, patient_copy, out, "--overwrite")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / patient_copy.name / "report.json").is_file()


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path, patient_copy, capsys):
    spec = ModelSpec("unet", "resnet18", None, in_channels=3)
    model = create_model(spec, pretrained=False)
    folder = tmp_path / "models" / "unet"
    folder.mkdir(parents=True)
    # what torch.save(model) gives: the whole module pickled, so loading it would run code from the file
    torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict(), "preprocess": {"size": 64, "channels": "all"},
                "model": model}, folder / "best.pt")
    code, _, err = run_predict(capsys, str(patient_copy), "--model", str(folder), "--out", str(tmp_path / "out"))
    assert code == 1 and f"{folder / 'best.pt'}: refused: it holds pickled Python objects" in err
    assert not (tmp_path / "out").exists()


def test_a_real_patient(trained_project, real_sample, tmp_path, capsys):
    paths, _ = trained_project
    patient = real_sample / "TCGA_CS_4941_19960909"
    code, _, err = run_predict(capsys, str(patient), "--model", str(paths.model_dir("unet")), "--out", str(tmp_path / "o"))
    assert code == 0, err
    # the model never saw a real scan: the console and the report say so before anything else
    report = json.loads((tmp_path / "o" / patient.name / "report.json").read_text())
    assert "trained on SYNTHETIC data only" in err and report["warnings"] and "SYNTHETIC" in report["warnings"][0]
    assert "SYNTHETIC data only" in (tmp_path / "o" / patient.name / "report.html").read_text()
    masks = written_masks(tmp_path / "o" / patient.name)
    assert set(masks) == {p.name for p in patient.glob("*_mask.tif")}
    assert all(m.shape == (256, 256) and set(np.unique(m)) <= {0, 255} for m in masks.values())
    report = check_report_matches_metric_code(patient, tmp_path / "o" / patient.name)
    assert report["input"]["slices"] == 23 and report["input"]["image_size"] == [256, 256]


# -- the model's own preprocessing, and the evaluation's predictions ---------------------------------


def evaluated_unet(folder: Path, *settings: str) -> Paths:
    """A project with a U-Net trained and evaluated on TINY synthetic data plus `settings` (no registry)."""
    paths = Paths.at(folder)
    cfg = tiny_config("model.architectures=[unet]", "mlflow.register=false", *settings)
    for stage in (pipeline.download, pipeline.index, pipeline.split, pipeline.preprocess):
        stage(cfg, paths)
    pipeline.train(cfg, paths, "unet")
    pipeline.evaluate(cfg, paths, "unet")
    return paths


def predict_test_split(paths: Paths, out: Path, capsys) -> tuple[list[Path], pd.Series]:
    """Predict every test patient of `paths` with its local U-Net into `out`; returns the patients and the
    per-patient Dice evaluation gave them (with the post-processing evaluation chose)."""
    patients = split_test_patients(paths)
    code, _, err = run_predict(capsys, str(patients[0].parent), "--model", str(paths.model_dir("unet")), "--out", str(out))
    assert code == 0, err
    per_patient = pd.read_csv(paths.report_dir("unet") / "per_patient.csv").set_index("patient_id")
    settings = json.loads((paths.report_dir("unet") / "inference.json").read_text())
    return patients, per_patient["dice_lcc" if settings["largest_component"] else "dice"]


def reports_scored_as_evaluation_did(paths: Paths, out: Path, capsys, size: int) -> list[dict]:
    """Predict every test patient of `paths` into `out`; check that each report's Dice is the metric code's
    and, at the model's `size`, the very Dice evaluation gave the patient; return the reports."""
    patients, evaluated = predict_test_split(paths, out, capsys)
    reports = []
    for patient in patients:
        reports.append(check_report_matches_metric_code(patient, out / patient.name))
        assert dice_at_model_size(patient, out / patient.name, size) == pytest.approx(evaluated[patient.name], abs=1e-9)
    return reports


@pytest.fixture(scope="module")
def flair_project(tmp_path_factory) -> Paths:
    """A U-Net trained at 64x64 on the FLAIR channel only."""
    return evaluated_unet(tmp_path_factory.mktemp("flair"), "preprocess.channels=flair", "train.epochs=8",
                          "mlflow.experiment=lggseg-predict-flair")


@pytest.mark.slow
def test_a_flair_only_64px_model_segments_256px_three_channel_scans(flair_project, tmp_path, capsys):
    for report in reports_scored_as_evaluation_did(flair_project, tmp_path / "out", capsys, size=64):
        assert report["model"]["channels"] == "flair" and report["model"]["size"] == 64
        assert report["patient"]["dice"] > 0.5


@pytest.mark.slow
def test_a_flair_only_model_accepts_grayscale_slices(flair_project, tmp_path, capsys):
    patient = split_test_patients(flair_project)[0]
    gray = tmp_path / "in" / patient.name
    gray.mkdir(parents=True)
    for image in patient.glob("*.tif"):
        pixels = tifffile.imread(image)
        tifffile.imwrite(gray / image.name, pixels if image.stem.endswith("_mask") else pixels[:, :, 1])
    common = ("--model", str(flair_project.model_dir("unet")))
    for name, source in (("rgb", patient), ("gray", gray)):
        code, _, err = run_predict(capsys, str(source), *common, "--out", str(tmp_path / name))
        assert code == 0, err
    report = json.loads((tmp_path / "gray" / patient.name / "report.json").read_text())
    assert report["input"]["grayscale"] and "grayscale input read as the FLAIR channel" in report["notes"]
    rgb, gray_masks = (written_masks(tmp_path / n / patient.name) for n in ("rgb", "gray"))
    assert all(np.array_equal(rgb[k], gray_masks[k]) for k in rgb)  # the FLAIR channel is all it reads


@pytest.fixture(scope="module")
def full_size_project(tmp_path_factory) -> Paths:
    """A U-Net at the data set's own 256x256 (one epoch: the numbers, not the quality, are under test)."""
    return evaluated_unet(tmp_path_factory.mktemp("full"), "preprocess.size=256", "train.epochs=1", "train.batch_size=8",
                          "mlflow.experiment=lggseg-predict-256")


@pytest.mark.slow
def test_a_patients_prediction_is_the_one_evaluation_scored(full_size_project, tmp_path, capsys):
    patients, evaluated = predict_test_split(full_size_project, tmp_path / "out", capsys)
    for patient in patients:
        report = check_report_matches_metric_code(patient, tmp_path / "out" / patient.name)
        assert report["patient"]["dice"] == pytest.approx(evaluated[patient.name], abs=1e-9)


def test_mirror_averaging_makes_the_prediction_mirror_symmetric():
    """evaluate.tta: a mirrored slice gets the mirrored prediction, which a plain network does not give."""
    torch.manual_seed(0)
    network = create_model(ModelSpec(arch="unet", encoder="resnet18", encoder_weights=None, in_channels=3)).eval()
    runtime = resolve_runtime("cpu", "fp32")
    slices = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    mirrored = np.ascontiguousarray(slices[:, :, ::-1])
    plain, plain_mirrored = (predict_probabilities(network, s, runtime, 2) for s in (slices, mirrored))
    tta, tta_mirrored = (predict_probabilities(network, s, runtime, 2, tta=True) for s in (slices, mirrored))
    assert np.abs(plain_mirrored[:, :, ::-1] - plain).max() > 1e-3
    np.testing.assert_allclose(tta_mirrored[:, :, ::-1], tta, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-3


@pytest.fixture(scope="module")
def tta_project(tmp_path_factory) -> Paths:
    """A U-Net evaluated with mirror averaging (evaluate.tta)."""
    return evaluated_unet(tmp_path_factory.mktemp("tta"), "evaluate.tta=true", "train.epochs=4",
                          "mlflow.experiment=lggseg-predict-tta")


@pytest.mark.slow
def test_predict_averages_mirrors_when_evaluation_did(tta_project, tmp_path, capsys):
    assert json.loads((tta_project.report_dir("unet") / "inference.json").read_text())["tta"] is True
    for report in reports_scored_as_evaluation_did(tta_project, tmp_path / "out", capsys, size=64):
        assert report["model"]["tta"] is True
