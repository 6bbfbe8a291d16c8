"""FixMatch on the segmenter's per-pixel output: the EMA teacher's confident pixels (max
probability ≥ semi.fixmatch_threshold) are the targets of the student's CutMix-ed strong view."""
from __future__ import annotations

from torch import Tensor

from rc2l.engine.methods.base import SemiMethod, combine, warmup_terms
from rc2l.losses.pixel import pixel_pseudo_ce


class FixMatch(SemiMethod):
    uses_unlabeled = True

    def step(self, labeled: dict, unlabeled: dict | None, step: int, num_masks: float | None = None) -> dict[str, Tensor]:
        s = self.cfg.semi
        sup = self.supervised_loss(labeled, num_masks)
        lam = self.lambda_u(step)
        if self.semi_step(step) < 0:
            return warmup_terms(sup, lam)
        targets, mixed, stats = self.mixed_targets(unlabeled, step, s.fixmatch_threshold)
        s_out = self.net(mixed)
        unsup = {"fixmatch": pixel_pseudo_ce(s_out["sem_masks"], targets["label"], targets["conf"],
                                             s.fixmatch_threshold, ignore=~targets["real"])}
        unsup.update(self.pixel_contrast(s_out, targets, step))
        return combine(sup, unsup, lam, stats)
