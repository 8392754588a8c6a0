"""`make bench`: what costs time in the pipeline, each figure beside a naive baseline measured in the same run.

Sections (each a median of --repeats after a warm-up):
- preprocess: the preprocess stage on a synthetic data set (slices/s);
- input_pipeline: train loader with augmentation, num_workers 0 and 2: the project's memory-mapped uint8 arrays
  vs decoding and resizing the tif files on every item; and its ratio to the training step (below 1 the
  loader starves the model);
- train_step: forward + loss + backward + step (images/s), U-Net and FPN, batch 16: plain fp32 NCHW smp vs the
  project's runtime (train.precision/memory_format auto) and, with --compile, the runtime plus torch.compile;
- validation and evaluation passes (slices/s), plain vs project, and the share of an epoch validation takes;
- inference: one 40-slice patient through `lggseg predict`'s path (prepare, forward, threshold, largest
  component, resize back), plain fp32 NCHW vs the project's inference runtime.

    python benchmarks/bench.py                 # the figures of record: 256x256, ResNet34
    python benchmarks/bench.py --tiny --out /tmp/b   # seconds, for the test that checks the keys

Writes <out>/<host-kind>-<device>.{json,md}; the default out (benchmarks/results) also regenerates
docs/benchmarks.md from every result there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import segmentation_models_pytorch as smp  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lggseg import pipeline  # noqa: E402
from lggseg.core.config import load_config  # noqa: E402
from lggseg.core.paths import Paths  # noqa: E402
from lggseg.data.augment import build_augmentation  # noqa: E402
from lggseg.data.dataset import SliceDataset, seed_worker  # noqa: E402
from lggseg.data.preprocess import prepare_image  # noqa: E402
from lggseg.data.scans import find_patients, read_patient  # noqa: E402
from lggseg.model.devices import Runtime, inference_runtime, resolve_runtime  # noqa: E402
from lggseg.model.inference import InferenceSettings, predict_batches, prepare_for_inference  # noqa: E402
from lggseg.model.networks import ModelSpec, create_model  # noqa: E402
from lggseg.prediction.predict import LoadedModel, segment_patient  # noqa: E402
from lggseg.training.loop import train_step  # noqa: E402
from lggseg.training.recipe import build_loss  # noqa: E402
from lggseg.training.validation import validate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
REAL_TRAIN_SLICES = 2842  # the real data set's train split (78 patients): what one epoch costs
TARGETS = {"cpu_train_speedup": 1.5, "cpu_predict_seconds": 1.0, "gpu_train_images_per_second": 2500}
FULL = dict(size=256, encoder="resnet34", batch=16, patients=12, slices=(28, 32), steps=3, repeats=3, patient_slices=40)
TINY = dict(size=64, encoder="resnet18", batch=4, patients=6, slices=(8, 10), steps=1, repeats=1, patient_slices=8)


def median_seconds(run, repeats: int) -> tuple[float, list[float]]:
    """run() once to warm up, then `repeats` timed calls; (median, all)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), [round(t, 4) for t in times]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_runtime(device: torch.device) -> Runtime:
    """The naive baseline: fp32, NCHW, pageable memory, what an smp tutorial does."""
    return Runtime(device, None, channels_last=False, pin_memory=False)


def machine(runtime: Runtime, settings: dict, tiny: bool) -> dict:
    return {"host_kind": f"{platform.machine()}-{os.cpu_count()}cpu", "device": runtime.name,
            "device_slug": re.sub(r"[^a-z0-9]+", "-", runtime.name.lower()).strip("-"),
            "cpu_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "smp": smp.__version__, "date": datetime.date.today().isoformat(), "mode": "tiny" if tiny else "full",
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}


# --- data -------------------------------------------------------------------------------------------------

