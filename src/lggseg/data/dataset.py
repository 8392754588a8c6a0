"""The torch Dataset over preprocessed split arrays."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from lggseg.data.preprocess import load_split


class SliceDataset(Dataset):
    """Items: image float32 (C, H, W) in [0, 1], mask float32 (1, H, W) in {0, 1}, patient_id, slice.

    Augmentation (train split only) is applied to uint8 image and mask jointly before scaling.
    """

    def __init__(self, processed_dir: Path, split: str, transform: A.Compose | None = None):
        self.images, self.masks, self.table = load_split(processed_dir, split)
        self.split = split
        self.transform = transform
        self.patient_ids = self.table["patient_id"].astype(str).tolist()
        self.slices = self.table["slice"].astype(int).tolist()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        image = np.array(self.images[index])  # a writable copy of the memory-mapped slice
        mask = np.array(self.masks[index])
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0)
        return {"image": image_t, "mask": mask_t, "patient_id": self.patient_ids[index], "slice": self.slices[index]}


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: reseed numpy and the dataset's augmentation from torch's per-worker
    seed, which the loader derives from its (seeded) generator, so runs repeat and epochs differ."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if isinstance(dataset, SliceDataset) and dataset.transform is not None:
        dataset.transform.set_random_seed(seed)
