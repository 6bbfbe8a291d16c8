"""The four region-level losses of RC²L (docs/method.md, "The four region-level losses").

Inputs, shared by all four (B images, N student queries, K classes, C = channels of F):

- student: the segmenter's output dict on the (strong, CutMixed) view — ``pred_logits``
  (B, N, K+1) c^s, ``pred_masks`` (B, N, h, w) logits p^s, ``pixel_feats`` (B, C, h, w) F^s,
  ``sem_masks`` (B, K, h, w) S^s;
- teacher regions, one dict per image (``teacher_targets(...)["regions"]`` in rc2l.engine.teacher):
  ``masks`` (M, h, w) m^t in [0, 1], ``labels`` (M,) int64 ĉ, ``features`` (M, C) r^t,
  optional ``probs`` (M, K+1) teacher class distribution;
- matching, one ``(pred_idx, tgt_idx)`` pair per image (``rc2l.losses.matcher``): both
  (L,) int64, ``pred_idx[l] = π(tgt_idx[l])``; or the same already packed as ``Matches``
  (``RegionLosses`` packs once for all four terms).

Every teacher tensor is detached here (stop-gradient). A loss averages over the matched
teacher regions of the (local) batch, computed for the whole batch at once (no loop over
images: on a GPU these small losses are bound by kernel launches); an image with M = 0
contributes nothing, and a batch with no region gives an exact 0 that is still connected to
the student's graph (so ``backward`` works and DDP sees every parameter used). No loss has state besides the
projection head g of RFC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from rc2l.config import LossConfig, SemiConfig
from rc2l.losses.functional import connected_zero, dice, log_normalized_semantic, mask_average_pool, normalize_semantic
from rc2l.losses.matcher import Matches, match, pack_matches

TERMS = ("rmc", "rfc", "rcc", "smc")


# ----------------------------------------------------------------------------- helpers
def as_matches(regions: list[dict], indices: list[tuple[Tensor, Tensor]] | Matches, device) -> Matches:
    """Per-image matches packed for batched indexing (unchanged if already packed)."""
    if isinstance(indices, Matches):
        return indices
    return pack_matches(indices, [int(r["labels"].shape[0]) for r in regions], device)


def cat_regions(regions: list[dict], key: str, device) -> Tensor:
    """The batch's teacher ``key`` tensors, image after image (rows indexed by ``Matches.tgt``),
    detached."""
    return torch.cat([r[key] for r in regions]).detach().to(device)


# ----------------------------------------------------------------------------- RMC
def rmc_loss(
    pred_masks: Tensor,
    regions: list[dict],
    indices: list[tuple[Tensor, Tensor]],
    tau_m: float = 0.1,
    eps: float = 1e-6,
    weight: Tensor | None = None,
) -> Tensor:
    """Region Mask Contrastive.

    L_RMC = −1/N^t Σ_i log [exp(D(σ(p^s_π(i)), m^t_i)/τ_m) / Σ_{j=1..N} exp(D(σ(p^s_j), m^t_i)/τ_m)]

    pred_masks: (B, N, h, w) student logits p^s; regions[b]["masks"]: (M_b, h, w) m^t.
    Positive: the matched student mask; negatives: the other N−1 masks of the same image.
    weight: (B, h, w) pixels the dice is summed over (None = all). Cost: one batched product
    (B, max M, P)(B, P, N). Returns a scalar."""
    m = as_matches(regions, indices, pred_masks.device)
    if len(m) == 0:
        return connected_zero(pred_masks)
    s = pred_masks.float().sigmoid().flatten(2)  # (B, N, P)
    t = cat_regions(regions, "masks", s.device).float().flatten(1)[m.tgt]  # (L, P)
    t_pad = s.new_zeros(s.shape[0], max(m.counts), s.shape[2]).index_put((m.img, m.local), t)
    if weight is not None:
        w = weight.to(s.device).float().flatten(1)[:, None]  # (B, 1, P)
        s, t_pad = s * w, t_pad * w
    logits = (
        dice(t_pad, s, smooth=0.0, eps=eps, pairwise=True)[m.img, m.local] / tau_m
    )  # (L, N): each t against its image's N masks
    return Fn.cross_entropy(logits, m.pred)


# ----------------------------------------------------------------------------- RFC
class RFCHead(nn.Module):
    """Projection head g of RFC: Linear(C, C) → ReLU → Linear(C, D). Training only (dropped at
    inference: it is not part of the segmenter). (..., C) → (..., D)."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def rfc_loss(
    pred_masks: Tensor,
    pixel_feats: Tensor,
    regions: list[dict],
    indices: list[tuple[Tensor, Tensor]],
    head: nn.Module | None = None,
    tau_f: float = 0.1,
    scope: str = "batch",
    eps: float = 1e-6,
    weight: Tensor | None = None,
) -> Tensor:
    """Region Feature Contrastive.

    L_RFC = −1/N^t Σ_i log [exp(cos(g(r^s_π(i)), g(r^t_i))/τ_f) / Σ_{j∈𝒩} exp(cos(g(r^s_j), g(r^t_i))/τ_f)]

    pred_masks: (B, N, h, w) student logits p^s; pixel_feats: (B, C, h, w) F^s;
    regions[b]["features"]: (M_b, C) r^t = MAP(F^t, m^t). r^s_j = MAP(F^s, σ(p^s_j)), (B, N, C).
    ``scope``: "batch" → 𝒩 = all B·N student regions; "image" → the N of the same image.
    ``head`` = g (``RFCHead``); None = identity. The teacher features are detached, but both
    sides go through the same g, so g is trained from both (the teacher network gets nothing).
    weight: (B, h, w) pixels the student's MAP pools over (None = all). Returns a scalar."""
    if scope not in ("batch", "image"):
        raise ValueError(f"rfc scope must be 'batch' or 'image', got {scope!r}")
    g = head if head is not None else nn.Identity()
    m = as_matches(regions, indices, pred_masks.device)
    if len(m) == 0:
        return connected_zero(pred_masks, pixel_feats, head)
    m_s = pred_masks.float().sigmoid()
    if weight is not None:
        m_s = m_s * weight.to(m_s.device).float()[:, None]
    r_s = mask_average_pool(pixel_feats.float(), m_s, eps)  # (B, N, C)
    z_s = Fn.normalize(g(r_s).float(), dim=-1)  # (B, N, D)
    B, N = z_s.shape[:2]
    r_t = cat_regions(regions, "features", z_s.device).float()[m.tgt]  # (L, C)
    z_t = Fn.normalize(g(r_t).float(), dim=-1)  # (L, D)
    if scope == "batch":
        logits = z_t @ z_s.flatten(0, 1).T / tau_f  # (N^t, B·N)
        target = m.pred + m.img * N
    else:
        logits = torch.einsum("ld,lnd->ln", z_t, z_s[m.img]) / tau_f  # (N^t, N)
        target = m.pred
    return Fn.cross_entropy(logits, target)