def build_project(root: Path, s: dict) -> tuple[Paths, object, list[float]]:
    """A synthetic project through the pipeline's own stages; the preprocess stage timed `repeats` times."""
    cfg = load_config(REPO / "params.yaml", [
        "data.source=synthetic", f"data.synthetic.patients={s['patients']}", f"data.synthetic.slices_min={s['slices'][0]}",
        f"data.synthetic.slices_max={s['slices'][1]}", f"preprocess.size={s['size']}", "model.encoder_weights=null",
        f"model.encoder={s['encoder']}", f"train.batch_size={s['batch']}"])
    paths = Paths.at(root)
    for stage in (pipeline.download, pipeline.index, pipeline.split):
        stage(cfg, paths)
    seconds = []
    for _ in range(max(1, s["repeats"])):
        shutil.rmtree(paths.processed, ignore_errors=True)
        started = time.perf_counter()
        pipeline.preprocess(cfg, paths)
        seconds.append(time.perf_counter() - started)
    return paths, cfg, seconds


class TifSliceDataset(Dataset):
    """The naive input pipeline: read both tifs and resize on every item, then the same augmentation and tensors."""

    def __init__(self, slices: pd.DataFrame, dataset_root: Path, size: int, transform):
        self.rows = slices.reset_index(drop=True)
        self.root, self.size, self.transform = dataset_root, size, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows.iloc[index]
        image = prepare_image(tifffile.imread(self.root / row["image_path"]), self.size, "all")
        mask = (tifffile.imread(self.root / row["mask_path"]) > 127).astype(np.uint8)
        mask = cv2.resize(mask, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0)}


def bench_preprocess(paths: Paths, seconds: list[float]) -> dict:
    slices = json.loads((paths.processed / "manifest.json").read_text())["splits"]
    total = sum(v["slices"] for v in slices.values())
    median = statistics.median(seconds)
    return {"slices": total, "seconds": [round(t, 3) for t in seconds], "slices_per_second": round(total / median, 1)}


def bench_input(paths: Paths, cfg, s: dict) -> list[dict]:
    transform = build_augmentation(cfg.augment, seed=0)
    train_ids = set(pd.read_csv(paths.processed / "train" / "slices.csv")["patient_id"].astype(str))
    table = pd.read_csv(paths.slices_csv)
    table = table[table["patient_id"].astype(str).isin(train_ids)]
    datasets = {"memmap_uint8 (project)": SliceDataset(paths.processed, "train", transform=transform),
                "tif_decode_every_epoch (naive)": TifSliceDataset(table, paths.dataset, s["size"], transform)}
    rows = []
    for workers in (0, 2):
        for name, dataset in datasets.items():
            loader = DataLoader(dataset, batch_size=s["batch"], shuffle=True, num_workers=workers,
                                worker_init_fn=seed_worker, persistent_workers=workers > 0)

            def one_epoch():
                for _ in loader:
                    pass

            median, times = median_seconds(one_epoch, s["repeats"])
            rows.append({"source": name, "num_workers": workers, "images": len(dataset), "seconds": times,
                         "images_per_second": round(len(dataset) / median, 1)})
            print("input", rows[-1], flush=True)
    return rows


# --- training ---------------------------------------------------------------------------------------------

def bench_train(arch: str, s: dict, compile_too: bool) -> dict:
    device = resolve_runtime("auto").device
    variants = {"plain_fp32_nchw": (plain_runtime(device), False), "project": (resolve_runtime("auto"), False)}
    if compile_too:
        variants["project_compiled"] = (resolve_runtime("auto"), True)
    result = {"arch": arch, "encoder": s["encoder"], "size": s["size"], "batch": s["batch"]}
    for name, (runtime, compiled) in variants.items():
        torch.manual_seed(0)
        model = create_model(ModelSpec(arch, s["encoder"], None, in_channels=3)).to(device).train()
        if runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if compiled else model
        images = runtime.to_device(torch.rand(s["batch"], 3, s["size"], s["size"]))
        masks = runtime.to_device((torch.rand(s["batch"], 1, s["size"], s["size"]) > 0.9).float())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=runtime.grad_scaler)
        loss_fn = build_loss("bce_dice")

        def steps():
            for _ in range(s["steps"]):
                train_step(forward, images, masks, loss_fn, optimizer, scaler, runtime)
            synchronize(device)

        started = time.perf_counter()
        steps()  # warm-up (and compilation)
        warm_up = time.perf_counter() - started
        median, times = median_seconds(steps, s["repeats"])
        result[name] = {**runtime.describe(), "compile": compiled, "seconds_per_step": round(median / s["steps"], 4),
                        "images_per_second": round(s["steps"] * s["batch"] / median, 2),
                        "warm_up_seconds": round(warm_up, 1), "times": times}
        print("train", arch, name, result[name]["images_per_second"], "img/s", flush=True)
    base = result["plain_fp32_nchw"]["images_per_second"]
    for name in variants:
        result[name]["speedup_vs_plain"] = round(result[name]["images_per_second"] / base, 2)
    return result


