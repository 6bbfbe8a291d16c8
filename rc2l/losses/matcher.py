"""Hungarian matching between N predicted regions and M target regions (scipy).

The costs of a whole batch are computed at once on targets padded to the batch's largest M
(``pad_targets``), copied to the host once, and the matches come back packed as flat index
tensors (``Matches``): the losses then index the batch instead of looping over images, which
on a GPU would be a dozen small kernel launches and a host→device copy per image and term."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from rc2l.losses.functional import dice


def batch_dice_cost(pred: Tensor, tgt: Tensor, eps: float = 1.0, weight: Tensor | None = None) -> Tensor:
    """pred: (..., N, P) probabilities, tgt: (..., M, P) in [0, 1] -> (..., N, M) of 1 - dice.
    ``weight``: (..., P) in {0, 1}, pixels that count (None = all)."""
    return 1 - dice(pred, tgt, smooth=eps, pairwise=True, weight=weight)


def batch_bce_cost(pred_logits: Tensor, tgt: Tensor, weight: Tensor | None = None) -> Tensor:
    """pred_logits: (..., N, P), tgt: (..., M, P) -> (..., N, M) mean sigmoid BCE over the pixels
    of ``weight`` (..., P) in {0, 1} (None = all).

    Uses BCE(x, t) = softplus(x) - x*t: the (N, M) matrix is Σ_p softplus(x) (one per query)
    minus one matmul, not N*M*P, and only one (..., N, P) temporary, which is what bounds it
    on a CPU (memory traffic) once a whole batch is costed at once.
    """
    x = pred_logits
    sp = torch.nn.functional.softplus(x)  # -log(1-σ(x))
    if weight is None:
        npix = torch.full(x.shape[:-2], float(max(x.shape[-1], 1)), device=x.device)
    else:
        w = weight[..., None, :]
        sp, x = sp * w, x * w
        npix = weight.sum(-1).clamp(min=1)
    return (sp.sum(-1)[..., :, None] - x @ tgt.mT) / npix[..., None, None]


@torch.no_grad()
def match_cost(
    pred_logits: Tensor,
    pred_masks: Tensor,
    tgt_classes: Tensor,
    tgt_masks: Tensor,
    cls_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Cost matrix for one image, or for a batch with a leading dimension on every argument.

    pred_logits: (..., N, K+1) class logits; pred_masks: (..., N, P) mask logits (flattened
    pixels); tgt_classes: (..., M) int64; tgt_masks: (..., M, P) binary or soft targets;
    weight: (..., P) pixels that count (None = all). Returns (..., N, M).
    """
    prob = pred_logits.float().softmax(-1)
    cost_cls = -prob.gather(-1, tgt_classes.unsqueeze(-2).expand(*prob.shape[:-1], tgt_classes.shape[-1]))
    pm = pred_masks.float()
    tm = tgt_masks.float()
    w = None if weight is None else weight.float()
    return (
        cls_weight * cost_cls
        + mask_weight * batch_bce_cost(pm, tm, w)
        + dice_weight * batch_dice_cost(pm.sigmoid(), tm, weight=w)
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


@dataclass
class Matches:
    """The matches of a batch as flat (L,) int64 tensors on one device, L = Σ_b L_b: pair l
    joins query ``pred[l]`` = π(i) of image ``img[l]`` to that image's target ``local[l]``,
    which is row ``tgt[l]`` of the batch's targets concatenated image after image.
    ``counts[b]`` = M_b, the targets of image b (host ints)."""

    img: Tensor
    pred: Tensor
    tgt: Tensor
    local: Tensor
    counts: list[int]

    def __len__(self) -> int:
        return int(self.img.numel())


def pack_matches(indices: list[tuple[Tensor, Tensor]], counts: list[int], device) -> Matches:
    """Per-image (pred_idx, tgt_idx) → ``Matches`` on ``device``, with one host→device copy."""

    def host(x) -> np.ndarray:
        return np.asarray(x.cpu() if isinstance(x, Tensor) else x, dtype=np.int64)

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pairs = [(host(p), host(t)) for p, t in indices]
    rows = [np.stack([np.full_like(t, b), p, t + offsets[b], t]) for b, (p, t) in enumerate(pairs)]
    packed = np.concatenate(rows, 1) if rows else np.zeros((4, 0), dtype=np.int64)
    img, pred, tgt, local = torch.from_numpy(packed).to(device).unbind(0)
    return Matches(img, pred, tgt, local, list(counts))


def pad_targets(targets: list[dict], key: str, device=None) -> tuple[Tensor, list[int]]:
    """Stack ``targets[b][key]`` (M_b, ...) into (B, max M_b, ...) with zeros after row M_b,
    in one scatter. Returns the padded tensor and the counts M_b."""
    counts = [int(t[key].shape[0]) for t in targets]
    flat = torch.cat([t[key] for t in targets])
    device = device if device is not None else flat.device
    img = [b for b, m in enumerate(counts) for _ in range(m)]
    local = [j for m in counts for j in range(m)]
    img, local = torch.tensor([img, local], dtype=torch.int64).to(device).unbind(0)
    out = flat.new_zeros((len(counts), max(counts, default=0), *flat.shape[1:]), device=device)
    return out.index_put((img, local), flat.to(device)), counts


def hungarian_padded(cost: Tensor, counts: list[int]) -> list[tuple[Tensor, Tensor]]:
    """``hungarian`` for every image of a padded (B, N, max M) cost, of which image b uses the
    first ``counts[b]`` columns; one device→host copy."""
    host = cost.detach().float().cpu().numpy()
    return [_assign(host[b, :, :m]) for b, m in enumerate(counts)]


@torch.no_grad()
def match_padded(
    pred_logits: Tensor,
    pred_masks: Tensor,
    labels: Tensor,
    masks: Tensor,
    counts: list[int],
    cls_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    weight: Tensor | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Match a batch whose targets are already padded (``pad_targets``). pred_logits:
    (B, N, K+1); pred_masks: (B, N, P) logits; labels: (B, max M) int64; masks: (B, max M, P)
    on the predictions' grid; counts: M_b; weight: (B, P) pixels that count (None = all).
    Returns per image (pred_idx, tgt_idx)."""
    if max(counts, default=0) == 0:
        return hungarian_padded(pred_masks.new_zeros(len(counts), pred_masks.shape[1], 0), counts)
    cost = match_cost(pred_logits, pred_masks, labels, masks, cls_weight, mask_weight, dice_weight, weight)
    return hungarian_padded(cost, counts)


@torch.no_grad()
def match(
    pred_logits: Tensor, pred_masks: Tensor, targets: list[dict], *weights: float, weight: Tensor | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Match a batch. pred_logits: (B, N, K+1); pred_masks: (B, N, h, w) logits;
    targets[b] = {"labels": (M,), "masks": (M, h, w)} at the resolution of pred_masks;
    ``weights``: the class, mask and dice cost weights (``match_padded``'s defaults if omitted);
    weight: (B, h, w) pixels that count in the mask costs (None = all).
    Returns per image (pred_idx, tgt_idx)."""
    masks, counts = pad_targets(targets, "masks", pred_masks.device)
    labels, _ = pad_targets(targets, "labels", pred_masks.device)
    w = None if weight is None else weight.flatten(1)
    return match_padded(pred_logits, pred_masks.flatten(2), labels, masks.flatten(2), counts, *weights, weight=w)
