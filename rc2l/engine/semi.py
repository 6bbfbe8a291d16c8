"""The semi-supervised steps (METHOD.md, "Semi-supervised loop"): weak view → EMA teacher →
pseudo-label and pseudo-regions → CutMix box applied to the student's strong view and to
the teacher's targets → student → RMC/RFC/RCC/SMC (rc2l) or pixel CE (fixmatch), plus the
optional pixel-contrast term, added to the supervised loss with the ramp λ_u(t)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as Fn
from torch import Tensor

from rc2l.data.sampler import _seed
from rc2l.data.transforms import cutmix_boxes
from rc2l.engine.steps import STEPS, StepContext, supervised_loss
from rc2l.engine.teacher import apply_cutmix, cutmix_targets, make_teacher, mix_with_partner, teacher_targets
from rc2l.losses.pixel import pixel_contrast_loss, pixel_pseudo_ce
from rc2l.losses.region import RegionLosses

log = logging.getLogger("rc2l")


def setup_semi(trainer) -> None:
    """Adds the EMA teacher, the region losses and their trainable RFC head to a Trainer."""
    cfg = trainer.cfg
    trainer.teacher = make_teacher(trainer.model).to(trainer.device)
    rl = RegionLosses(cfg.semi, feat_dim=cfg.model.mask_dim, loss_cfg=cfg.loss)
    if rl.rfc_head is not None:
        rl.rfc_head.to(trainer.device)
        trainer.heads["rfc"] = rl.rfc_head
    trainer.extras = {"region_losses": rl}


def semi_step(step: int, cfg) -> int:
    """Steps since the unlabeled branch started (negative during the supervised warm-up); the
    λ_u ramp and the EMA momentum warm-up both count from here."""
    return step - cfg.semi.start_iter


def lambda_u(step: int, cfg) -> float:
    """λ_u(t): 0 before semi.start_iter, then a linear ramp to semi.lambda_u over
    semi.rampup_iters steps."""
    t = semi_step(step, cfg)
    if t < 0:
        return 0.0
    r = cfg.semi.rampup_iters
    return cfg.semi.lambda_u * (min(1.0, (t + 1) / r) if r > 0 else 1.0)


def stride_boxes(batch: int, size_img: tuple[int, int], size_feat: tuple[int, int], p: float, seed: int, step: int,
                 device) -> tuple[Tensor, Tensor]:
    """CutMix boxes drawn on the stride-4 grid (B, h, w) and blown up to image pixels (B, H, W),
    so the student's input and the teacher's targets are cut at exactly the same place.
    Seeded by (seed, step): a resumed run draws the same boxes."""
    g = torch.Generator().manual_seed(_seed(seed, step, 11))
    small = cutmix_boxes(batch, size_feat[0], size_feat[1], p, g)
    sy = -(-size_img[0] // size_feat[0])
    sx = -(-size_img[1] // size_feat[1])
    big = small.repeat_interleave(sy, 1).repeat_interleave(sx, 2)[:, : size_img[0], : size_img[1]]
    return small.to(device), big.to(device)


def _feat_size(size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of F (stride 4) for an input size, as the backbones round (ceil)."""
    return -(-size[0] // 4), -(-size[1] // 4)


def unlabeled_targets(ctx: StepContext, batch_u: dict, step: int) -> tuple[dict, Tensor, dict]:
    """Teacher targets on the weak view, mixed with the CutMix box, and the mixed strong view."""
    c = ctx.cfg
    weak = batch_u["image_w"].to(ctx.device, non_blocking=True)
    strong = batch_u["image_s"].to(ctx.device, non_blocking=True)
    pad = ~batch_u["valid"].to(ctx.device)
    with torch.no_grad():
        t_out = ctx.teacher(weak)
    h, w = t_out["pred_masks"].shape[-2:]
    ignore = Fn.interpolate(pad[:, None].float(), size=(h, w), mode="nearest")[:, 0].bool()
    targets = teacher_targets(t_out, c.semi.regions, c.semi.tau_cls, c.semi.tau_pix, c.semi.soft_masks, ignore,
                              confident=c.semi.region_pixels == "confident")
    regions_kept = sum(len(r["labels"]) for r in targets["regions"]) / max(len(targets["regions"]), 1)
    small, big = stride_boxes(weak.shape[0], tuple(weak.shape[-2:]), (h, w), c.semi.cutmix_p, c.seed, step, ctx.device)
    targets = cutmix_targets(targets, small)
    targets["real"] = mix_with_partner(~ignore, small)  # (B, h, w) pixels of an image, not crop padding
    mixed = apply_cutmix(strong, big)
    real = targets["real"]
    thr = c.semi.fixmatch_threshold if c.method == "fixmatch" else c.semi.tau_pix
    stats = {
        "regions_per_image": regions_kept,
        "conf_frac": float(((targets["conf"] >= thr) & real).sum() / real.sum().clamp(min=1)),
    }
    return targets, mixed, stats


def _semi_step(ctx: StepContext, batch_l: dict, batch_u: dict, step: int, unsup_fn) -> dict[str, Tensor]:
    c = ctx.cfg
    terms = supervised_loss(ctx, batch_l)
    lam = lambda_u(step, c)
    if semi_step(step, c) < 0:  # supervised warm-up: the unlabeled branch would be multiplied by 0
        return {**terms, "loss_sup": terms["loss"], "lambda_u": torch.tensor(lam)}
    targets, mixed, stats = unlabeled_targets(ctx, batch_u, step)
    s_out = ctx.model(mixed)
    unsup = unsup_fn(ctx, s_out, targets, stats)
    if c.semi.pixel_contrast > 0:
        g = torch.Generator().manual_seed(_seed(c.seed, step, 13))
        unsup["pixel_contrast"] = c.semi.pixel_contrast * pixel_contrast_loss(
            s_out["pixel_feats"], targets["label"], targets["valid"], c.semi.pixel_contrast_tau,
            c.semi.pixel_contrast_mode, c.semi.pixel_contrast_samples, chunk=4096, generator=g,
        )
    loss_u = sum(unsup.values())
    out = {**terms, **unsup, "loss_sup": terms["loss"], "loss_unsup": loss_u, "lambda_u": torch.tensor(lam)}
    out["loss"] = terms["loss"] + lam * loss_u
    out.update({k: torch.tensor(float(v)) for k, v in stats.items()})
    return out


def _rc2l_unsup(ctx: StepContext, s_out: dict, targets: dict, stats: dict) -> dict[str, Tensor]:
    terms, st = ctx.extras["region_losses"](s_out, targets, return_stats=True)
    stats["regions_matched"] = st["num_matched"]
    stats["empty_teacher"] = float(st["num_regions"] == 0)
    if st["num_regions"] == 0:
        log.debug("teacher kept no region in this batch: region losses contribute 0")
    return terms


def _fixmatch_unsup(ctx: StepContext, s_out: dict, targets: dict, stats: dict) -> dict[str, Tensor]:
    c = ctx.cfg
    ce = pixel_pseudo_ce(s_out["sem_masks"], targets["label"], targets["conf"], c.semi.fixmatch_threshold,
                         ignore=~targets["real"])
    return {"fixmatch": ce}


def rc2l_step(ctx: StepContext, batch_l: dict, batch_u: dict, step: int) -> dict[str, Tensor]:
    return _semi_step(ctx, batch_l, batch_u, step, _rc2l_unsup)


def fixmatch_step(ctx: StepContext, batch_l: dict, batch_u: dict, step: int) -> dict[str, Tensor]:
    return _semi_step(ctx, batch_l, batch_u, step, _fixmatch_unsup)


STEPS["rc2l"] = rc2l_step
STEPS["fixmatch"] = fixmatch_step
