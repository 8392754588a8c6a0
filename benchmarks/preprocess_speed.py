"""Benchmark: slices per second of the preprocess stage (target: the full 3929-slice set in < 60 s).

Without --dataset it generates a synthetic set the size of the real one (110 patients, 3929 slices of
256x256x3) once, then times index-free preprocessing of all slices into per-split arrays, exactly as
the `preprocess` stage does. Results: benchmarks/results/preprocess_speed.{json,md}.

    python benchmarks/preprocess_speed.py                       # synthetic, full size
    python benchmarks/preprocess_speed.py --dataset data/raw/kaggle_3m --size 256
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

import numpy as np  # noqa: E402

from lggseg.core.config import PreprocessConfig, SplitConfig  # noqa: E402
from lggseg.data import synthetic  # noqa: E402
from lggseg.data.layout import build_index  # noqa: E402
from lggseg.data.preprocess import preprocess_dataset  # noqa: E402
from lggseg.data.split import make_splits  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REAL_PATIENTS, REAL_SLICES = 110, 3929


def full_size_synthetic(folder: Path) -> Path:
    """110 patients like the real set, 20 to 52 slices each (about 3960 in all; the real set has 3929)."""
    tree = synthetic.generate_dataset(folder, patients=REAL_PATIENTS, slices_min=20, slices_max=52, seed=0)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="a kaggle_3m folder (default: generate a full-size synthetic one)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", default="all", choices=["all", "flair"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lggseg-bench-"))
    try:
        tree = args.dataset or full_size_synthetic(scratch / "data")
        slices, _ = build_index(tree)
        splits = make_splits(slices, SplitConfig())
        cfg = PreprocessConfig(size=args.size, channels=args.channels)
        seconds = []
        for _ in range(args.repeats):
            out = scratch / "processed"
            started = time.perf_counter()
            preprocess_dataset(slices, splits, tree, out, cfg, workers=args.workers)
            seconds.append(time.perf_counter() - started)
            shutil.rmtree(out)
        median = float(np.median(seconds))
        result = {
            "benchmark": "preprocess_speed",
            "dataset": str(args.dataset) if args.dataset else f"synthetic, {slices['patient_id'].nunique()} patients",
            "slices": int(len(slices)), "size": args.size, "channels": args.channels, "workers": args.workers,
            "seconds": [round(s, 3) for s in seconds], "seconds_median": round(median, 3),
            "slices_per_second_median": round(len(slices) / median, 1),
            "projected_seconds_full_set": round(REAL_SLICES / (len(slices) / median), 2),
            "target_seconds_full_set": 60,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "preprocess_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "preprocess_speed.md").write_text(
        "# Preprocess speed\n\n| slices | size | median s | slices/s | projected s for 3929 slices (target 60) | machine |\n"
        "|---|---|---|---|---|---|\n"
        f"| {result['slices']} | {args.size} | {median:.2f} | {result['slices_per_second_median']} | "
        f"{result['projected_seconds_full_set']} | {result['machine']} |\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