# ----------------------------------------------------------------------------- RCC
def rcc_loss(
    pred_logits: Tensor,
    regions: list[dict],
    indices: list[tuple[Tensor, Tensor]],
    no_object_weight: float = 0.1,
    soft: bool = False,
) -> Tensor:
    """Region Class Consistency.

    Matched query π(i) → target ĉ_i (weight 1); every other query of the image → "no object"
    (index K, weight ``no_object_weight``). Weighted mean, as in the supervised loss:
    L_RCC = [Σ_i CE(c^s_π(i), ĉ_i) + w_∅ Σ_{j unmatched} CE(c^s_j, ∅)] / [N^t + w_∅ (N − N^t)]
    summed over the images that have regions (an image with M = 0 contributes nothing: a
    teacher with no confident query is not a confident "nothing here").
    ``soft``: matched targets are the teacher's class distribution ``probs`` (M, K+1) and CE
    becomes KL(p^t ‖ softmax(c^s)) (regions without ``probs`` fall back to one-hot ĉ).
    pred_logits: (B, N, K+1). Returns a scalar."""
    m = as_matches(regions, indices, pred_logits.device)
    if len(m) == 0:
        return connected_zero(pred_logits)
    logp = pred_logits.float().log_softmax(-1)  # (B, N, K+1)
    B, N, K1 = logp.shape
    has = torch.zeros(B, dtype=torch.bool, device=logp.device).index_fill(0, m.img, True)
    w = (has[:, None].float() * no_object_weight).expand(B, N)
    w = w.index_put((m.img, m.pred), torch.ones_like(m.pred, dtype=w.dtype))
    if soft and any(r.get("probs") is not None for r in regions):
        target = torch.cat(
            [
                r["probs"].detach().float() if r.get("probs") is not None else Fn.one_hot(r["labels"], K1).float()
                for r in regions
            ]
        ).to(logp.device)[m.tgt]
    else:
        target = Fn.one_hot(cat_regions(regions, "labels", logp.device)[m.tgt], K1).float()
    q = torch.zeros_like(logp)
    q[..., -1] = 1.0  # "no object" for every query ...
    q = q.index_put((m.img, m.pred), target)  # ... except the matched ones
    # KL(q ‖ p) = Σ q log q − Σ q log p; the first sum is 0 for one-hot q (hard = CE).
    ent = torch.where(q > 0, q * q.clamp_min(1e-12).log(), torch.zeros_like(q)).sum(-1)
    per_query = ent - (q * logp).sum(-1)  # (B, N)
    return (w * per_query).sum() / w.sum()


