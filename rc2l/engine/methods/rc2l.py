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
from rc2l.engine.methods.base import SemiMethod, combine, regions_per_image, warmup_terms
from rc2l.engine.methods.unimatch import BOX_STREAMS
from rc2l.losses.region import TERMS, RegionLosses

log = logging.getLogger("rc2l")


class RC2L(SemiMethod):
    uses_unlabeled = True
    description = "RC²L region-level contrast and consistency (RMC, RFC, RCC, SMC) with an EMA teacher"
    loss_terms = (*TERMS, *(f"{t}_fp" for t in TERMS), "pixel_contrast")

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device, num_classes: int, ignore_index: int = 255):
        super().__init__(cfg, model, device, num_classes, ignore_index)
        self.region_losses = RegionLosses(cfg.semi, feat_dim=cfg.model.mask_dim, loss_cfg=cfg.loss)
        if self.region_losses.rfc_head is not None:
            self.heads["rfc"] = self.region_losses.rfc_head.to(device)

    def step(
        self, labeled: dict, unlabeled: dict | None, step: int, num_masks: float | None = None
    ) -> dict[str, Tensor]:
        s = self.cfg.semi
        sup = self.supervised_loss(labeled, num_masks)
        lam = self.lambda_u(step)
        if self.semi_step(step) < 0:
            return warmup_terms(sup, lam)
        if s.region_views > 1 or s.region_fp:
            return self.perturbed_step(sup, unlabeled, step, lam)
        targets, mixed, stats = self.mixed_targets(unlabeled, step, s.tau_pix)
        s_out = self.net(mixed)
        unsup = self.region_terms(s_out, targets, stats)
        unsup.update(self.pixel_contrast(s_out, targets, step))
        return combine(sup, unsup, lam, stats)

    def region_terms(self, s_out: dict, targets: dict, stats: dict) -> dict[str, Tensor]:
        """RMC, RFC, RCC, SMC of one student output against (mixed) teacher targets; adds the
        matching statistics to ``stats``."""
        unsup, st = self.region_losses(s_out, targets, return_stats=True)
        stats["regions_matched"] = stats.get("regions_matched", 0) + st["num_matched"]
        stats["empty_teacher"] = float(st["num_regions"] == 0)
        if st["num_regions"] == 0:
            log.debug("teacher kept no region in this batch: region losses contribute 0")
        return unsup

    def perturbed_step(self, sup: dict, unlabeled: dict, step: int, lam: float) -> dict[str, Tensor]:
        """The region losses fed by UniMatch's perturbations: each strong view with its own CutMix
        box, and (semi.region_fp) the feature-perturbed weak view against the un-mixed teacher
        targets; weights as UniMatch's (views share 1 − w_fp, w_fp = 0.5 with FP)."""
        s = self.cfg.semi
        targets, weak = self.weak_targets(unlabeled)
        w_fp = 0.5 if s.region_fp else 0.0
        w_view = (1.0 - w_fp) / s.region_views
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
