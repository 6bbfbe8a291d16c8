"""The built-in dataset: textured scenes of overlapping shapes, generated from a seed.

Why it looks like this: a segmenter must learn *shape* and *context* to solve it, not a
colour lookup. Every shape's colour and the background's base colour are drawn from the same
distribution whatever the class, so a pixel's colour says nothing about its class; a disc and
a ring differ only by the hole that shows what lies beneath. Each image is a pure function of
``(seed, split, index)``: no disk, identical data for the same seed, train ≠ val.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from rc2l.config import SyntheticConfig
from rc2l.data.transforms import EvalTransform

CLASS_NAMES = ["background", "disc", "square", "triangle", "ring"]
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200)]
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_CODES = {"train": 0, "val": 1}
_MIN_COLOUR_DIST = 60.0  # keep shapes visible against the background and each other


def _shape(cls: int, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Boolean (H, W) footprint of shape ``cls`` of radius ``r`` centred at dx = dy = 0."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    d2 = dx * dx + dy * dy
    if cls == 1:  # disc
        return d2 <= r * r
    if cls == 2:  # square, area close to the disc's
        a = 0.85 * r
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    if cls == 3:  # equilateral triangle in a circle of radius 1.3 r
        inside = np.ones_like(dx, dtype=bool)
        for k in range(3):
            t = angle + 2 * math.pi * k / 3
            inside &= (math.cos(t) * dx + math.sin(t) * dy) <= 0.65 * r
        return inside
    if cls == 4:  # ring: what lies beneath shows through the hole
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"unknown shape class {cls}")


def _colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """RGB ~ U(0, 255)^3, resampled (at most 10 times) until far from the colours in ``avoid``."""
    for _ in range(10):
        col = rng.uniform(0, 255, 3)
        if all(np.linalg.norm(col - a) >= _MIN_COLOUR_DIST for a in avoid):
            break
    return col


def generate(seed: int, split: str, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One scene → image uint8 (size, size, 3), mask uint8 (size, size) with values 0..4."""
    if split not in SPLIT_CODES:
        raise ValueError(f"synthetic split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    # Background: a base colour with oriented stripes and a soft gradient (texture, not class).
    base = rng.uniform(0, 255, 3)
    theta, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
    freq = rng.uniform(3, 8) * 2 * math.pi / size
    stripes = np.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    tint = rng.uniform(-30, 30, 3)
    image = base + stripes[..., None] * tint
    mask = np.zeros((size, size), np.uint8)

    colours = [base]
    for cls in rng.integers(1, NUM_CLASSES, rng.integers(2, 6)):  # drawing order = occlusion order
        r = rng.uniform(0.1, 0.25) * size
        cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
        inside = _shape(int(cls), xx - cx, yy - cy, r, rng.uniform(0, 2 * math.pi))
        col = _colour(rng, colours)
        colours.append(col)
        g = rng.uniform(-20, 20, 3) / size  # shading with a random direction, mean zero
        shade = (xx - cx)[..., None] * g
        image = np.where(inside[..., None], col + shade, image)
        mask[inside] = cls
    image = image + rng.normal(0.0, 6.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class SyntheticDataset(Dataset):
    """Synthetic scenes ``indices`` of ``split``, passed through ``transform``.

    transform: one of ``TrainTransform`` / ``UnlabeledTransform`` / ``EvalTransform``
    (default: eval, i.e. the whole image). Sample ids are ``synthetic/<split>/<index>``.
    """

    num_classes = NUM_CLASSES

    def __init__(self, cfg: SyntheticConfig, split: str = "train", indices: list[int] | None = None, transform=None):
        if split not in SPLIT_CODES:
            raise ValueError(f"synthetic split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        n = cfg.num_train if split == "train" else cfg.num_val
        self.cfg, self.split = cfg, split
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        self.transform = transform or EvalTransform()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        image, mask = generate(self.cfg.seed, self.split, index, self.cfg.size)
        sample = self.transform(
            tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()),
            tv_tensors.Mask(torch.from_numpy(mask)),
        )
        sample["id"] = f"synthetic/{self.split}/{index:05d}"
        return sample
