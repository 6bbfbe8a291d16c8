"""Hungarian matching between N predicted regions and M target regions (scipy)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def batch_dice_cost(pred: Tensor, tgt: Tensor, eps: float = 1.0) -> Tensor:
    """pred: (N, P) probabilities, tgt: (M, P) in [0, 1] -> (N, M) of 1 - dice."""
    num = 2 * pred @ tgt.T
    den = pred.sum(-1)[:, None] + tgt.sum(-1)[None, :]
    return 1 - (num + eps) / (den + eps)


def batch_bce_cost(pred_logits: Tensor, tgt: Tensor) -> Tensor:
    """pred_logits: (N, P), tgt: (M, P) -> (N, M) mean sigmoid BCE over pixels.

    Uses BCE(x, t) = softplus(x) - x*t, so the (N, M) matrix is two matmuls, not N*M*P.
    """
    p = pred_logits.shape[1]
    pos = torch.nn.functional.softplus(-pred_logits)  # -log σ(x)
    neg = torch.nn.functional.softplus(pred_logits)  # -log(1-σ(x))
    return (pos @ tgt.T + neg @ (1 - tgt).T) / max(p, 1)


@torch.no_grad()
def match_cost(
    pred_logits: Tensor,
    pred_masks: Tensor,
    tgt_classes: Tensor,
    tgt_masks: Tensor,
    cls_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> Tensor:
    """Cost matrix for one image.

    pred_logits: (N, K+1) class logits; pred_masks: (N, P) mask logits (flattened pixels);
    tgt_classes: (M,) int64; tgt_masks: (M, P) binary or soft targets. Returns (N, M).
    """
    prob = pred_logits.float().softmax(-1)
    cost_cls = -prob[:, tgt_classes]
    pm = pred_masks.float()
    tm = tgt_masks.float()
    return (
        cls_weight * cost_cls
        + mask_weight * batch_bce_cost(pm, tm)
        + dice_weight * batch_dice_cost(pm.sigmoid(), tm)
    )


def _assign(c: np.ndarray) -> tuple[Tensor, Tensor]:
    if c.size == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    c = np.nan_to_num(c, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    return torch.as_tensor(rows[order], dtype=torch.int64), torch.as_tensor(cols[order], dtype=torch.int64)


def hungarian(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Optimal assignment for a (N, M) cost. Returns (pred_idx, tgt_idx), both (min(N, M),)
    int64 and sorted by tgt_idx so that ``pred_idx[i]`` is π(tgt_idx[i])."""
    return _assign(cost.detach().float().cpu().numpy())


def hungarian_batch(costs: list[Tensor | None]) -> list[tuple[Tensor, Tensor]]:
    """``hungarian`` for every image's (N, M_b) cost (None = no target), with one device→host
    copy for the whole batch: on a GPU each copy waits for all queued work, so one per image
    and decoder layer adds up."""
    present = [c.detach().float() for c in costs if c is not None]
    host = torch.cat(present, dim=1).cpu().numpy() if present else np.zeros((0, 0))
    out, col = [], 0
    for c in costs:
        m = 0 if c is None else c.shape[1]
        out.append(_assign(host[:, col:col + m]))  # an empty slice is an image without targets
        col += m
    return out


@torch.no_grad()
def match(
    pred_logits: Tensor,
    pred_masks: Tensor,
    targets: list[dict],
    cls_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> list[tuple[Tensor, Tensor]]:
    """Match a batch. pred_logits: (B, N, K+1); pred_masks: (B, N, h, w) logits;
    targets[b] = {"labels": (M,), "masks": (M, h, w)} at the resolution of pred_masks.
    Returns per image (pred_idx, tgt_idx)."""
    return hungarian_batch([
        None if t["labels"].numel() == 0 else match_cost(
            pred_logits[b], pred_masks[b].flatten(1), t["labels"], t["masks"].flatten(1),
            cls_weight, mask_weight, dice_weight,
        )
        for b, t in enumerate(targets)
    ])
