"""The CUDA path on a real GPU (skipped without one): `pytest -m gpu`. Every option it uses also runs on CPU
in tests/test_devices.py; this checks the device itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.evaluation.evaluate import predict_split
from lggseg.model.checkpoint import load_checkpoint
from lggseg.model.devices import inference_runtime
from lggseg.model.inference import prepare_for_inference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_training_uses_bf16_learns_and_its_checkpoint_gives_the_same_masks_on_cpu(tmp_path, prepared_project):
    root = tmp_path / "gpu"
    shutil.copytree(prepared_project.processed, root / "data" / "processed")
    paths = Paths.at(root)
    cfg = tiny_config("train.device=cuda", "train.epochs=6", "train.num_workers=2", "model.architectures=[unet]")
    pipeline.train(cfg, paths, "unet")

    summary = json.loads((paths.model_dir("unet") / "train_summary.json").read_text())
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert summary["precision"] == expected and summary["memory_format"] == "channels_last"
    assert summary["pin_memory"] == "true" and summary["device"] == torch.cuda.get_device_name()
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_dice_patient"].max() > 0.3

    # the checkpoint loads on a machine without a GPU (map_location cpu) and segments alike
    model, _ = load_checkpoint(paths.model_dir("unet") / "best.pt")
    assert all(p.device.type == "cpu" for p in model.parameters())
    masks = {}
    for device, precision in (("cuda", "auto"), ("cpu", "fp32")):
        runtime = inference_runtime(device, precision)
        masks[device] = predict_split(prepare_for_inference(model, runtime), paths, "val", cfg, runtime).pred
    differ = float(np.mean(masks["cuda"] != masks["cpu"]))
    assert differ < 1e-3, f"{differ:.2%} of val mask pixels differ between CUDA ({expected}) and CPU fp32"