# ----------------------------------------------------------------------------- SMC
def smc_loss(
    sem_masks: Tensor,
    label: Tensor,
    valid: Tensor,
    dice_only: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Semantic Mask Consistency: student S̄^s against the teacher's Ŷ, confident pixels only.

    sem_masks: (B, K, h, w) student S^s (≥ 0); label: (B, h, w) int64 Ŷ; valid: (B, h, w) bool
    (max S̄^t ≥ τ_pix and not padding). Loss = dice + CE where
    - dice: 1 − (2Σ S̄^s_k·1[Ŷ=k] + 1) / (Σ S̄^s_k + Σ 1[Ŷ=k] + 1) over valid pixels, per
      (image, class present in that image's valid Ŷ), averaged — classes absent from Ŷ are
      already pushed down by the CE term since S̄ sums to one;
    - CE: mean over valid pixels of −log S̄^s_Ŷ.
    ``dice_only`` drops the CE term. Returns a scalar."""
    B, K = sem_masks.shape[:2]
    label = label.detach()
    v = valid.detach().to(sem_masks.device).bool()
    if not bool(v.any()):
        return connected_zero(sem_masks)
    vf = v.float()[:, None]  # (B, 1, h, w)
    lab = label.clamp(0, K - 1)
    onehot = Fn.one_hot(lab, K).permute(0, 3, 1, 2).float() * vf  # (B, K, h, w)
    sbar = normalize_semantic(sem_masks, eps) * vf
    tsum = onehot.sum((-2, -1))  # (B, K)
    loss = (1 - dice(sbar.flatten(2), onehot.flatten(2)))[tsum > 0].mean()
    if not dice_only:
        logp = log_normalized_semantic(sem_masks, eps)  # (B, K, h, w)
        nll = -logp.gather(1, lab[:, None]).squeeze(1)  # (B, h, w)
        loss = loss + nll[v].mean()
    return loss


# ----------------------------------------------------------------------------- all four
class RegionLosses(nn.Module):
    """All four region losses with weights/switches from ``SemiConfig`` (a weight of 0 skips
    the computation). Holds the RFC projection head g as ``rfc_head`` (None when rfc = 0): the
    RC²L method puts it in ``method.heads["rfc"]``, which the trainer optimises, saves and syncs.

    forward(student, targets, indices=None) → {"rmc", "rfc", "rcc", "smc"}: scalar tensors
    already multiplied by λ_rmc, λ_rfc, λ_rcc, λ_smc (a skipped term is a connected 0); the
    caller multiplies their sum by λ_u(t).
    - student: segmenter output dict (see module docstring), on the mixed strong view;
    - targets: ``rc2l.engine.teacher.teacher_targets``/``cutmix_targets`` dict with
      ``regions`` (list per image), ``label`` (B, h, w) Ŷ, ``valid`` (B, h, w) bool and
      optionally ``real`` (B, h, w) bool, the pixels of an image (not crop padding): the
      matching cost, RMC's dice and RFC's pooling are taken over ``valid`` with
      semi.region_pixels=confident, else over ``real`` (all pixels when absent);
    - indices: per-image (pred_idx, tgt_idx); None → Hungarian matching here with the
      supervised cost weights (``LossConfig``).
    """

    def __init__(self, semi: SemiConfig, feat_dim: int, loss_cfg: LossConfig | None = None):
        super().__init__()
        self.semi = semi
        lc = loss_cfg or LossConfig()
        self.match_weights = (lc.cls_weight, lc.mask_weight, lc.dice_weight)
        self.no_object_weight = lc.no_object_weight
        self.rfc_head = RFCHead(feat_dim, semi.rfc_proj_dim) if semi.rfc > 0 else None

    @torch.no_grad()
    def match(self, student: dict, regions: list[dict], weight: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Hungarian matching of the N student queries to each image's teacher regions."""
        return match(student["pred_logits"], student["pred_masks"], regions, *self.match_weights, weight=weight)

    def forward(self, student: dict, targets: dict, indices: list | None = None, return_stats: bool = False):
        s = self.semi
        regions = targets["regions"]
        # Pixels that count on both sides: confident ones, or every pixel of an image (never crop padding).
        w = targets["valid"] if s.region_pixels == "confident" else targets.get("real")
        need_match = s.rmc > 0 or s.rfc > 0 or s.rcc > 0
        if indices is None and need_match:
            indices = self.match(student, regions, w)
        if indices is not None:
            indices = as_matches(regions, indices, student["pred_logits"].device)
        terms = {}
        if s.rmc > 0:
            terms["rmc"] = s.rmc * rmc_loss(student["pred_masks"], regions, indices, s.tau_m, weight=w)
        if s.rfc > 0:
            terms["rfc"] = s.rfc * rfc_loss(
                student["pred_masks"],
                student["pixel_feats"],
                regions,
                indices,
                self.rfc_head,
                s.tau_f,
                s.rfc_scope,
                weight=w,
            )
        if s.rcc > 0:
            terms["rcc"] = s.rcc * rcc_loss(student["pred_logits"], regions, indices, self.no_object_weight, s.rcc_soft)
        if s.smc > 0:
            terms["smc"] = s.smc * smc_loss(student["sem_masks"], targets["label"], targets["valid"], s.smc_dice_only)
        for k in TERMS:  # skipped terms: a 0 still connected to the student
            if k not in terms:
                terms[k] = connected_zero(student["pred_logits"])
        if not return_stats:
            return terms
        stats = {
            "num_regions": sum(len(r["labels"]) for r in regions),
            "num_matched": len(indices) if indices is not None else 0,
            "valid_frac": float(targets["valid"].float().mean()),
        }
        return terms, stats
