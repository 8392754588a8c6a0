"""`lggseg predict`: segment new scans with a registered or local model, and write per patient the masks,
report.json and a self-contained report.html (plus summary.csv and index.html for a folder of patients).

The model brings its own preprocessing (size, channels) and post-processing (threshold, largest 3-D
component when evaluation chose it on the val patients); slices are prepared by the same
`prepare_image` / `to_model_input` as the preprocess stage, so a patient's prediction is the one
evaluation scored. Nothing a user points at is unpickled: checkpoints load with weights_only=True.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
import torch
from tqdm import tqdm

from lggseg import __version__
from lggseg.core.atomic import staged_dir, write_json
from lggseg.core.config import MlflowConfig
from lggseg.data.imageio import nifti
from lggseg.data.preprocess import flair_view, prepare_image
from lggseg.data.provenance import describe_training_data, input_source, provenance_warnings
from lggseg.data.scans import PatientImages, PatientScan, Scan, VolumeScan, find_patients, input_tree, read_scan
from lggseg.metrics.segmentation import SliceCountAccumulator, largest_component_3d, patient_table, slice_dice
from lggseg.model.checkpoint import load_checkpoint
from lggseg.model.devices import Runtime, inference_runtime
from lggseg.model.inference import InferenceSettings, predict_probabilities, prepare_for_inference
from lggseg.model.networks import ModelSpec
from lggseg.prediction.report import DISCLAIMER, index_html, report_html

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models:/lgg-segmentation@champion"
SUMMARY_COLUMNS = ["case", "slices", "tumor_positive_slices", "volume_voxels", "volume_mm3", "largest_tumor_slice",
                   "max_tumor_probability", "dice", "report"]


OUTPUT_MARKER = ".lggseg-predictions.json"
"""Left in every output folder predict writes: --overwrite replaces only folders that hold it."""
WRITTEN_BY = "lggseg predict"


class OutputExistsError(ValueError):
    """The output folder is there already and --overwrite was not given."""


class UnsafeOutputError(ValueError):
    """--out would replace or write into the input, or a folder predict did not write."""


@dataclass
class LoadedModel:
    network: torch.nn.Module  # prepared for inference on `runtime`
    settings: InferenceSettings
    runtime: Runtime
    info: dict  # what report.json says of the model


@dataclass
class PatientPrediction:
    scan: Scan
    inputs: PatientImages
    pred: list[np.ndarray]  # (H, W) uint8 {0, 1} per slice, at input size
    probabilities: list[np.ndarray]  # (H, W) float32 per slice, at input size
    report: dict


def load_model(model: str, root: Path, mlflow: MlflowConfig, runtime: Runtime) -> LoadedModel:
    """A registry URI (`models:/lgg-segmentation@champion`, `models:/lgg-fpn/3`) or a local folder holding
    best.pt (`models/unet/`), with the inference settings that came with it."""
    if model.startswith("models:/"):
        return _load_registered(model, root, mlflow, runtime)
    return _load_local(Path(model), runtime)


def _load_registered(uri: str, root: Path, mlflow: MlflowConfig, runtime: Runtime) -> LoadedModel:
    from lggseg.tracking.registry import ModelRegistry
    from lggseg.tracking.store import MlflowStore

    registry = ModelRegistry(MlflowStore(mlflow, root, read_only=True))
    version = registry.resolve_registered(uri)
    with tempfile.TemporaryDirectory(prefix="lggseg-model-") as tmp:
        files = registry.download_model_files(version, Path(tmp), uri)
        network, checkpoint = load_checkpoint(files / "best.pt")
        settings = _read_settings(files / "inference.json", checkpoint, uri)
    info = {"uri": uri, "registered_model": version.name, "version": str(version.version), "run_id": version.run_id,
            "trained_on": checkpoint.get("trained_on")}  # from the weights' own file, which the registry hashed
    return _ready(network, settings, runtime, info)


def _load_local(path: Path, runtime: Runtime) -> LoadedModel:
    checkpoint_path = path / "best.pt" if path.is_dir() else path
    network, checkpoint = load_checkpoint(checkpoint_path)
    folder = checkpoint_path.parent
    # the evaluation's record: beside the checkpoint (a downloaded extra_files/), or in the project's reports
    candidates = [folder / "inference.json", folder.parent.parent / "reports" / "arch" / folder.name / "inference.json"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        log.warning("no inference.json for %s (evaluate it first): threshold 0.5, no largest-component "
                    "post-processing", checkpoint_path)
        settings = InferenceSettings(spec=checkpoint["spec"], preprocess=_checkpoint_preprocess(checkpoint, checkpoint_path),
                                     chosen_on="no evaluation found: defaults")
    else:
        settings = _read_settings(found, checkpoint, str(found))
    info = {"uri": str(path), "registered_model": None, "version": None, "run_id": None,
            "trained_on": checkpoint.get("trained_on")}
    return _ready(network, settings, runtime, info)


def _checkpoint_preprocess(checkpoint: dict, source: Path) -> dict:
    if "preprocess" not in checkpoint:
        raise ValueError(f"{source}: the checkpoint does not say how its training slices were prepared (no "
                         "'preprocess'; made by an older lggseg): re-train it")
    return checkpoint["preprocess"]


def _read_settings(path: Path, checkpoint: dict, source: str) -> InferenceSettings:
    try:
        settings = InferenceSettings.from_dict(json.loads(Path(path).read_text()), source)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{source}: cannot read inference settings {Path(path).name}: {exc}") from None
    if settings.spec != checkpoint["spec"] or settings.preprocess != checkpoint.get("preprocess", settings.preprocess):
        raise ValueError(f"{source}: inference settings ({settings.spec}, {settings.preprocess}) do not belong to "
                         f"the checkpoint ({checkpoint['spec']}, {checkpoint.get('preprocess')}): re-run evaluate")
    return settings


def _ready(network: torch.nn.Module, settings: InferenceSettings, runtime: Runtime, info: dict) -> LoadedModel:
    spec = ModelSpec(**settings.spec)
    info = {**info, "architecture": spec.arch, "encoder": spec.encoder, "size": settings.preprocess["size"],
            "channels": settings.preprocess["channels"], "threshold": settings.threshold,
            "largest_component": settings.largest_component, "tta": settings.tta}
    return LoadedModel(prepare_for_inference(network, runtime), settings, runtime, info)


def segment_patient(model: LoadedModel, scan: Scan, inputs: PatientImages, batch_size: int) -> tuple[list, list, float]:
    """(masks {0, 1}, probabilities, seconds): slices prepared as in training, thresholded and post-processed
    at the model's size as evaluation does, then brought back to each slice's own size. What the
    post-processing removed is noted in `inputs.notes`."""
    started = time.perf_counter()
    size, channels = model.settings.preprocess["size"], model.settings.preprocess["channels"]
    prepared = np.stack([prepare_image(image, size, channels) for image in inputs.images])
    probs = predict_probabilities(model.network, prepared, model.runtime, batch_size, tta=model.settings.tta)
    pred = (probs > model.settings.threshold).astype(np.uint8)
    if model.settings.largest_component:
        kept = largest_component_3d(pred)
        removed = [str(n) for i, n in enumerate(inputs.slice_numbers) if (pred[i] != kept[i]).any()]
        if removed:
            inputs.notes.append(f"keeping only the largest 3-D tumour component (chosen on the val patients) removed "
                                f"smaller regions above the threshold on slice(s) {', '.join(removed)}")
        pred = kept
    masks, maps = [], []
    for image, mask, prob in zip(inputs.images, pred, probs):
        height, width = image.shape[:2]
        same = (height, width) == mask.shape
        masks.append(mask if same else cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST))
        maps.append(prob if same else cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR))
    return masks, maps, time.perf_counter() - started


def patient_report(model: LoadedModel, scan: Scan, inputs: PatientImages, pred: list[np.ndarray],
                   probabilities: list[np.ndarray], seconds: float, spacing: tuple[float, float, float] | None,
                   warnings: Sequence[str] = ()) -> dict:
    """The report.json of one patient; Dice (per slice and per patient) by the project's metric code."""
    numbers = inputs.slice_numbers
    areas = [int(mask.sum()) for mask in pred]
    if inputs.volume is not None:  # the header's voxel size: (columns, rows, slices) as --spacing DX DY DZ
        spacing = tuple(reversed(inputs.volume.geometry.spacing))  # type: ignore[assignment]
    mask_names = mask_files(scan, inputs)
    slices = [{"slice": n, "image": name, "sha256": digest, "mask": mask,
               "tumor_probability": float(prob.max()), "predicted_pixels": area, "true_pixels": None, "dice": None}
              for n, name, digest, mask, prob, area in zip(numbers, inputs.slice_names, inputs.sha256, mask_names,
                                                           probabilities, areas)]
    patient = {"tumor_positive_slices": int(sum(a > 0 for a in areas)), "volume_voxels": int(sum(areas)),
               "volume_mm3": float(sum(areas) * np.prod(spacing)) if spacing else None,
               "largest_tumor_slice": numbers[int(np.argmax(areas))] if any(areas) else None,
               "largest_tumor_pixels": max(areas), "max_tumor_probability": max(s["tumor_probability"] for s in slices),
               "dice": None, "true_tumor_positive_slices": None,
               "dice_note": None if inputs.masks is not None else next(
                   (n for n in inputs.notes if "Dice skipped" in n), "no ground-truth masks")}
    if inputs.masks is not None:
        counts = SliceCountAccumulator()
        for n, mask, truth in zip(numbers, pred, inputs.masks):
            counts.add(torch.from_numpy(mask[None, None].astype(np.int64)),
                       torch.from_numpy(truth[None, None].astype(np.int64)), [scan.case], [n])
        table = counts.table()
        by_slice = dict(zip(table["slice"], slice_dice(table)))
        for item, truth in zip(slices, inputs.masks):
            item["true_pixels"], item["dice"] = int(truth.sum()), float(by_slice[item["slice"]])
        patient["dice"] = float(patient_table(table)["dice"].iloc[0])
        patient["true_tumor_positive_slices"] = int(sum(t.any() for t in inputs.masks))
    shapes = sorted({image.shape[:2] for image in inputs.images})
    return {
        "lggseg_version": __version__, "case": scan.case, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model.info,
        "runtime": {"device": model.runtime.name, "precision": _precision(model.runtime), "seconds": round(seconds, 3)},
        "input": {"path": str(input_path(scan)), "format": "tif" if inputs.volume is None else inputs.volume.geometry.format,
                  "slices": len(slices),
                  "image_size": list(shapes[0]) if len(shapes) == 1 else [list(s) for s in shapes],
                  "grayscale": inputs.grayscale, "spacing_mm": list(spacing) if spacing else None,
                  **({"geometry": inputs.volume.geometry.record(), "files": inputs.files} if inputs.volume else {})},
        "patient": patient, "slices": slices, "notes": inputs.notes, "warnings": list(warnings), "disclaimer": DISCLAIMER,
    }


