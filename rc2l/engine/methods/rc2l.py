"""RC²L (docs/method.md): the student's region proposals on the CutMix-ed strong view are
matched to the EMA teacher's pseudo-regions on the weak view and trained with the four
region losses RMC, RFC, RCC and SMC.

One unlabeled batch, top to bottom (``RC2L.step``):
    weak view u_w → teacher (no grad) → pseudo-regions, Ŷ, F^t  (engine/teacher.py)
    CutMix box → applied to the targets and to the strong view u_s
    student(mixed u_s) → Hungarian matching to the teacher regions → RMC, RFC, RCC, SMC
                                                                   (losses/region.py)
    L = L_sup + λ_u(t)·(λ_rmc L_RMC + λ_rfc L_RFC + λ_rcc L_RCC + λ_smc L_SMC)
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from rc2l.config import Config
from rc2l.engine.methods.base import SemiMethod, combine, warmup_terms
from rc2l.losses.region import RegionLosses

log = logging.getLogger("rc2l")


class RC2L(SemiMethod):
    uses_unlabeled = True

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device, num_classes: int, ignore_index: int = 255):
        super().__init__(cfg, model, device, num_classes, ignore_index)
        self.region_losses = RegionLosses(cfg.semi, feat_dim=cfg.model.mask_dim, loss_cfg=cfg.loss)
        if self.region_losses.rfc_head is not None:
            self.heads["rfc"] = self.region_losses.rfc_head.to(device)

    def step(self, labeled: dict, unlabeled: dict | None, step: int, num_masks: float | None = None) -> dict[str, Tensor]:
        sup = self.supervised_loss(labeled, num_masks)
        lam = self.lambda_u(step)
        if self.semi_step(step) < 0:
            return warmup_terms(sup, lam)
        targets, mixed, stats = self.mixed_targets(unlabeled, step, self.cfg.semi.tau_pix)
        s_out = self.net(mixed)
        unsup, st = self.region_losses(s_out, targets, return_stats=True)
        stats["regions_matched"] = st["num_matched"]
        stats["empty_teacher"] = float(st["num_regions"] == 0)
        if st["num_regions"] == 0:
            log.debug("teacher kept no region in this batch: region losses contribute 0")
        unsup.update(self.pixel_contrast(s_out, targets, step))
        return combine(sup, unsup, lam, stats)
