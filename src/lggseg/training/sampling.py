"""Which train slices an epoch shows: every slice once (shuffled), or tumour slices oversampled."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from lggseg.model import distributed
from lggseg.model.distributed import Group


class TumorSampler(Sampler[int]):
    """An epoch of `len(has_tumor)` draws with replacement in which tumour slices make up `tumor_fraction`
    on average (most slices of a volume show no tumour; small lesions are rare even among the rest).
    The draws depend on (seed, epoch) only, so a resumed run repeats them; under DDP every rank makes
    the same draws and keeps its share (rank, rank + world, ...), like torch's DistributedSampler."""

    def __init__(self, has_tumor: np.ndarray, tumor_fraction: float, seed: int, group: Group = distributed.SINGLE):
        has_tumor = np.asarray(has_tumor, dtype=bool)
        tumor, empty = int(has_tumor.sum()), int((~has_tumor).sum())
        if tumor == 0 or empty == 0:
            raise ValueError(f"train.tumor_fraction needs train slices with and without tumour; the train split has "
                             f"{tumor} with and {empty} without")
        weights = np.where(has_tumor, tumor_fraction / tumor, (1 - tumor_fraction) / empty)
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.seed, self.group, self.epoch = seed, group, 0
        self.draws = len(has_tumor) // group.world_size  # per rank; every rank the same number of batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.draws * self.group.world_size, replacement=True,
                                  generator=generator)
        return iter(drawn[self.group.rank :: self.group.world_size].tolist())

    def __len__(self) -> int:
        return self.draws