def _precision(runtime: Runtime) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(runtime.amp_dtype, str(runtime.amp_dtype))


def input_path(scan: Scan) -> Path:
    if isinstance(scan, PatientScan) and len(scan.slices) == 1:
        return scan.slices[0].image
    return scan.folder


def mask_files(scan: Scan, inputs: PatientImages) -> list[str]:
    """The file each slice's mask is written to."""
    if inputs.volume is not None:
        return [f"{scan.case}_mask.nii.gz"] * len(inputs.images)
    assert isinstance(scan, PatientScan)
    return [f"{item.image.stem}_mask.tif" for item in scan.slices]


def write_patient(folder: Path, prediction: PatientPrediction, probabilities: bool) -> None:
    """Masks: for tif input named like the data set's (`<case>_<n>_mask.tif`, uint8 0/255); for NIfTI and
    DICOM input `<case>_mask.nii.gz` (uint8 0/1) in the input's voxel grid, affine and header. Then
    report.json and report.html."""
    folder.mkdir(parents=True)
    volume = prediction.inputs.volume
    if volume is not None:
        nifti.write_mask(folder / f"{prediction.scan.case}_mask.nii.gz", np.stack(prediction.pred), volume.geometry)
        if probabilities:
            nifti.write_mask(folder / f"{prediction.scan.case}_prob.nii.gz", np.stack(prediction.probabilities),
                             volume.geometry, dtype=np.float32)
    else:
        assert isinstance(prediction.scan, PatientScan)
        for item, mask, prob in zip(prediction.scan.slices, prediction.pred, prediction.probabilities):
            tifffile.imwrite(folder / f"{item.image.stem}_mask.tif", mask * np.uint8(255))
            if probabilities:
                tifffile.imwrite(folder / f"{item.image.stem}_prob.tif", prob.astype(np.float32))
    write_json(folder / "report.json", prediction.report)  # strict JSON: NaN or inf would be null
    flair = flair_view(np.stack(prediction.inputs.images)) if _same_size(prediction.inputs.images) else None
    if flair is None:  # slices of different sizes: show each at the first slice's size
        shape = prediction.inputs.images[0].shape[:2][::-1]
        resize = lambda a, how: cv2.resize(a, shape, interpolation=how)  # noqa: E731
        flair = np.stack([resize(flair_view(i[None])[0], cv2.INTER_AREA) for i in prediction.inputs.images])
        pred = np.stack([resize(m, cv2.INTER_NEAREST) for m in prediction.pred])
        truth = None if prediction.inputs.masks is None else np.stack(
            [resize(m, cv2.INTER_NEAREST) for m in prediction.inputs.masks])
    else:
        pred = np.stack(prediction.pred)
        truth = None if prediction.inputs.masks is None else np.stack(prediction.inputs.masks)
    (folder / "report.html").write_text(report_html(prediction.report, flair, pred, truth))


