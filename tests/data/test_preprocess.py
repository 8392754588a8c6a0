import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from lggseg.core.config import PreprocessConfig, SplitConfig
from lggseg.data.layout import build_index
from lggseg.data.preprocess import load_split, prepare_image, prepare_mask, preprocess_dataset, to_model_input
from lggseg.data.split import PatientLeakError, make_splits


def test_prepare_image_resizes_and_selects_channels():
    image = np.random.default_rng(0).integers(0, 200, (256, 256, 3), dtype=np.uint8)
    assert np.array_equal(prepare_image(image, 256, "all"), image)  # 256 is a pass-through
    small = prepare_image(image, 64, "all")
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    flair = prepare_image(image, 128, "flair")
    assert flair.shape == (128, 128, 1)
    assert np.array_equal(prepare_image(image, 256, "flair")[..., 0], image[..., 1])  # FLAIR is channel 1
    # area interpolation averages: a 4x4 block of one value stays that value
    block = np.zeros((256, 256, 3), np.uint8)
    block[:4, :4] = 100
    assert prepare_image(block, 64, "all")[0, 0, 0] == 100


def test_prepare_mask_is_binary_and_nearest():
    mask = np.zeros((256, 256), np.uint8)
    mask[100:140, 50:90] = 255
    for size in (64, 256, 320):
        out = prepare_mask(mask, size)
        assert out.shape == (size, size) and set(np.unique(out)) == {0, 1}
    assert prepare_mask(mask, 64).sum() == pytest.approx(mask.astype(bool).sum() / 16, rel=0.05)


def test_model_input_is_float_in_unit_range():
    images = np.full((2, 8, 8, 3), 255, np.uint8)
    x = to_model_input(images)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32 and x.max() == 1.0


def test_processed_arrays_match_tifs(prepared_project):
    root = prepared_project.dataset
    manifest = json.loads((prepared_project.processed / "manifest.json").read_text())
    assert manifest["size"] == 64 and manifest["in_channels"] == 3 and len(manifest["fingerprint"]) == 16
    for split in ("train", "val", "test"):
        images, masks, table = load_split(prepared_project.processed, split)
        assert isinstance(images, np.memmap) and images.shape[1:] == (64, 64, 3) and images.dtype == np.uint8
        assert masks.shape == images.shape[:3] and set(np.unique(masks)) <= {0, 1}
        row = table.iloc[len(table) // 2]
        i = len(table) // 2
        expected = prepare_image(tifffile.imread(root / row["image_path"]), 64, "all")
        assert np.array_equal(images[i], expected)
        tumor = tifffile.imread(root / row["mask_path"]) > 0
        assert (masks[i].sum() > 0) == tumor.any()
    splits = json.loads(prepared_project.splits_json.read_text())
    test_table = pd.read_csv(prepared_project.processed / "test" / "slices.csv")
    assert set(test_table["patient_id"]) == set(splits["test"])


def test_preprocess_refuses_leaky_splits_and_keeps_old_output(tmp_path, synthetic_tree):
    slices, _ = build_index(synthetic_tree)
    splits = make_splits(slices, SplitConfig(seed=0))
    out = tmp_path / "processed"
    preprocess_dataset(slices, splits, synthetic_tree, out, PreprocessConfig(size=32))
    before = (out / "manifest.json").read_bytes()
    leaky = {**splits, "test": splits["test"] + splits["train"][:1]}
    with pytest.raises(PatientLeakError):
        preprocess_dataset(slices, leaky, synthetic_tree, out, PreprocessConfig(size=64))
    assert (out / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]


def test_flair_only_channel(tmp_path, synthetic_tree):
    slices, _ = build_index(synthetic_tree)
    splits = make_splits(slices, SplitConfig(seed=0))
    manifest = preprocess_dataset(slices, splits, synthetic_tree, tmp_path / "p", PreprocessConfig(size=32, channels="flair"))
    images, _, table = load_split(tmp_path / "p", "val")
    assert manifest["in_channels"] == 1 and images.shape[1:] == (32, 32, 1)
    raw = tifffile.imread(synthetic_tree / table["image_path"].iloc[0])
    assert np.array_equal(images[0], prepare_image(raw, 32, "flair"))


def test_missing_split_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing images.npy"):
        load_split(tmp_path, "train")