def bench_passes(paths: Paths, s: dict) -> tuple[list[dict], list[dict]]:
    """Validation (the training's validate(): fp32 weights, autocast) and evaluation (prepare_for_inference:
    bf16 weights on CPU) over the val split, plain vs project."""
    device = resolve_runtime("auto").device
    torch.manual_seed(0)
    model = create_model(ModelSpec("unet", s["encoder"], None, in_channels=3)).to(device).eval()
    dataset = SliceDataset(paths.processed, "val")
    loss_fn = build_loss("bce_dice")
    validation, evaluation = [], []
    for name, runtime in (("plain_fp32_nchw", plain_runtime(device)), ("project", resolve_runtime("auto"))):
        loader = DataLoader(dataset, batch_size=s["batch"], shuffle=False, **runtime.loader_options())
        net = model.to(memory_format=torch.channels_last) if runtime.channels_last else model.to(
            memory_format=torch.contiguous_format)
        median, times = median_seconds(lambda: validate(net, loader, loss_fn, runtime, 0.5), s["repeats"])
        validation.append({"variant": name, **runtime.describe(), "slices": len(dataset), "seconds": times,
                           "slices_per_second": round(len(dataset) / median, 1)})
        inference = plain_runtime(device) if name.startswith("plain") else inference_runtime("auto", "auto")
        prepared = prepare_for_inference(model, inference)
        eval_loader = DataLoader(dataset, batch_size=max(s["batch"], 32), shuffle=False, **inference.loader_options())

        def evaluate_pass():
            for _ in predict_batches(prepared, eval_loader, inference):
                pass

        median, times = median_seconds(evaluate_pass, s["repeats"])
        evaluation.append({"variant": name, **inference.describe(), "slices": len(dataset), "seconds": times,
                           "slices_per_second": round(len(dataset) / median, 1)})
        print("validation", validation[-1]["slices_per_second"], "evaluation", evaluation[-1]["slices_per_second"],
              flush=True)
    return validation, evaluation


# --- inference --------------------------------------------------------------------------------------------

def bench_inference(scratch: Path, s: dict) -> list[dict]:
    tree = synthetic_patient(scratch, s["patient_slices"])
    (scan,), _ = find_patients(tree)
    inputs = read_patient(scan, flair_only=False)
    device = resolve_runtime("auto").device
    sizes = [s["size"]] + ([128] if s["size"] == 256 else [])
    rows = []
    for size in sizes:
        spec = ModelSpec("unet", s["encoder"], None, in_channels=3)
        torch.manual_seed(0)
        network = create_model(spec)
        settings = InferenceSettings(spec=spec.to_dict(), preprocess={"size": size, "channels": "all"},
                                     largest_component=True)
        variants = [("project", inference_runtime("auto", "auto"))]
        if size == s["size"]:
            variants.insert(0, ("plain_fp32_nchw", plain_runtime(device)))
        for name, runtime in variants:
            loaded = LoadedModel(prepare_for_inference(network, runtime), settings, runtime, {})
            batch = 8 if device.type == "cpu" else 32
            median, times = median_seconds(lambda: segment_patient(loaded, scan, inputs, batch), s["repeats"])
            rows.append({"variant": name, "model_size": size, "encoder": s["encoder"], **runtime.describe(),
                         "slices": len(inputs.images), "seconds": times, "seconds_per_patient": round(median, 3)})
            print("inference", rows[-1], flush=True)
    plain = rows[0]["seconds_per_patient"]
    for row in rows:
        row["speedup_vs_plain"] = round(plain / row["seconds_per_patient"], 2) if row["model_size"] == s["size"] else None
    return rows


