"""The training data streams (labelled, and unlabelled for the semi-supervised methods): each a
resumable sampler, its position (saved with the state), and the loader over it."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from rc2l.config import Config
from rc2l.data.build import collate
from rc2l.data.sampler import ResumableSampler, SeededDataset, StreamPosition
from rc2l.engine import distributed as D
from rc2l.errors import TrainingError


def channels_last_collate(batch: list[dict | None]) -> dict | None:
    """``collate`` with the image batches in channels_last (NHWC) memory format, for a model
    converted to it (train.channels_last): convolutions then need no layout conversion."""
    out = collate(batch)
    if out is not None:
        for k, v in out.items():
            if torch.is_tensor(v) and v.dim() == 4:
                out[k] = v.contiguous(memory_format=torch.channels_last)
    return out


def make_loader(
    dataset, batch_size: int, sampler: ResumableSampler, workers: int, channels_last: bool = False
) -> DataLoader:
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=channels_last_collate if channels_last else collate,
        drop_last=True,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class Streams:
    """``positions[k]``: where stream k stands (epoch, position in it, per rank); ``next`` moves
    it and counts the samples dropped as bad (data.bad_samples=skip) in ``skipped_samples``."""

    def __init__(self, cfg: Config, datasets: dict, uses_unlabeled: bool):
        r, w = D.rank(), D.world_size()
        self.cfg, self.datasets = cfg, datasets
        self.samplers = {"labeled": ResumableSampler(len(datasets["labeled"]), cfg.seed, r, w)}
        if uses_unlabeled:
            if datasets.get("unlabeled") is None:
                raise TrainingError(
                    f"method={cfg.method} needs unlabeled images: set data.split to a partition with an "
                    f"unlabeled.txt (e.g. 1_8), not '{cfg.data.split}'"
                )
            self.samplers["unlabeled"] = ResumableSampler(len(datasets["unlabeled"]), cfg.seed + 1, r, w)
        self.positions = {k: StreamPosition(s) for k, s in self.samplers.items()}
        self.skipped_samples = 0

    def batch_size(self, key: str) -> int:
        return self.cfg.data.batch_size if key == "labeled" else self.cfg.data.unlabeled_batch_size

    def iterators(self) -> dict:
        """One loader iterator per stream, starting at its saved position."""
        c = self.cfg
        its = {}
        # Starting a DataLoader iterator draws its base seed from the global torch RNG; a resumed
        # run starts its iterators at another step than the run it continues, so keep that draw
        # off the global stream (samples are seeded by the sampler anyway).
        with torch.random.fork_rng(devices=[]):
            for k, s in self.samplers.items():
                s.start(self.positions[k].epoch, self.positions[k].position)
                loader = make_loader(self.datasets[k], self.batch_size(k), s, c.data.workers, c.train.channels_last)
                its[k] = iter(loader)
        return its

    def next(self, its: dict, key: str) -> dict:
        """Next batch of a stream; a batch whose samples were all dropped as bad is skipped."""
        while True:
            batch = next(its[key])
            bs = self.batch_size(key)
            self.positions[key].advance(bs)
            if batch is None:
                self.skipped_samples += bs
                continue
            self.skipped_samples += int(batch.get("num_skipped", 0))
            return batch

    def state(self) -> dict:
        return {k: {**p.state(), "world": D.world_size()} for k, p in self.positions.items()}

    def load_state(self, saved: dict) -> None:
        """Positions count per rank: a state saved by another number of processes is mapped
        through the global position."""
        for k, p in self.positions.items():
            d = saved[k]
            p.epoch, p.position = d["epoch"], d["position"]
            old_w = d.get("world", D.world_size())
            if old_w != D.world_size():
                p.position = d["position"] * old_w // D.world_size()
                p.advance(0)  # past this rank's share of the epoch → next epoch
