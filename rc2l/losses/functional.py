"""The formulas several losses share, each defined once (docs/method.md): dice, mask average
pooling, semantic normalisation, per-class targets from a label map, and the connected zero
a loss returns when it has nothing to act on.

Shapes: B images, N regions/queries, M targets, K classes, C channels, P pixels (flattened).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def dice(
    a: Tensor, b: Tensor, smooth: float = 1.0, eps: float = 0.0, pairwise: bool = False, weight: Tensor | None = None
) -> Tensor:
    """Soft dice D(a, b) = (2 Σ_p ab + smooth) / (Σ_p a + Σ_p b + smooth + eps).

    a, b: (..., P) in [0, 1] → (...) for matching rows; with ``pairwise``, a: (..., N, P) and
    b: (..., M, P) → (..., N, M) for all pairs, one matrix product. ``smooth`` = 1 is the
    supervised/matching convention (an empty pair has dice 1), ``smooth`` = 0 with a small
    ``eps`` the region-contrast one (an empty pair has dice 0, so it is no positive).
    ``weight``: pixels that count, (..., P) like a and b, or (..., P) without the N/M axis when
    ``pairwise`` (0 = ignored pixel; None = all)."""
    if weight is not None:
        w = weight[..., None, :] if pairwise else weight
        a, b = a * w, b * w
    if pairwise:
        inter = a @ b.mT
        den = a.sum(-1)[..., :, None] + b.sum(-1)[..., None, :]
    else:
        inter = (a * b).sum(-1)
        den = a.sum(-1) + b.sum(-1)
    num = 2 * inter
    if smooth:
        num, den = num + smooth, den + smooth
    if eps:
        den = den + eps
    return num / den


def mask_average_pool(F: Tensor, m: Tensor, eps: float = 1e-6) -> Tensor:
    """Region features r = MAP(F, m) = Σ_u m(u) F(u) / Σ_u m(u).

    F: (B, C, h, w), m: (B, N, h, w) in [0, 1] → (B, N, C); or unbatched F: (C, h, w),
    m: (N, h, w) → (N, C). One (N×P)(P×C) product per image: linear in the pixels P.
    An empty mask gives a zero feature (not NaN)."""
    if F.dim() == 3:
        return mask_average_pool(F[None], m[None], eps)[0]
    m = m.to(F.dtype)
    num = torch.einsum("bnhw,bchw->bnc", m, F)
    return num / (m.sum((-2, -1))[..., None] + eps)


def normalize_semantic(S: Tensor, eps: float = 1e-6) -> Tensor:
    """S̄ = S normalised over the K classes. S: (B, K, h, w) ≥ 0 → (B, K, h, w), sums to 1."""
    S = S.float().clamp_min(0)
    return S / S.sum(1, keepdim=True).clamp_min(eps)


def log_normalized_semantic(S: Tensor, eps: float = 1e-6) -> Tensor:
    """log S̄, computed as log S − log Σ_k S with clamps so it is finite. (B, K, h, w)."""
    S = S.float().clamp_min(0)
    return S.clamp_min(eps).log() - S.sum(1, keepdim=True).clamp_min(eps).log()


def pixel_log_probs(out: dict) -> Tensor:
    """Per-pixel class log-probabilities (B, K, h, w) of either architecture: log S̄ of a
    mask-classification model's semantic masks, log-softmax of a per-pixel model's logits."""
    if "sem_logits" in out:
        return out["sem_logits"].float().log_softmax(1)
    return log_normalized_semantic(out["sem_masks"])


def pixel_probs(out: dict) -> Tensor:
    """Per-pixel class probabilities (B, K, h, w), detached: S̄ or softmax (see ``pixel_log_probs``)."""
    if "sem_logits" in out:
        return out["sem_logits"].detach().float().softmax(1)
    return normalize_semantic(out["sem_masks"].detach())


def targets_from_labels(labels: Tensor, ignore_index: int = 255) -> list[dict]:
    """labels: (B, H, W) int64 → per image {"labels": (M,), "masks": (M, H, W) float,
    "valid": (H, W) bool}: one binary mask per class present. The classes of the whole batch
    come from one ``unique`` (one device→host copy, not one per image)."""
    B = labels.shape[0]
    valid = labels != ignore_index
    base = int(labels.max()) + 1 if labels.numel() else 1
    img = torch.arange(B, device=labels.device)[:, None, None]
    keys = torch.unique(torch.where(valid, labels + base * img, -1)).cpu()  # sorted: image, then class
    keys = keys[keys >= 0]
    counts = torch.bincount(keys // base, minlength=B).tolist()
    img, classes = (keys // base).to(labels.device), (keys % base).to(labels.device)
    masks = (labels[img] == classes[:, None, None]).float()  # (Σ M, H, W)
    return [{"labels": c, "masks": m, "valid": v} for c, m, v in zip(classes.split(counts), masks.split(counts), valid)]


def connected_zero(*tensors: Tensor | nn.Module | None) -> Tensor:
    """An exact scalar 0 whose graph reaches ``tensors`` (and a module's parameters): backward
    gives them zero gradients instead of failing, and DDP sees the parameters as used."""
    zero = None
    for t in tensors:
        items = list(t.parameters()) if isinstance(t, nn.Module) else [t]
        for x in items:
            if isinstance(x, Tensor) and x.requires_grad and x.numel() > 0:
                z = x.reshape(-1)[0].float() * 0.0
                zero = z if zero is None else zero + z
    if zero is None:
        dev = next((x.device for x in tensors if isinstance(x, Tensor)), None)
        zero = torch.zeros((), device=dev)
    return zero