def synthetic_patient(scratch: Path, slices: int) -> Path:
    from lggseg.data import synthetic

    return synthetic.generate_dataset(scratch / "patient", patients=1, slices_min=slices, slices_max=slices, seed=0)


# --- report -----------------------------------------------------------------------------------------------

def summarize(result: dict) -> dict:
    """The ratios the issue asks for: loader vs step, validation's share of an epoch, targets."""
    unet = next(r for r in result["train_step"] if r["arch"] == "unet")
    step_rate = unet["project"]["images_per_second"]
    best_loader = max(r["images_per_second"] for r in result["input_pipeline"] if r["source"].startswith("memmap"))
    val_rate = next(r for r in result["validation"] if r["variant"] == "project")["slices_per_second"]
    val_slices = result["validation"][0]["slices"]
    train_slices = result["preprocess_split_slices"]["train"]
    # one epoch of the real data set, validation scaled by this data set's val/train ratio (patient-wise split)
    train_seconds = REAL_TRAIN_SLICES / step_rate
    val_seconds = REAL_TRAIN_SLICES * val_slices / train_slices / val_rate
    inference = {r["variant"]: r for r in result["inference"] if r["model_size"] == result["machine"]["settings"]["size"]}
    on_gpu = result["machine"]["device"] != "cpu"
    summary = {
        "loader_to_step_ratio": round(best_loader / step_rate, 2),
        "validation_share_of_epoch": round(val_seconds / (train_seconds + val_seconds), 3),
        "unet_train_speedup": unet["project"]["speedup_vs_plain"],
        "unet_predict_seconds_per_patient": inference["project"]["seconds_per_patient"],
    }
    if result["machine"]["mode"] == "full":
        if on_gpu:
            summary["gpu_train_target_met"] = step_rate >= TARGETS["gpu_train_images_per_second"]
        else:
            summary["cpu_train_target_met"] = summary["unet_train_speedup"] >= TARGETS["cpu_train_speedup"]
            summary["cpu_predict_target_met_256"] = summary["unet_predict_seconds_per_patient"] <= TARGETS["cpu_predict_seconds"]
            small = [r for r in result["inference"] if r["model_size"] == 128]
            if small:
                summary["cpu_predict_seconds_128"] = small[0]["seconds_per_patient"]
                summary["cpu_predict_target_met_128"] = small[0]["seconds_per_patient"] <= TARGETS["cpu_predict_seconds"]
    return summary


