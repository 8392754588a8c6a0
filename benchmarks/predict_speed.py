"""Benchmark: `lggseg predict` seconds per patient (target: a 40-slice patient in under 1 s on 2 CPU cores with
the default U-Net-ResNet34 at 256x256), and whether bf16 changes the Dice.

Speed: a synthetic 40-slice patient of 256x256x3 slices, models with random weights (speed does not depend
on the weights) saved as lggseg checkpoints and loaded by `lggseg.prediction.predict.load_model`, so the timed path is
predict's own: prepare_image -> to_model_input -> forward -> threshold -> largest component -> resize back.
Timed after one warm-up patient; median of --repeats. End to end (reading the tifs, writing masks and the
report) is timed once per configuration as well.

Dice: with --model (a trained models/<arch>/ folder) and --patients (a folder of patient folders with masks),
predicts every patient in fp32 and in bf16 and compares the per-patient Dice and the masks.

    python benchmarks/predict_speed.py
    python benchmarks/predict_speed.py --model models/unet --patients data/raw/kaggle_3m
Results: benchmarks/results/predict_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lggseg.core.config import MlflowConfig  # noqa: E402
from lggseg.data import synthetic  # noqa: E402
from lggseg.data.scans import find_patients, read_patient  # noqa: E402
from lggseg.model.checkpoint import save_checkpoint  # noqa: E402
from lggseg.model.devices import cpu_has_native_bf16, inference_runtime  # noqa: E402
from lggseg.model.inference import InferenceSettings  # noqa: E402
from lggseg.model.networks import ModelSpec, create_model  # noqa: E402
from lggseg.prediction.predict import load_model, predict, segment_patient  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGET_SECONDS = 1.0
CONFIGS = [  # (encoder, size, precision): the default first, then what a faster model would cost
    ("resnet34", 256, "fp32"), ("resnet34", 256, "bf16"), ("resnet18", 256, "bf16"), ("resnet34", 128, "bf16"),
]


def random_model(folder: Path, encoder: str, size: int) -> Path:
    spec = ModelSpec("unet", encoder, None, in_channels=3)
    torch.manual_seed(0)
    preprocess = {"size": size, "channels": "all"}
    save_checkpoint(folder / "best.pt", create_model(spec, pretrained=False), spec, preprocess=preprocess)
    settings = InferenceSettings(spec=spec.to_dict(), preprocess=preprocess, largest_component=True)
    (folder / "inference.json").write_text(json.dumps(settings.to_dict()))  # as evaluation writes it
    return folder


def gflops_per_slice(network: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network.float()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def time_speed(scratch: Path, repeats: int, batch_size: int) -> list[dict]:
    tree = synthetic.generate_dataset(scratch / "data", patients=1, slices_min=40, slices_max=40, seed=0)
    (scan,), _ = find_patients(tree)
    inputs = read_patient(scan, flair_only=False)
    rows = []
    for encoder, size, precision in CONFIGS:
        if precision == "bf16" and not cpu_has_native_bf16() and not torch.cuda.is_available():
            continue
        folder = random_model(scratch / f"{encoder}-{size}", encoder, size)
        model = load_model(str(folder), scratch, MlflowConfig(), inference_runtime("auto", precision))
        segment_patient(model, scan, inputs, batch_size)  # warm-up: oneDNN builds its kernels on first use
        seconds = [segment_patient(model, scan, inputs, batch_size)[2] for _ in range(repeats)]
        out = scratch / f"out-{encoder}-{size}-{precision}"
        started = time.perf_counter()
        predict(scan.folder, out, str(folder), precision=precision, batch_size=batch_size)
        end_to_end = time.perf_counter() - started
        shutil.rmtree(out)
        median = float(np.median(seconds))
        rows.append({"encoder": encoder, "size": size, "precision": precision, "device": model.runtime.name,
                     "slices": len(inputs.images), "seconds": [round(s, 3) for s in seconds],
                     "seconds_median": round(median, 3), "slices_per_second": round(len(inputs.images) / median, 1),
                     "end_to_end_seconds_incl_model_load_and_report": round(end_to_end, 2),
                     "gflops_per_slice": round(
                         gflops_per_slice(create_model(ModelSpec("unet", encoder, None, 3), False), size), 2),
                     "meets_target": bool(median < TARGET_SECONDS) if (encoder, size) == ("resnet34", 256) else None})
        print(rows[-1])
    return rows


def compare_precisions(model: Path, patients: Path, scratch: Path) -> dict:
    """Per-patient Dice and mask agreement of fp32 vs bf16 on real patients with a trained model."""
    reports = {}
    for precision in ("fp32", "bf16"):
        out = scratch / f"dice-{precision}"
        predict(patients, out, str(model), precision=precision)
        reports[precision] = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/report.json")}
    rows, differing, total = [], 0, 0
    for case, fp32 in sorted(reports["fp32"].items()):
        bf16 = reports["bf16"][case]
        rows.append({"case": case, "dice_fp32": fp32["patient"]["dice"], "dice_bf16": bf16["patient"]["dice"]})
        for a, b in zip(sorted((scratch / "dice-fp32" / case).glob("*_mask.tif")),
                        sorted((scratch / "dice-bf16" / case).glob("*_mask.tif"))):
            differing += int((tifffile.imread(a) != tifffile.imread(b)).sum())
            total += tifffile.imread(a).size
    table = pd.DataFrame(rows)
    delta = (table["dice_bf16"] - table["dice_fp32"]).abs()
    return {"model": str(model), "patients": len(table), "mean_dice_fp32": round(float(table["dice_fp32"].mean()), 4),
            "mean_dice_bf16": round(float(table["dice_bf16"].mean()), 4),
            "max_abs_patient_dice_change": round(float(delta.max()), 4),
            "mask_pixels_differing": differing, "mask_pixels_total": total, "per_patient": rows}


def write_results(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "predict_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Predict speed: one 40-slice patient (256x256x3 input)", "",
             f"Machine: {result['machine']}. Target: under {TARGET_SECONDS:g} s for U-Net-ResNet34 at 256x256.", "",
             "| encoder | model size | precision | median s / patient | slices/s | GFLOP / slice "
             "| end to end s (load + tifs + report) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["speed"]:
        lines.append(f"| {r['encoder']} | {r['size']} | {r['precision']} | {r['seconds_median']:.2f} | "
                     f"{r['slices_per_second']} | {r['gflops_per_slice']} | "
                     f"{r['end_to_end_seconds_incl_model_load_and_report']} |")
    if result.get("dice"):
        d = result["dice"]
        lines += ["", f"bf16 vs fp32 on {d['patients']} real patients ({d['model']}): mean per-patient Dice "
                      f"{d['mean_dice_fp32']} (fp32) vs {d['mean_dice_bf16']} (bf16), largest change of one patient "
                      f"{d['max_abs_patient_dice_change']}, {d['mask_pixels_differing']} of {d['mask_pixels_total']} "
                      "mask pixels differ."]
    (RESULTS / "predict_speed.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", type=Path, help="a trained models/<arch>/ folder, for the fp32 vs bf16 Dice check")
    parser.add_argument("--patients", type=Path, help="a folder of patient folders with masks (with --model)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lggseg-bench-"))
    try:
        result = {"benchmark": "predict_speed", "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                  "cpu_native_bf16": cpu_has_native_bf16(),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or 'cpu'}, "
                             f"torch {torch.__version__}",
                  "speed": time_speed(scratch, args.repeats, args.batch_size)}
        if args.model and args.patients:
            result["dice"] = compare_precisions(args.model, args.patients, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(result)
    print((RESULTS / "predict_speed.md").read_text())


if __name__ == "__main__":
    main()