def _same_size(images: list[np.ndarray]) -> bool:
    return len({image.shape for image in images}) == 1


def summary_row(report: dict) -> dict:
    patient = report["patient"]
    return {"case": report["case"], "slices": report["input"]["slices"], **{
        k: patient[k] for k in ("tumor_positive_slices", "volume_voxels", "volume_mm3", "largest_tumor_slice",
                                "max_tumor_probability", "dice")}, "report": f"{report['case']}/report.html"}


def predict(input_path: Path, out_dir: Path, model: str = DEFAULT_MODEL, *, root: Path = Path("."),
            mlflow: MlflowConfig | None = None, overwrite: bool = False, probabilities: bool = False,
            device: str = "auto", precision: str = "auto", batch_size: int | None = None,
            spacing: tuple[float, float, float] | None = None, series: str | None = None) -> pd.DataFrame:
    """Segment every patient under `input_path` into `out_dir` (written as a whole, or not at all);
    returns the summary table (one row per patient)."""
    check_spacing(spacing)
    out_dir = Path(out_dir)
    check_output_apart_from_input(Path(input_path), out_dir)
    patients, many = find_patients(Path(input_path), series)
    if spacing is not None and any(isinstance(p, VolumeScan) for p in patients):
        raise ValueError(f"--spacing: {input_path} is NIfTI or DICOM, whose header gives the voxel size; "
                         "--spacing is for tif slices")
    check_output_replaceable(out_dir, overwrite)
    runtime = inference_runtime(device, precision)
    loaded = load_model(model, Path(root), mlflow or MlflowConfig(), runtime)
    batch_size = batch_size or (32 if runtime.device.type == "cuda" else 8)
    flair_only = loaded.settings.preprocess["channels"] == "flair"
    print(f"model {loaded.info['uri']}: {loaded.info['architecture']}/{loaded.info['encoder']}, trained on "
          f"{describe_training_data(loaded.info['trained_on'])}", file=sys.stderr)
    warnings = provenance_warnings(loaded.info["trained_on"], input_source(Path(input_path)))
    for warning in warnings:  # printed, not logged: no logging setup may hide it
        print(f"WARNING: {warning}", file=sys.stderr)
    rows = []
    # the folder a link points at is the one replaced; the link stays valid
    with staged_dir(out_dir.resolve()) as staging:
        for scan in tqdm(patients, desc="patients", unit="patient", disable=not many or None, file=sys.stderr):
            inputs = read_scan(scan, flair_only)
            for note in inputs.notes:
                log.warning("%s: %s", scan.case, note)
            pred, maps, seconds = segment_patient(loaded, scan, inputs, batch_size)
            report = patient_report(loaded, scan, inputs, pred, maps, seconds, spacing, warnings)
            write_patient(staging / scan.case, PatientPrediction(scan, inputs, pred, maps, report), probabilities)
            rows.append(summary_row(report))
        summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        if many:
            summary.to_csv(staging / "summary.csv", index=False)
            (staging / "index.html").write_text(index_html(summary, loaded.info, warnings))
        write_json(staging / OUTPUT_MARKER, output_marker(Path(input_path), model, summary))
        check_output_replaceable(out_dir, overwrite)  # again: the folder may have changed during the run
    return summary


