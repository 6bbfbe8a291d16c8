"""RC²L (docs/method.md): the student's region proposals on the CutMix-ed strong view are
matched to the EMA teacher's pseudo-regions on the weak view and trained with the four
region losses RMC, RFC, RCC and SMC.

One unlabeled batch, top to bottom (``RC2L.step``):
    weak view u_w → teacher (no grad) → pseudo-regions, Ŷ, F^t  (engine/teacher.py)
    CutMix box → applied to the targets and to the strong view u_s
    student(mixed u_s) → Hungarian matching to the teacher regions → RMC, RFC, RCC, SMC
                                                                   (losses/region.py)
    L = L_sup + λ_u(t)·(λ_rmc L_RMC + λ_rfc L_RFC + λ_rcc L_RCC + λ_smc L_SMC)

With semi.region_views=2 / semi.region_fp the same losses are fed by UniMatch's perturbations
(``perturbed_step``): two strong views with their own boxes, and the feature-perturbed weak view.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from rc2l.config import Config
from rc2l.data.sampler import mix_seed
from rc2l.engine.methods.base import Method, combine, view_weights, warmup_terms
from rc2l.engine.methods.ema import EmaTeacher
from rc2l.engine.methods.schedule import lambda_u, semi_step
from rc2l.engine.teacher import BOX_STREAMS, cutmix_targets, cutmix_view, mix_with_partner, real_pixels, teacher_targets
from rc2l.losses.pixel import pixel_contrast_loss
from rc2l.losses.region import TERMS, RegionLosses

log = logging.getLogger("rc2l")


def regions_per_image(targets: dict) -> float:
    """Teacher regions kept per image (the log's ``regions_per_image``)."""
    return sum(len(r["labels"]) for r in targets["regions"]) / max(len(targets["regions"]), 1)


class RC2L(Method):
    uses_unlabeled = True
    description = "RC²L region-level contrast and consistency (RMC, RFC, RCC, SMC) with an EMA teacher"
    loss_terms = (*TERMS, *(f"{t}_fp" for t in TERMS), "pixel_contrast")

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device, *args, **kw):
        super().__init__(cfg, model, device, *args, **kw)
        self.ema = EmaTeacher(model, cfg.semi, device)
        self.region_losses = RegionLosses(cfg.semi, feat_dim=cfg.model.mask_dim, loss_cfg=cfg.loss)
        if self.region_losses.rfc_head is not None:
            self.heads["rfc"] = self.region_losses.rfc_head.to(device)

    @classmethod
    def unlabeled_views(cls, cfg: Config) -> int:
        return cfg.semi.region_views

    def step(self, labeled: dict, unlabeled: dict | None, step: int) -> dict[str, Tensor]:
        s = self.cfg.semi
        sup = self.supervised_loss(labeled)
        lam = lambda_u(step, s)
        if semi_step(step, s) < 0:  # supervised warm-up: the unlabeled branch would weigh 0
            return warmup_terms(sup, lam)
        if s.region_views > 1 or s.region_fp:
            return self.perturbed_step(sup, unlabeled, step, lam)
        targets, _ = self.weak_targets(unlabeled)
        mixed_t, mixed = self.mix(targets, unlabeled["image_s"].to(self.device, non_blocking=True), step)
        real = mixed_t["real"]
        stats = {
            "regions_per_image": regions_per_image(targets),
            "conf_frac": float(((mixed_t["conf"] >= s.tau_pix) & real).sum() / real.sum().clamp(min=1)),
        }
        s_out = self.net(mixed)
        unsup = self.region_terms(s_out, mixed_t, stats)
        unsup.update(self.pixel_contrast(s_out, mixed_t, step))
        return combine(sup, unsup, lam, stats)

    def weak_targets(self, batch_u: dict) -> tuple[dict, Tensor]:
        """The teacher's targets on the weak view, not mixed, with "real" (B, h, w) = not padding;
        and the weak images (B, 3, H, W)."""
        s = self.cfg.semi
        weak = batch_u["image_w"].to(self.device, non_blocking=True)
        t_out = self.ema(weak)
        ignore = ~real_pixels(batch_u["valid"].to(self.device), t_out["pred_masks"].shape[-2:])
        confident = s.region_pixels == "confident"
        targets = teacher_targets(t_out, s.regions, s.tau_cls, s.tau_pix, s.soft_masks, ignore, confident=confident)
        targets["real"] = ~ignore
        return targets, weak

    def mix(self, targets: dict, strong: Tensor, step: int, stream: int = BOX_STREAMS[0]) -> tuple[dict, Tensor]:
        """One CutMix box applied to the targets, their "real" mask and the strong view →
        (mixed targets, mixed strong view)."""
        mixed_view, box = cutmix_view(
            strong, tuple(targets["label"].shape[-2:]), self.cfg.semi.cutmix_p, self.cfg.seed, step, stream
        )
        mixed = cutmix_targets(targets, box)
        mixed["real"] = mix_with_partner(targets["real"], box)
        return mixed, mixed_view

    def region_terms(self, s_out: dict, targets: dict, stats: dict) -> dict[str, Tensor]:
        """RMC, RFC, RCC, SMC of one student output against (mixed) teacher targets; adds the
        matching statistics to ``stats``."""
        unsup, st = self.region_losses(s_out, targets, return_stats=True)
        stats["regions_matched"] = stats.get("regions_matched", 0) + st["num_matched"]
        stats["empty_teacher"] = float(st["num_regions"] == 0)
        if st["num_regions"] == 0:
            log.debug("teacher kept no region in this batch: region losses contribute 0")
        return unsup

    def pixel_contrast(self, s_out: dict, targets: dict, step: int) -> dict[str, Tensor]:
        """The optional pixel-level InfoNCE term (semi.pixel_contrast > 0), {} when off."""
        s = self.cfg.semi
        if s.pixel_contrast <= 0:
            return {}
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, step, 13))
        loss = pixel_contrast_loss(
            s_out["pixel_feats"],
            targets["label"],
            targets["valid"],
            s.pixel_contrast_tau,
            s.pixel_contrast_mode,
            s.pixel_contrast_samples,
            chunk=4096,
            generator=g,
        )
        return {"pixel_contrast": s.pixel_contrast * loss}

    def perturbed_step(self, sup: dict, unlabeled: dict, step: int, lam: float) -> dict[str, Tensor]:
        """The region losses fed by UniMatch's perturbations: each strong view with its own CutMix
        box, and (semi.region_fp) the feature-perturbed weak view against the un-mixed teacher
        targets; weights as UniMatch's (views share 1 − w_fp, w_fp = 0.5 with FP)."""
        s = self.cfg.semi
        targets, weak = self.weak_targets(unlabeled)
        w_view, w_fp = view_weights(s.region_views, s.region_fp)
        stats = {"regions_per_image": regions_per_image(targets)}
        unsup: dict[str, Tensor] = {}
        for i, key in enumerate(("image_s", "image_s2")[: s.region_views]):
            mixed_t, mixed = self.mix(targets, unlabeled[key].to(self.device, non_blocking=True), step, BOX_STREAMS[i])
            for k, v in self.region_terms(self.net(mixed), mixed_t, stats).items():
                unsup[k] = unsup.get(k, 0.0) + w_view * v
        if s.region_fp:
            fp_out = self.net(weak, fp_dropout=s.region_fp_dropout)["fp"]
            for k, v in self.region_terms(fp_out, targets, stats).items():
                unsup[f"{k}_fp"] = w_fp * v
        return combine(sup, unsup, lam, stats)
