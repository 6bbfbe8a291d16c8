"""EMA teacher, its pseudo-label Ŷ and pseudo-regions, and CutMix of images and targets
(docs/method.md, "Semi-supervised loop").

One unlabeled batch travels as (the method's ``step`` makes these calls in this order)
    teacher(u_w) → teacher_targets(...)              targets on the stride-4 grid
    stride_boxes(...) → (box on the grid, box at image resolution)
    cutmix_targets(targets, grid box);  apply_cutmix(u_s, image box) → student

u_s is the strong photometric view of the same weak crop (the loader makes both), so the
teacher's targets and the student's input are mixed with the same box at the same pixels.

CutMix partner convention (one rule, no parameters): in a batch of B images the partner of
image i is image (i + 1) % B, i.e. ``x.roll(-1, dims=0)``. Where ``box[i]`` is True the mixed
image i takes the partner's pixels; elsewhere it keeps its own.

All teacher-side outputs are detached. Shapes: B images, N queries, K classes, C channels of
F, (h, w) the stride-4 grid of ``pred_masks``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from rc2l.data.sampler import mix_seed
from rc2l.data.transforms import cutmix_boxes
from rc2l.losses.functional import mask_average_pool, normalize_semantic, targets_from_labels
from rc2l.losses.matcher import pad_targets


# ----------------------------------------------------------------------------- EMA teacher
def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def make_teacher(student: nn.Module) -> nn.Module:
    """Deep copy of the (unwrapped) student with requires_grad False, in eval mode (BatchNorm
    uses running statistics, dropout is off). Keep it in eval mode: don't ``.train()`` it."""
    teacher = copy.deepcopy(unwrap(student))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def ema_momentum(step: int, momentum: float = 0.999) -> float:
    """m_t = min(1 − 1/(step + 1), m): 0 at step 0 (teacher = student), then rising to m.
    ``step`` counts from the start of the unlabeled branch (semi.start_iter); before it
    (step < 0) m_t = 0, so the teacher copies the student during the supervised warm-up
    instead of averaging in its first, poor weights."""
    return min(1.0 - 1.0 / (max(step, 0) + 1), momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, momentum: float = 0.999) -> float:
    """θ^t ← m_t θ^t + (1 − m_t) θ^s over parameters AND buffers, m_t = ``ema_momentum``.

    Floating-point buffers (BatchNorm running mean/var) get the same EMA; integer/bool buffers
    (``num_batches_tracked``) are copied. Tensors are matched by name (wrappers are unwrapped).
    Returns m_t."""
    m = ema_momentum(step, momentum)
    t_mod, s_mod = unwrap(teacher), unwrap(student)
    for kind in ("named_parameters", "named_buffers"):
        src = dict(getattr(s_mod, kind)())
        for name, t in getattr(t_mod, kind)():
            if name not in src:
                raise KeyError(f"ema_update: student has no {kind[6:-1]} named '{name}'")
            s = src[name].detach()
            if t.is_floating_point():
                t.mul_(m).add_(s.to(t.dtype), alpha=1.0 - m)
            else:
                t.copy_(s)
    return m


# ----------------------------------------------------------------------------- pseudo-labels
def regions_from_label(label: Tensor, valid: Tensor, feats: Tensor, sem: Tensor) -> list[dict]:
    """``classes`` regions: one binary region per class present in the valid pixels of Ŷ.

    label: (B, h, w) int64; valid: (B, h, w) bool; feats F^t: (B, C, h, w); sem S̄^t: (B, K, h, w).
    → per image {"masks": (M, h, w) float, "labels": (M,), "features": (M, C) = MAP(F^t, m),
    "probs": (M, K+1) = mean of S̄^t over the region, "no object" = 0}."""
    ignore = int(label.max()) + 1 if label.numel() else 0  # a value no valid pixel has
    targets = targets_from_labels(label.masked_fill(~valid, ignore), ignore)  # one unique for the batch
    masks, counts = pad_targets(targets, "masks")  # (B, max M, h, w)
    real = (torch.arange(masks.shape[1])[None] < torch.tensor(counts)[:, None]).to(masks.device)  # not padding
    feat = mask_average_pool(feats, masks)[real].split(counts)  # (M_b, C) per image
    probs = torch.einsum("bmhw,bkhw->bmk", masks, sem.float()) / masks.sum((-2, -1)).clamp_min(1)[..., None]
    probs = Fn.pad(probs, (0, 1))[real].split(counts)  # "no object" = 0
    return [
        {"masks": t["masks"], "labels": t["labels"], "features": f, "probs": p} for t, f, p in zip(targets, feat, probs)
    ]


