"""Joint image/mask transforms: weak geometry, strong photometric view, CutMix boxes.

Readers hand over ``image: tv_tensors.Image uint8 (3, H, W)`` and ``mask: tv_tensors.Mask
uint8 (H, W)`` (255 = ignore). Every transform below returns a sample dict in the format the
engine relies on; images leave as float32 in [0, 1], *not* normalised (the model normalises).

All randomness comes from torch's global RNG, so seeding it (and DataLoader worker seeding)
makes the pipeline reproducible.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional import InterpolationMode

from rc2l.data.formats import IGNORE


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def resize_pair(image: torch.Tensor, mask: torch.Tensor | None, size: Sequence[int]):
    """Resize image (bilinear, antialiased) and mask (nearest) to ``size = [h, w]``; each one
    already of that size is left as it is (an image stored at data.resize beside a native label)."""
    size = [int(size[0]), int(size[1])]
    if list(image.shape[-2:]) != size:
        image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if mask is not None and list(mask.shape[-2:]) != size:
        mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST)
    return image, mask


def weak_geometry(
    image: torch.Tensor,
    mask: torch.Tensor,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (1.0, 1.0),
    resize: Sequence[int] | None = None,
    mask_fill: int = IGNORE,
):
    """Resize → random scale → pad (right/bottom) → random crop → random horizontal flip.

    image: (3, H, W) uint8, mask: (H, W) uint8 → image (3, ch, cw), mask (ch, cw).
    The image is padded with 0 and the mask with ``mask_fill`` (255 = ignore for labels,
    0 for a validity map), so padding never counts as a label.
    """
    if resize:
        image, mask = resize_pair(image, mask, resize)
    h, w = image.shape[-2:]
    lo, hi = scale_range
    s = _uniform(float(lo), float(hi))
    if s != 1.0:
        image, mask = resize_pair(image, mask, [max(1, round(h * s)), max(1, round(w * s))])
    h, w = image.shape[-2:]
    ch, cw = int(crop_size[0]), int(crop_size[1])
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        # padding = [left, top, right, bottom]
        image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
        mask = TF.pad(mask, [0, 0, pad_w, pad_h], fill=mask_fill)
        h, w = image.shape[-2:]
    top = int(torch.randint(0, h - ch + 1, ()).item())
    left = int(torch.randint(0, w - cw + 1, ()).item())
    image = TF.crop(image, top, left, ch, cw)
    mask = TF.crop(mask, top, left, ch, cw)
    if torch.rand(()).item() < 0.5:
        image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
    return image, mask


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) → plain float32 tensor (3, H, W) in [0, 1]."""
    return image.as_subclass(torch.Tensor).to(torch.float32).div_(255.0)


def _blur(image: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with sigma ~ U(0.1, 2.0); the kernel shrinks to fit tiny images."""
    sigma = _uniform(0.1, 2.0)
    k = 2 * math.ceil(3 * sigma) + 1
    limit = min(image.shape[-2:])  # reflect padding needs k // 2 < side
    if k // 2 >= limit:
        k = 2 * (limit - 1) - 1 if limit > 1 else 1
    if k < 3:
        return image
    return TF.gaussian_blur(image, [k, k], [sigma, sigma])


_JITTER = v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8)
_GRAY = v2.RandomGrayscale(p=0.2)


def strong_photometric(image: torch.Tensor) -> torch.Tensor:
    """Strong view (UniMatch-style): colour jitter p=0.8, grayscale p=0.2, blur p=0.5.

    image: float32 (3, H, W) in [0, 1] → same shape and range. Photometric only, so the
    strong view keeps the weak view's geometry pixel for pixel.
    """
    out = _GRAY(_JITTER(tv_tensors.Image(image)))
    if torch.rand(()).item() < 0.5:
        out = _blur(out)
    return out.as_subclass(torch.Tensor).clamp(0.0, 1.0).contiguous()


class TrainTransform:
    """Labeled training view → ``{"image": (3, ch, cw) float32, "mask": (ch, cw) int64}``."""

    def __init__(
        self, crop_size: Sequence[int], scale_range: Sequence[float] = (0.5, 2.0), resize: Sequence[int] | None = None
    ):
        self.crop_size, self.scale_range, self.resize = list(crop_size), list(scale_range), list(resize or [])

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> dict:
        image, mask = weak_geometry(image, mask, self.crop_size, self.scale_range, self.resize)
        return {"image": to_float(image), "mask": mask.as_subclass(torch.Tensor).to(torch.int64)}


class UnlabeledTransform:
    """Unlabeled views sharing one crop → ``image_w``, ``image_s`` (3, ch, cw) float32 and
    ``valid`` (ch, cw) bool (False on padding); with ``strong_views=2`` also ``image_s2``, a
    second strong view with its own photometric draw (UniMatch). The mask argument is ignored."""

    needs_mask = False

    def __init__(
        self,
        crop_size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        resize: Sequence[int] | None = None,
        strong_views: int = 1,
    ):
        self.crop_size, self.scale_range, self.resize = list(crop_size), list(scale_range), list(resize or [])
        self.strong_views = strong_views

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        ones = tv_tensors.Mask(torch.ones(image.shape[-2:], dtype=torch.uint8))
        image, valid = weak_geometry(image, ones, self.crop_size, self.scale_range, self.resize, mask_fill=0)
        weak = to_float(image)
        out = {
            "image_w": weak,
            "image_s": strong_photometric(weak.clone()),
            "valid": valid.as_subclass(torch.Tensor).bool(),
        }
        if self.strong_views > 1:  # drawn after the first, so image_s is the same with one view or two
            out["image_s2"] = strong_photometric(weak.clone())
        return out


class EvalTransform:
    """Validation view: whole image, resized to ``resize`` if set, no crop, no randomness. With
    ``native_labels`` the mask keeps its own size (evaluation upsamples the prediction to it)."""

    def __init__(self, resize: Sequence[int] | None = None, native_labels: bool = False):
        self.resize, self.native_labels = list(resize or []), native_labels

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> dict:
        if self.resize:
            image, small = resize_pair(image, None if self.native_labels else mask, self.resize)
            mask = mask if self.native_labels else small
        return {"image": to_float(image), "mask": mask.as_subclass(torch.Tensor).to(torch.int64)}


def cutmix_boxes(batch: int, h: int, w: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One CutMix box per image (UniMatch-style) → bool (B, h, w), True inside the box.

    With probability ``p`` an image gets a box of area ratio U(0.02, 0.4) and aspect ratio
    U(0.3, 1/0.3), placed uniformly so it fits; otherwise its mask is all False.
    """
    out = torch.zeros(batch, h, w, dtype=torch.bool)
    for b in range(batch):
        r = torch.rand(3, generator=generator)
        if r[0].item() >= p:
            continue
        area = (0.02 + (0.4 - 0.02) * r[1].item()) * h * w
        aspect = 0.3 + (1 / 0.3 - 0.3) * r[2].item()
        bw = min(w, max(1, int(math.sqrt(area / aspect))))
        bh = min(h, max(1, int(math.sqrt(area * aspect))))
        y = int(torch.randint(0, h - bh + 1, (), generator=generator).item())
        x = int(torch.randint(0, w - bw + 1, (), generator=generator).item())
        out[b, y : y + bh, x : x + bw] = True
    return out