def default_output_name(input_path: Path) -> str:
    """predictions/<this>: the input's name without its extension (`.nii.gz` as one)."""
    input_path = Path(input_path)
    if input_path.is_file():
        return nifti.stem(input_path) if nifti.is_nifti_name(input_path) else input_path.stem
    return input_path.resolve().name


def check_spacing(spacing: tuple[float, ...] | None) -> None:
    """Voxel sizes are positive finite millimetres (NaN would reach report.json as a volume)."""
    if spacing is None:
        return
    bad = [value for value in spacing if not (math.isfinite(value) and value > 0)]
    if len(spacing) != 3 or bad:
        shown = " ".join(f"{v:g}" for v in spacing)
        raise ValueError(f"--spacing {shown}: each of DX DY DZ must be a positive finite size in mm; got "
                         f"{', '.join(f'{v:g}' for v in bad) or f'{len(spacing)} values'}")


def check_output_apart_from_input(input_path: Path, out_dir: Path) -> None:
    """--out may be neither the input folder, nor inside it, nor above it (links resolved): replacing it
    would delete the scans, writing into it would put predicted `_mask.tif` where the true masks are."""
    if not input_path.exists():
        return  # find_patients names it
    tree, out = input_tree(input_path), out_dir.resolve()
    if out.is_relative_to(tree) or tree.is_relative_to(out):
        where = "is the input folder" if out == tree else "is inside the input folder" if out.is_relative_to(tree) \
            else "holds the input folder"
        raise UnsafeOutputError(f"--out {out_dir} {where} {tree}" + (f" (resolved: {out})" if out != out_dir else "")
                                + ": predictions would replace or mix with the scans; choose an --out outside it")