def query_regions(
    teacher_out: dict, tau_cls: float = 0.7, soft_masks: bool = False, ignore: Tensor | None = None
) -> list[dict]:
    """``queries`` regions: teacher queries whose best non-void class probability ≥ τ_cls and
    whose binary mask σ(p^t) > 0.5 is non-empty.

    teacher_out: the segmenter's dict (pred_logits (B, N, K+1), pred_masks (B, N, h, w),
    pixel_feats (B, C, h, w)); ignore: (B, h, w) bool pixels removed from the masks (padding; with
    ``teacher_targets(confident=True)`` also the unsure ones) or None.
    → per image {"masks": (M, h, w) binary, or σ(p^t) with ``soft_masks``, "labels": (M,) ĉ,
    "features": (M, C) = MAP(F^t, m), "probs": (M, K+1) softmax(c^t)}."""
    probs = teacher_out["pred_logits"].detach().float().softmax(-1)  # (B, N, K+1)
    score, cls = probs[..., :-1].max(-1)
    mprob = teacher_out["pred_masks"].detach().float().sigmoid()  # (B, N, h, w)
    if ignore is not None:
        mprob = mprob * (~ignore)[:, None]
    binary = mprob > 0.5
    keep = (score >= tau_cls) & binary.flatten(2).any(-1)  # (B, N)
    masks_all = mprob if soft_masks else binary.float()
    feats = mask_average_pool(teacher_out["pixel_feats"].detach().float(), masks_all)  # (B, N, C)
    keep = keep.cpu()  # one device→host copy for the batch, not one per image
    counts = keep.sum(1).tolist()
    b_idx, n_idx = torch.stack(keep.nonzero(as_tuple=True)).to(probs.device).unbind(0)

    def split(x: Tensor) -> tuple[Tensor, ...]:  # the kept queries, image by image
        return x[b_idx, n_idx].split(counts)

    return [
        {"masks": m, "labels": c, "features": f, "probs": p}
        for m, c, f, p in zip(split(masks_all), split(cls), split(feats), split(probs))
    ]


def teacher_targets(
    teacher_out: dict,
    mode: str = "queries",
    tau_cls: float = 0.7,
    tau_pix: float = 0.0,
    soft_masks: bool = False,
    ignore: Tensor | None = None,
    confident: bool = False,
) -> dict:
    """Everything the student is trained against, from the teacher's output on the weak view:
    {"label": Ŷ (B, h, w) int64, "conf": (B, h, w), "valid": (B, h, w) bool (conf ≥ τ_pix and
    not ignored), "sem": S̄^t (B, K, h, w), "feats": F^t (B, C, h, w), "regions": list per image
    {"masks" (M, h, w) float, "labels" (M,) int64, "features" r^t = MAP(F^t, m^t) (M, C), "probs"
    (M, K+1)}: ``query_regions`` for ``queries`` (τ_cls, soft_masks), ``regions_from_label`` on Ŷ
    without the pixels of max S̄^t < τ_pix or ignored for ``classes``, "mode": mode}. All
    detached. ``confident``: ``queries`` regions are cut to the valid pixels (``classes`` regions
    always are)."""
    if mode not in ("queries", "classes"):
        raise ValueError(f"pseudo-region mode must be 'queries' or 'classes', got {mode!r}")
    sem = normalize_semantic(teacher_out["sem_masks"].detach())
    conf, label = sem.max(1)
    valid = conf >= tau_pix
    if ignore is not None:
        valid = valid & ~ignore
    feats = teacher_out["pixel_feats"].detach().float()
    if mode == "queries":
        regions = query_regions(teacher_out, tau_cls, soft_masks, ~valid if confident else ignore)
    else:
        regions = regions_from_label(label, valid, feats, sem)
    return {"label": label, "conf": conf, "valid": valid, "sem": sem, "feats": feats, "regions": regions, "mode": mode}


# ----------------------------------------------------------------------------- CutMix
def partner_index(batch: int, device: torch.device | str | None = None) -> Tensor:
    """Partner of image i is (i + 1) % B: (B,) int64, equal to ``arange(B).roll(-1)``."""
    return (torch.arange(batch, device=device) + 1) % batch


