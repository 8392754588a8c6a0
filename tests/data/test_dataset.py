import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from lggseg.core.config import AugmentConfig
from lggseg.data.augment import build_augmentation
from lggseg.data.dataset import SliceDataset, seed_worker

STRONG = AugmentConfig(enabled=True, hflip_p=0.5, affine_p=1.0, shift_limit=0.1, scale_limit=0.2, rotate_limit=30,
                       brightness_contrast_p=0.5, elastic_p=0.5)


@pytest.fixture
def square_split(tmp_path):
    """A processed split whose images carry a bright square exactly where the mask is."""
    rng = np.random.default_rng(0)
    n, size = 24, 64
    images = (rng.random((n, size, size, 3)) * 60).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c, h, w = rng.integers(8, 30), rng.integers(8, 30), rng.integers(8, 20), rng.integers(8, 20)
        masks[i, r:r + h, c:c + w] = 1
        images[i, r:r + h, c:c + w] = 230
    split = tmp_path / "train"
    split.mkdir()
    np.save(split / "images.npy", images)
    np.save(split / "masks.npy", masks)
    pd.DataFrame({"patient_id": [f"P{i // 8}" for i in range(n)], "slice": [i % 8 + 1 for i in range(n)]}).to_csv(
        split / "slices.csv", index=False)
    return tmp_path


def test_items_have_documented_shapes_and_ranges(square_split):
    item = SliceDataset(square_split, "train")[3]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 64, 64) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["patient_id"] == "P0" and item["slice"] == 4


def test_augmented_mask_stays_on_the_drawn_feature(square_split):
    dataset = SliceDataset(square_split, "train", transform=build_augmentation(STRONG, seed=1))
    changed = 0
    for epoch in range(3):
        for i in range(len(dataset)):
            item = dataset[i]
            mask = item["mask"][0].numpy().astype(bool)
            assert set(np.unique(mask)) <= {False, True}
            # the square is far brighter than the noise before and after brightness/contrast jitter
            feature = item["image"][1].numpy() > 0.55
            if mask.any() or feature.any():
                iou = (mask & feature).sum() / (mask | feature).sum()
                assert iou > 0.85, (epoch, i, iou)
            raw = np.asarray(dataset.masks[i]).astype(bool)
            changed += not np.array_equal(raw, mask)
    assert changed > len(dataset)  # augmentation really moved things


def test_augmentation_is_reproducible_for_a_seed(square_split):
    def run(seed):
        ds = SliceDataset(square_split, "train", transform=build_augmentation(STRONG, seed=seed))
        return torch.stack([ds[i]["image"] for i in range(6)])

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


def test_workers_reseed_from_the_loader_generator(square_split):
    def epoch_batch(seed):
        ds = SliceDataset(square_split, "train", transform=build_augmentation(STRONG, seed=0))
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(ds, batch_size=24, num_workers=2, worker_init_fn=seed_worker, generator=g)
        return [next(iter(loader))["image"] for _ in range(2)]

    first, second = epoch_batch(7), epoch_batch(7)
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # same seed, same augmentations
    assert not torch.equal(first[0], first[1])  # a new epoch draws new augmentations


def test_disabled_augmentation_and_non_train_splits_are_untouched(square_split):
    assert build_augmentation(AugmentConfig(enabled=False), seed=0) is None
    plain = SliceDataset(square_split, "train")
    raw = torch.from_numpy(np.asarray(plain.images[5]).transpose(2, 0, 1).copy()).float() / 255
    assert torch.equal(plain[5]["image"], raw)
