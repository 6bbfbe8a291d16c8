"""Resumable, seeded data order.

The sampler yields ``(index, aug_seed)`` pairs: the order of each epoch comes from
(seed, epoch) and every sample's augmentation from its own seed, so the data seen after a
resume, with any number of workers or processes, is exactly the data an uninterrupted run
would have seen."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, step, ...), so every random draw
    has its own reproducible stream."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class ResumableSampler(Sampler):
    """Infinite stream of (index, aug_seed): epoch e is a permutation seeded by (seed, e),
    sharded ``rank::world`` (padded to equal length). ``start(epoch, position)`` resumes
    ``position`` samples into that epoch (counted on this process). Step t of N ranks with
    batch b covers global positions [t·N·b, (t+1)·N·b) of the epoch order, the same samples
    (and augmentations) as step t of one process with batch N·b."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch, self.position = 0, 0

    def per_rank(self) -> int:
        return -(-self.size // self.world)

    def start(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, position

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank() * self.world
        order = (order * (total // len(order) + 1))[:total]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, pos = self.epoch, self.position
        while True:
            idx = self.epoch_indices(epoch)
            for p in range(pos, len(idx)):
                # augmentation seeded by the sample's place in the (padded) epoch order, not by
                # (rank, local position): N ranks × batch b see the same augmented samples as one
                # process × batch N·b (for world = 1 this is the former (p, 0) seed)
                yield idx[p], mix_seed(self.seed, epoch, self.rank + p * self.world, 0, 7)
            epoch, pos = epoch + 1, 0


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, aug_seed)`` runs its random transforms under
    ``aug_seed`` without touching the caller's RNG state."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class StreamPosition:
    """Counts samples consumed from a ResumableSampler stream, in the main process, so the
    checkpoint records where the next batch starts (prefetched batches are not counted)."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler
        self.epoch, self.position = sampler.epoch, sampler.position

    def advance(self, n: int) -> None:
        self.position += n
        while self.position >= self.sampler.per_rank():
            self.position -= self.sampler.per_rank()
            self.epoch += 1

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}