def mix_with_partner(x: Tensor, box: Tensor) -> Tensor:
    """x: (B, h, w) or (B, C, h, w); box: (B, h, w) bool → same shape as x, taking
    x[(i+1) % B] where box[i] is True and x[i] elsewhere."""
    if box.shape[0] != x.shape[0] or box.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"box {tuple(box.shape)} does not fit tensor {tuple(x.shape)}")
    b = box.to(x.device).bool().view(box.shape[0], *([1] * (x.dim() - 3)), *box.shape[-2:])
    return torch.where(b, x[partner_index(x.shape[0], x.device)], x)


def apply_cutmix(images: Tensor, box: Tensor) -> Tensor:
    """Student input: images (B, 3, H, W), box (B, H, W) bool at image resolution → mixed images."""
    return mix_with_partner(images, box)


def real_pixels(valid: Tensor, size: tuple[int, int]) -> Tensor:
    """valid (B, H, W) bool at image resolution (False on crop padding) → (B, h, w) bool on the
    target grid: the pixels of an image, not padding (nearest sampling)."""
    pad = (~valid.bool())[:, None].float()
    return ~Fn.interpolate(pad, size=tuple(size), mode="nearest")[:, 0].bool()


def stride_boxes(
    batch: int,
    size_img: tuple[int, int],
    size_feat: tuple[int, int],
    p: float,
    seed: int,
    step: int,
    device,
    stream: int = 11,
) -> tuple[Tensor, Tensor]:
    """CutMix boxes drawn on the stride-4 grid (B, h, w) and blown up to image pixels (B, H, W),
    so the student's input and the teacher's targets are cut at exactly the same place.
    Seeded by (seed, step, stream): a resumed run draws the same boxes; another ``stream``
    draws boxes independent of the first (UniMatch's second strong view)."""
    g = torch.Generator().manual_seed(mix_seed(seed, step, stream))
    small = cutmix_boxes(batch, size_feat[0], size_feat[1], p, g)
    sy = -(-size_img[0] // size_feat[0])
    sx = -(-size_img[1] // size_feat[1])
    big = small.repeat_interleave(sy, 1).repeat_interleave(sx, 2)[:, : size_img[0], : size_img[1]]
    return small.to(device), big.to(device)


BOX_STREAMS = (11, 17)  # one independent CutMix stream per strong view


def cutmix_view(
    strong: Tensor, grid: tuple[int, int], p: float, seed: int, step: int, stream: int = BOX_STREAMS[0]
) -> tuple[Tensor, Tensor]:
    """One strong view (B, 3, H, W) mixed with the CutMix box of (seed, step, stream), and that
    box on the targets' grid (B, h, w), to mix the teacher's targets at the same pixels."""
    small, big = stride_boxes(strong.shape[0], tuple(strong.shape[-2:]), grid, p, seed, step, strong.device, stream)
    return apply_cutmix(strong, big), small


def cutmix_targets(targets: dict, box: Tensor) -> dict:
    """Mix the teacher's targets with the CutMix box used for the student's input.

    targets: ``teacher_targets`` dict; box: (B, h, w) bool on the target grid (the first of
    ``stride_boxes``' two). Ŷ, conf, valid, S̄^t and F^t are mixed like the images. Regions:
    - ``classes``: rebuilt from the mixed Ŷ / valid;
    - ``queries``: each teacher mask of image i is cut to the part of image i that survives
      (outside box[i]) and the partner's masks are cut to box[i]; masks left empty
      (no pixel > 0.5) are dropped. Labels and probs follow their masks.
    Region features are recomputed as MAP(mixed F^t, mask). Returns a new dict, same keys."""
    out = dict(targets)
    box = box.to(targets["label"].device).bool()
    for k in ("label", "conf", "valid", "sem", "feats"):
        out[k] = mix_with_partner(targets[k], box)
    if targets["mode"] == "classes":
        out["regions"] = regions_from_label(out["label"], out["valid"], out["feats"], out["sem"])
        return out
    B = box.shape[0]
    partner = partner_index(B).tolist()
    regions = []
    for i, j in enumerate(partner):
        own, par = targets["regions"][i], targets["regions"][j]
        if j == i:  # B = 1: mixing an image with itself changes nothing
            regions.append(own)
            continue
        masks = torch.cat([own["masks"] * (~box[i]), par["masks"] * box[i]])
        keep = (masks > 0.5).flatten(1).any(1)
        masks = masks[keep]
        regions.append(
            {
                "masks": masks,
                "labels": torch.cat([own["labels"], par["labels"]])[keep],
                "features": mask_average_pool(out["feats"][i], masks),
                "probs": torch.cat([own["probs"], par["probs"]])[keep],
            }
        )
    out["regions"] = regions
    return out