def markdown(result: dict) -> str:
    m, s = result["machine"], result["machine"]["settings"]
    lines = [f"## {m['host_kind']}, {m['device']} ({m['mode']})", "",
             f"{m['date']}: torch {m['torch']}, smp {m['smp']}, Python {m['python']}, {m['cpu_threads']} CPU threads; "
             f"{s['encoder']} at {s['size']}x{s['size']}, batch {s['batch']}; median of {s['repeats']} after a warm-up.", "",
             "| training step (images/s) | plain fp32 NCHW | project runtime | speed-up | runtime |", "|---|---|---|---|---|"]
    for r in result["train_step"]:
        p = r["project"]
        lines.append(f"| {r['arch']} | {r['plain_fp32_nchw']['images_per_second']} | {p['images_per_second']} | "
                     f"**{p['speedup_vs_plain']}x** | {p['precision']}, {p['memory_format']} |")
        if "project_compiled" in r:
            c = r["project_compiled"]
            lines.append(f"| {r['arch']} + torch.compile | | {c['images_per_second']} | {c['speedup_vs_plain']}x | "
                         f"compile warm-up {c['warm_up_seconds']} s |")
    lines += ["", "| input pipeline, train augmentation (images/s) | num_workers 0 | num_workers 2 |", "|---|---|---|"]
    for source in dict.fromkeys(r["source"] for r in result["input_pipeline"]):
        rates = {r["num_workers"]: r["images_per_second"] for r in result["input_pipeline"] if r["source"] == source}
        lines.append(f"| {source} | {rates[0]} | {rates[2]} |")
    summary = result["summary"]
    lines += ["", f"Loader (best) / U-Net training step: **{summary['loader_to_step_ratio']}x** (above 1: the loader keeps up).",
              "", "| pass over the val split (slices/s) | plain fp32 NCHW | project |", "|---|---|---|"]
    for name in ("validation", "evaluation"):
        rates = {r["variant"]: r["slices_per_second"] for r in result[name]}
        lines.append(f"| {name} | {rates['plain_fp32_nchw']} | {rates['project']} |")
    lines += ["", f"Validation's share of an epoch (real data set's 2842 train slices, this split's val/train ratio): "
                  f"**{summary['validation_share_of_epoch']:.1%}**.", "",
              "| predict one patient (s) | model size | plain fp32 NCHW | project | runtime |", "|---|---|---|---|---|"]
    for size in dict.fromkeys(r["model_size"] for r in result["inference"]):
        rows = {r["variant"]: r for r in result["inference"] if r["model_size"] == size}
        plain = rows.get("plain_fp32_nchw", {}).get("seconds_per_patient", "")
        p = rows["project"]
        lines.append(f"| {p['slices']} slices | {size} | {plain} | **{p['seconds_per_patient']}** | {p['precision']}, "
                     f"{p['memory_format']} |")
    pre = result["preprocess"]
    lines += ["", f"Preprocess stage: {pre['slices']} slices at {pre['slices_per_second']} slices/s.", "",
              "Targets: " + ", ".join(f"`{k}` {v}" for k, v in summary.items()), ""]
    return "\n".join(lines)


def write_benchmarks_md(results_dir: Path, path: Path) -> None:
    """docs/benchmarks.md: the intro and every machine's tables (full runs only)."""
    sections = []
    for file in sorted(results_dir.glob("*.json")):
        data = json.loads(file.read_text())
        machine = data.get("machine")
        if isinstance(machine, dict) and machine.get("mode") == "full" and "train_step" in data:
            sections.append(markdown(data).replace("## ", f"## `benchmarks/results/{file.name}`: ", 1))
    intro = path.read_text().split("<!-- results -->")[0] if path.is_file() else "# Benchmarks\n\n"
    path.write_text(intro.rstrip() + "\n\n<!-- results -->\n\n" + "\n".join(sections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="seconds-long settings (tests): 64x64, ResNet18")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                        help="also time torch.compile (auto: in full runs)")
    parser.add_argument("--archs", default="unet,fpn")
    parser.add_argument("--collect", action="store_true", help="only rebuild docs/benchmarks.md from benchmarks/results/")
    args = parser.parse_args(argv)
    if args.collect:
        write_benchmarks_md(RESULTS, BENCHMARKS_MD)
        return 0
    s = dict(TINY if args.tiny else FULL)
    compile_too = args.compile == "yes" or (args.compile == "auto" and not args.tiny)
    scratch = Path(tempfile.mkdtemp(prefix="lggseg-bench-"))
    try:
        paths, cfg, preprocess_seconds = build_project(scratch / "project", s)
        result = {"machine": machine(resolve_runtime("auto"), s, args.tiny)}
        result["preprocess"] = bench_preprocess(paths, preprocess_seconds)
        manifest = json.loads((paths.processed / "manifest.json").read_text())
        result["preprocess_split_slices"] = {k: v["slices"] for k, v in manifest["splits"].items()}
        result["train_step"] = [bench_train(arch, s, compile_too) for arch in args.archs.split(",")]
        result["input_pipeline"] = bench_input(paths, cfg, s)
        result["validation"], result["evaluation"] = bench_passes(paths, s)
        result["inference"] = bench_inference(scratch, s)
        result["summary"] = summarize(result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    m = result["machine"]
    stem = f"{m['host_kind']}-{m['device_slug']}" + ("-tiny" if args.tiny else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    if args.out.resolve() == RESULTS.resolve() and not args.tiny:
        write_benchmarks_md(RESULTS, BENCHMARKS_MD)
    print(markdown(result))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
