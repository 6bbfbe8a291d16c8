"""Pixel-level counterparts of the region losses (the baselines RC²L argues against).

- ``pixel_pseudo_ce``: FixMatch-style pseudo-label cross-entropy of the student's semantic
  output against the teacher's Ŷ, on pixels whose teacher confidence passes a threshold.
- ``ohem_cross_entropy``: UniMatch's labelled loss for driving scenes (Cityscapes): CE over the
  hard pixels only (online hard example mining).
- ``pixel_contrast_loss``: supervised InfoNCE (SupCon) over pixel embeddings of F with the
  pseudo-labels as classes; "sampled" (``num_samples`` pixels per batch, as ReCo/U²PL do)
  or "exact" (every confident pixel: the P×P similarity whose O(P²) cost the benchmark
  measures).

Same contract as the region losses: teacher tensors are detached, and when no pixel is
usable the loss is an exact 0 still connected to the student's graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from rc2l.losses.functional import connected_zero, log_normalized_semantic


def pixel_pseudo_ce(
    student: Tensor,
    label: Tensor,
    conf: Tensor,
    threshold: float = 0.95,
    ignore: Tensor | None = None,
    input: str = "sem",
    eps: float = 1e-6,
) -> Tensor:
    """FixMatch pixel pseudo-label CE.

    student: (B, K, h, w) — ``input="sem"``: semantic masks S^s (the log of the normalised S̄^s
    is used), ``input="logits"``: per-pixel class logits (log-softmax is used);
    label: (B, h, w) int64 teacher Ŷ; conf: (B, h, w) teacher max S̄^t;
    ignore: (B, h, w) bool, True = pixel not part of the image (padding) or None.
    Pixels with conf ≥ ``threshold`` (and not ignored) contribute; as in FixMatch, the sum is
    divided by the number of non-ignored pixels (not the number of confident ones), so a batch
    with few confident pixels gives a small loss. Returns a scalar."""
    B, K = student.shape[:2]
    if input == "sem":
        logp = log_normalized_semantic(student, eps)
    elif input == "logits":
        logp = student.float().log_softmax(1)
    else:
        raise ValueError(f"input must be 'sem' or 'logits', got {input!r}")
    keep = conf.detach() >= threshold
    total = label.numel()
    if ignore is not None:
        keep = keep & ~ignore
        total = int((~ignore).sum())
    if not bool(keep.any()):
        return connected_zero(student)
    nll = -logp.gather(1, label.detach().clamp(0, K - 1)[:, None]).squeeze(1)  # (B, h, w)
    return nll[keep].sum() / max(total, 1)


def ohem_keep(p_true: Tensor, valid: Tensor, thresh: float, min_kept: float) -> Tensor:
    """Which pixels OHEM trains on. p_true: (B, H, W) probability of each pixel's true class;
    valid: (B, H, W) bool, not ignored → (B, H, W) bool.

    A valid pixel counts if p_true ≤ max(thresh, the n-th smallest valid p_true), n =
    ceil(min_kept × valid pixels): the pixels under the threshold, and never fewer than the
    n hardest (ties at the cut all count), as UniMatch's Cityscapes loss. ``min_kept`` is a
    fraction of the batch's valid pixels, so the floor scales with batch and crop (UniMatch's
    200,000 of its 2×801×801 pixels per GPU ≈ 0.156)."""
    n_valid = int(valid.sum())
    cut = torch.tensor(float(thresh), device=p_true.device)
    n = min(n_valid, math.ceil(min_kept * n_valid))
    if n > 0:
        cut = torch.maximum(cut, p_true[valid].float().kthvalue(n).values)
    return valid & (p_true <= cut)


def ohem_cross_entropy(
    logits: Tensor, labels: Tensor, thresh: float = 0.7, min_kept: float = 0.156, ignore_index: int = 255
) -> Tensor:
    """Cross-entropy averaged over the pixels ``ohem_keep`` picks; logits: (B, K, H, W) at the
    label size, labels: (B, H, W) int64 with ``ignore_index``. Easy pixels (true class already
    likely) stop pulling the loss, so rare and thin classes weigh more. Scalar (a connected 0
    when every pixel is ignored)."""
    valid = labels != ignore_index
    if not bool(valid.any()):
        return connected_zero(logits)
    logp = logits.float().log_softmax(1)
    nll = -logp.gather(1, torch.where(valid, labels, 0)[:, None]).squeeze(1)  # (B, H, W)
    keep = ohem_keep((-nll.detach()).exp(), valid, thresh, min_kept)
    return nll[keep].sum() / keep.sum()


def supcon_loss(z: Tensor, y: Tensor, tau: float = 0.1, chunk: int | None = None) -> Tensor:
    """Supervised contrastive loss over a set of embeddings (exact, all pairs).

    z: (P, D) L2-normalised embeddings; y: (P,) int64 classes. For each anchor a with at least
    one positive: −1/|P(a)| Σ_{p∈P(a)} log [exp(z_a·z_p/τ) / Σ_{j≠a} exp(z_a·z_j/τ)], averaged
    over such anchors. ``chunk`` rows of the P×P similarity are built at a time (None = all at
    once); the result is the same, only peak memory changes (O(chunk·P) instead of O(P²)).
    Returns a scalar (a connected 0 when no anchor has a positive)."""
    P = z.shape[0]
    if P < 2:
        return connected_zero(z)
    chunk = chunk or P
    total, anchors = None, None
    cols = torch.arange(P, device=z.device)
    for s in range(0, P, chunk):
        e = min(s + chunk, P)
        self_mask = cols[None, :] == torch.arange(s, e, device=z.device)[:, None]  # (c, P)
        sim = (z[s:e] @ z.T / tau).masked_fill(self_mask, float("-inf"))
        logprob = sim.log_softmax(1)
        pos = (y[s:e, None] == y[None, :]) & ~self_mask
        npos = pos.sum(1)
        mean_pos = logprob.masked_fill(~pos, 0.0).sum(1) / npos.clamp_min(1)
        has = npos > 0
        part, cnt = -(mean_pos * has).sum(), has.sum()
        total = part if total is None else total + part
        anchors = cnt if anchors is None else anchors + cnt
    if int(anchors) == 0:
        return connected_zero(z)
    return total / anchors


def pixel_contrast_loss(
    feats: Tensor,
    label: Tensor,
    valid: Tensor,
    tau: float = 0.1,
    mode: str = "sampled",
    num_samples: int = 1024,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pixel-level InfoNCE with pseudo-labels as classes.

    feats: (B, C, h, w) student pixel embeddings F^s (L2-normalised here); label: (B, h, w)
    int64 teacher Ŷ; valid: (B, h, w) bool (confident, not padding). The pixel set is every
    valid pixel of the batch ("exact") or ``num_samples`` of them drawn uniformly without
    replacement ("sampled"; all of them if there are fewer, which makes it equal to "exact").
    Loss = ``supcon_loss`` over that set. ``generator``: a CPU generator for the sampling.
    Returns a scalar."""
    if mode not in ("sampled", "exact"):
        raise ValueError(f"pixel contrast mode must be 'sampled' or 'exact', got {mode!r}")
    C = feats.shape[1]
    z = Fn.normalize(feats.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, C)  # (B·h·w, C)
    y = label.detach().reshape(-1)
    idx = valid.detach().reshape(-1).nonzero().squeeze(1)
    if idx.numel() < 2:
        return connected_zero(feats)
    if mode == "sampled" and idx.numel() > num_samples:
        pick = torch.randperm(idx.numel(), generator=generator)[:num_samples].to(idx.device)
        idx = idx[pick]
    return supcon_loss(z[idx], y[idx].to(z.device), tau, chunk)


class PixelCriterion(nn.Module):
    """Supervised loss of a per-pixel model: cross-entropy of its stride-4 logits, upsampled
    to the label size, over non-ignored pixels (DeepLab/UniMatch convention); with
    ``ohem`` = (thresh, min_kept), ``ohem_cross_entropy`` instead (UniMatch's Cityscapes loss)."""

    def __init__(self, ignore_index: int = 255, ohem: tuple[float, float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.ohem = ohem

    def begin_step(self, labels: list[Tensor]) -> None:
        """A mean over each micro-batch's pixels needs no normaliser from the others."""

    def forward(self, outputs: dict, labels: Tensor) -> dict[str, Tensor]:
        """outputs["sem_logits"]: (B, K, h, w); labels: (B, H, W) int64."""
        logits = Fn.interpolate(
            outputs["sem_logits"].float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
        )
        if not bool((labels != self.ignore_index).any()):
            ce = connected_zero(outputs["sem_logits"])
        elif self.ohem is not None:
            ce = ohem_cross_entropy(logits, labels, *self.ohem, ignore_index=self.ignore_index)
        else:
            ce = Fn.cross_entropy(logits, labels, ignore_index=self.ignore_index)
        return {"loss_ce": ce, "loss": ce}