def check_output_replaceable(out_dir: Path, overwrite: bool) -> None:
    """An existing --out is replaced only with --overwrite, and only if predict wrote it (OUTPUT_MARKER);
    an empty folder may be used."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise UnsafeOutputError(f"--out {out_dir} exists and is not a folder; choose another --out")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(f"{out_dir} exists; choose another --out or add --overwrite to replace it")
    if not written_by_predict(out_dir):
        raise UnsafeOutputError(f"{out_dir} was not written by lggseg predict (no {OUTPUT_MARKER} in it): "
                                "--overwrite replaces only predict's own output folders; choose another --out "
                                "or remove the folder yourself")


def written_by_predict(folder: Path) -> bool:
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return is_legacy_prediction(folder)
    return isinstance(marker, dict) and marker.get("written_by") == WRITTEN_BY


def is_legacy_prediction(folder: Path) -> bool:
    """An output of an lggseg predict that left no marker yet (e.g. `make predict-demo`'s): nothing in it but
    summary.csv, index.html and case folders holding only report.json (with lggseg_version), report.html,
    `_mask.tif` and `_prob.tif`, no links. Anything else in it is somebody's, and keeps it from being replaced."""
    cases = [entry for entry in folder.iterdir() if entry.name not in ("summary.csv", "index.html")]
    if not cases or any(entry.is_symlink() or not entry.is_dir() for entry in cases):
        return False
    for case in cases:
        for entry in case.iterdir():
            if entry.is_symlink() or not entry.is_file() or not (
                    entry.name in ("report.json", "report.html") or entry.name.endswith(("_mask.tif", "_prob.tif"))):
                return False
        try:
            report = json.loads((case / "report.json").read_text())
        except (OSError, ValueError):
            return False
        if not (isinstance(report, dict) and "lggseg_version" in report and report.get("case") == case.name):
            return False
    return True


def output_marker(input_path: Path, model: str, summary: pd.DataFrame) -> dict:
    """What OUTPUT_MARKER says: who wrote the folder, from what."""
    return {"written_by": WRITTEN_BY, "lggseg_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": str(input_path.resolve()), "model": model, "cases": summary["case"].tolist()}
