"""UniMatch (Yang et al., CVPR 2023; docs/method.md), the pixel-level method this field
runs, on either architecture (mask classification: CE on log S̄; per-pixel: CE on logits).

One unlabeled batch, top to bottom (``UniMatch.step``):
    weak view u_w → pseudo-label Ŷ, confidence (the student itself in train mode, V1, or the
        EMA teacher, V2), and in the same forward the FP branch: the features the decoder
        reads get channel dropout and are decoded beside the clean ones
    each strong view u_s1, u_s2 (own photometric draw) → its own CutMix box, applied to the
        view and to Ŷ / confidence / padding
    student(u_s1, u_s2) → per-pixel CE where confidence ≥ τ, divided by the non-padded pixels
    L = scale·(L_sup + λ_u·(0.25·L_s1 + 0.25·L_s2 + 0.5·L_fp)), scale = semi.unimatch.loss_scale
        (1; UniMatch's own code uses 0.5: (L_x + 0.25·L_s1 + 0.25·L_s2 + 0.5·L_fp) / 2)
With one view and no FP the weights become 1·L_s1: FixMatch with UniMatch's loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rc2l.config import Config, UniMatchConfig
from rc2l.engine.methods.base import Method, combine, view_weights, warmup_terms
from rc2l.engine.methods.ema import EmaTeacher
from rc2l.engine.methods.schedule import lambda_u, semi_step
from rc2l.engine.teacher import BOX_STREAMS, cutmix_view, mix_with_partner, real_pixels
from rc2l.losses.functional import pixel_probs
from rc2l.losses.pixel import pixel_pseudo_ce


def pixel_ce(out: dict, label: Tensor, conf: Tensor, threshold: float, real: Tensor) -> Tensor:
    """UniMatch's unlabeled loss on one output dict of either architecture: CE to ``label``
    (B, h, w) where ``conf`` ≥ τ and ``real`` (B, h, w, not padding), summed and divided by the
    number of real pixels."""
    if "sem_logits" in out:
        return pixel_pseudo_ce(out["sem_logits"], label, conf, threshold, ignore=~real, input="logits")
    return pixel_pseudo_ce(out["sem_masks"], label, conf, threshold, ignore=~real, input="sem")


class UniMatch(Method):
    """``settings``: the semi.unimatch section (FixMatch passes its own)."""

    uses_unlabeled = True
    description = "UniMatch pixel pseudo-labels on two strong views and a feature-perturbed weak view"
    loss_terms = ("unimatch_s1", "unimatch_s2", "unimatch_fp")

    def __init__(
        self, cfg: Config, model: nn.Module, device: torch.device, *args, settings: UniMatchConfig | None = None, **kw
    ):
        super().__init__(cfg, model, device, *args, **kw)
        self.settings = settings or cfg.semi.unimatch
        if self.settings.teacher == "ema":
            self.ema = EmaTeacher(model, cfg.semi, device)

    @classmethod
    def unlabeled_views(cls, cfg: Config) -> int:
        return cfg.semi.unimatch.views

    def term(self, view: int) -> str:
        """Log key of strong view ``view``'s loss (0-based)."""
        return f"unimatch_s{view + 1}"

    def scaled(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """terms["loss"] × semi.unimatch.loss_scale (the logged terms stay unscaled)."""
        if self.settings.loss_scale != 1.0:  # the default leaves the graph exactly as it was
            terms["loss"] = self.settings.loss_scale * terms["loss"]
        return terms

    def weak_pass(self, weak: Tensor) -> tuple[Tensor, Tensor, dict | None]:
        """weak (B, 3, H, W) → Ŷ (B, h, w), confidence (B, h, w), both detached, and the FP
        branch's output (None without FP). With the self teacher Ŷ comes from the clean half
        of the same forward that decodes the perturbed features."""
        u = self.settings
        fp_out = None
        if u.fp:
            out = self.net(weak, fp_dropout=u.fp_dropout)
            fp_out = out["fp"]
        if self.ema is not None:
            out = self.ema(weak)
        elif not u.fp:
            with torch.no_grad():
                out = self.net(weak)
        conf, label = pixel_probs(out).max(1)
        return label, conf, fp_out

    def step(self, labeled: dict, unlabeled: dict | None, step: int) -> dict[str, Tensor]:
        c, u = self.cfg, self.settings
        sup = self.supervised_loss(labeled)
        lam = lambda_u(step, c.semi)
        if semi_step(step, c.semi) < 0:  # supervised warm-up: the unlabeled branch would weigh 0
            return self.scaled(warmup_terms(sup, lam))
        weak = unlabeled["image_w"].to(self.device, non_blocking=True)
        strong = [unlabeled[k].to(self.device, non_blocking=True) for k in ("image_s", "image_s2")[: u.views]]
        label, conf, fp_out = self.weak_pass(weak)
        grid = tuple(label.shape[-2:])
        real = real_pixels(unlabeled["valid"].to(self.device), grid)
        mixed, targets = [], []
        for view, stream in zip(strong, BOX_STREAMS):
            mixed_view, box = cutmix_view(view, grid, c.semi.cutmix_p, c.seed, step, stream)
            mixed.append(mixed_view)
            targets.append([mix_with_partner(t, box) for t in (label, conf, real)])
        s_out = self.net(torch.cat(mixed))
        w_s, w_fp = view_weights(u.views, u.fp)
        unsup = {}
        b = weak.shape[0]
        for i, (lab, cf, rl) in enumerate(targets):
            part = {k: v[i * b : (i + 1) * b] for k, v in s_out.items() if k in ("sem_logits", "sem_masks")}
            unsup[self.term(i)] = w_s * pixel_ce(part, lab, cf, u.threshold, rl)
        if fp_out is not None:
            unsup["unimatch_fp"] = w_fp * pixel_ce(fp_out, label, conf, u.threshold, real)
        stats = {"conf_frac": float(((conf >= u.threshold) & real).sum() / real.sum().clamp(min=1))}
        return self.scaled(combine(sup, unsup, lam, stats))
