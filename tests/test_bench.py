"""`make bench` in its tiny mode: every section and figure is there (speed itself is never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SECTIONS = {"machine", "preprocess", "preprocess_split_slices", "train_step", "input_pipeline", "validation",
            "evaluation", "inference", "summary"}


def test_make_bench_tiny_writes_every_measurement_with_its_baseline(tmp_path):
    env = {**os.environ, "VENV": str(Path(sys.executable).parents[1])}
    result = subprocess.run(["make", "-s", "bench", f"BENCH_ARGS=--tiny --out {tmp_path}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (json_path,) = tmp_path.glob("*-tiny.json")
    assert json_path.with_suffix(".md").is_file()
    data = json.loads(json_path.read_text())
    assert set(data) == SECTIONS
    machine = data["machine"]
    assert {"host_kind", "device", "cpu_threads", "torch", "smp", "date", "mode", "settings"} <= set(machine)
    assert json_path.name == f"{machine['host_kind']}-{machine['device_slug']}-tiny.json"

    assert {r["arch"] for r in data["train_step"]} == {"unet", "fpn"}
    for row in data["train_step"]:
        for variant in ("plain_fp32_nchw", "project"):
            assert row[variant]["images_per_second"] > 0 and row[variant]["speedup_vs_plain"] > 0
        assert row["plain_fp32_nchw"]["precision"] == "fp32" and row["plain_fp32_nchw"]["memory_format"] == "contiguous"
    sources = {(r["source"].split()[0], r["num_workers"]) for r in data["input_pipeline"]}
    assert sources == {(s, w) for s in ("memmap_uint8", "tif_decode_every_epoch") for w in (0, 2)}
    for name in ("validation", "evaluation"):
        assert {r["variant"] for r in data[name]} == {"plain_fp32_nchw", "project"}
        assert all(r["slices_per_second"] > 0 for r in data[name])
    assert {r["variant"] for r in data["inference"]} == {"plain_fp32_nchw", "project"}
    assert data["preprocess"]["slices_per_second"] > 0
    summary = data["summary"]
    assert {"loader_to_step_ratio", "validation_share_of_epoch", "unet_train_speedup",
            "unet_predict_seconds_per_patient"} <= set(summary)
    assert 0 < summary["validation_share_of_epoch"] < 1
    # the tiny run never touches the committed results
    assert not any(p.name.endswith("-tiny.json") for p in (REPO / "benchmarks" / "results").iterdir())
