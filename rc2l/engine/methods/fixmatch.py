"""FixMatch (Sohn et al., 2020) on the segmenter's per-pixel output: the EMA teacher's
confident pixels (probability ≥ semi.fixmatch_threshold) on the weak view are the targets of
the student's CutMix-ed strong view. It is UniMatch's special case of one strong view, no
feature perturbation and an EMA teacher."""

from __future__ import annotations

import torch
from torch import nn

from rc2l.config import Config, UniMatchConfig
from rc2l.engine.methods.unimatch import UniMatch


class FixMatch(UniMatch):
    description = "FixMatch-style pixel pseudo-labels from an EMA teacher"
    loss_terms = ("fixmatch",)

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device, *args, **kw):
        settings = UniMatchConfig(teacher="ema", views=1, fp=False, threshold=cfg.semi.fixmatch_threshold)
        super().__init__(cfg, model, device, *args, settings=settings, **kw)

    @classmethod
    def unlabeled_views(cls, cfg: Config) -> int:
        return 1

    def term(self, view: int) -> str:
        return "fixmatch"
