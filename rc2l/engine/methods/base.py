"""What every method offers the trainer, and the EMA-teacher machinery the semi-supervised
methods share.

The trainer calls, per optimizer step and micro-batch, ``method.step(labeled, unlabeled,
step, num_masks)`` → loss terms (the total to back-propagate under "loss"), then once per
optimizer step ``method.after_step(step)``. It saves ``method.teacher`` and ``method.heads``
with the student, optimises ``method.heads`` with it, and evaluates
``method.models_to_evaluate()``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rc2l.config import Config, SemiConfig
from rc2l.data.sampler import mix_seed
from rc2l.engine.teacher import (
    apply_cutmix,
    cutmix_targets,
    ema_update,
    make_teacher,
    mix_with_partner,
    real_pixels,
    stride_boxes,
    teacher_targets,
)
from rc2l.losses.criterion import SetCriterion
from rc2l.losses.pixel import PixelCriterion, pixel_contrast_loss


def semi_step(step: int, semi: SemiConfig) -> int:
    """Steps since the unlabeled branch started (negative during the supervised warm-up); the
    λ_u ramp and the EMA momentum warm-up both count from here."""
    return step - semi.start_iter


def lambda_u(step: int, semi: SemiConfig) -> float:
    """λ_u(t): 0 before semi.start_iter, then a linear ramp to semi.lambda_u over
    semi.rampup_iters steps."""
    t = semi_step(step, semi)
    if t < 0:
        return 0.0
    r = semi.rampup_iters
    return semi.lambda_u * (min(1.0, (t + 1) / r) if r > 0 else 1.0)


def regions_per_image(targets: dict) -> float:
    """Teacher regions kept per image (the log's ``regions_per_image``)."""
    return sum(len(r["labels"]) for r in targets["regions"]) / max(len(targets["regions"]), 1)


def build_criterion(cfg: Config, num_classes: int, ignore_index: int) -> nn.Module:
    """The supervised loss of the model's kind: the set loss for mask classification, per-pixel
    CE (or OHEM CE, loss.pixel_sup=ohem) for a per-pixel model."""
    if cfg.model.arch == "deeplabv3plus":
        ohem = (cfg.loss.ohem_thresh, cfg.loss.ohem_min_kept) if cfg.loss.pixel_sup == "ohem" else None
        return PixelCriterion(ignore_index, ohem)
    return SetCriterion(num_classes, cfg.loss, ignore_index)


class Method:
    """Supervised training, and the interface every method keeps.

    ``model``: the bare student (EMA, checkpoints, evaluation); ``net``: what the step calls
    forward on — the DDP wrapper under torchrun, set by the trainer once it wraps the model
    (the bare model until then).

    ``description`` (the model card's line) and ``loss_terms`` (the logged terms besides the
    "loss*" ones, which the report plots) are declared by each registered method."""

    description = ""
    loss_terms: tuple[str, ...] = ()

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device, num_classes: int, ignore_index: int = 255):
        self.cfg, self.model, self.net, self.device = cfg, model, model, device
        self.criterion = build_criterion(cfg, num_classes, ignore_index).to(device)
        self.teacher: nn.Module | None = None
        self.heads = nn.ModuleDict()  # trainable modules besides the student (RFC's g)

    def supervised_loss(self, batch: dict, num_masks: float | None = None) -> dict[str, Tensor]:
        """batch: {"image" (B, 3, H, W), "mask" (B, H, W)} → the criterion's terms and "loss".
        ``num_masks``: the set loss's normaliser over all micro-batches and ranks (None = this
        batch's own target count)."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["mask"].to(self.device, non_blocking=True)
        return self.criterion(self.net(images), labels, num_masks)

    def step(
        self, labeled: dict, unlabeled: dict | None, step: int, num_masks: float | None = None
    ) -> dict[str, Tensor]:
        return self.supervised_loss(labeled, num_masks)

    def after_step(self, step: int) -> None:
        """Called after each optimizer step ``step`` (0-based)."""

    def models_to_evaluate(self) -> dict[str, nn.Module]:
        return {"student": self.model}


class SemiMethod(Method):
    """A student taught on unlabeled images by an EMA teacher (docs/method.md, "Semi-supervised
    loop"): λ_u(t) ramp, EMA update after each step, CutMix-mixed teacher targets."""

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device, num_classes: int, ignore_index: int = 255):
        super().__init__(cfg, model, device, num_classes, ignore_index)
        self.teacher = make_teacher(model).to(device)

    def semi_step(self, step: int) -> int:
        return semi_step(step, self.cfg.semi)

    def lambda_u(self, step: int) -> float:
        return lambda_u(step, self.cfg.semi)

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.model, self.semi_step(step), self.cfg.semi.ema_momentum)

    def models_to_evaluate(self) -> dict[str, nn.Module]:
        return {"student": self.model, "teacher": self.teacher}

    def mixed_targets(self, batch_u: dict, step: int, threshold: float) -> tuple[dict, Tensor, dict]:
        """Teacher targets on the weak view (``teacher_targets``), mixed with the CutMix box, and
        the strong view mixed with the same box (B, 3, H, W). ``threshold``: the confidence the
        logged ``conf_frac`` counts. targets["real"]: (B, h, w) pixels of an image, not padding."""
        targets, weak = self.weak_targets(batch_u)
        strong = batch_u["image_s"].to(self.device, non_blocking=True)
        mixed_t, mixed = self.mix(targets, strong, step)
        real = mixed_t["real"]
        stats = {
            "regions_per_image": regions_per_image(targets),
            "conf_frac": float(((mixed_t["conf"] >= threshold) & real).sum() / real.sum().clamp(min=1)),
        }
        return mixed_t, mixed, stats

    def weak_targets(self, batch_u: dict) -> tuple[dict, Tensor]:
        """The teacher's targets on the weak view, not mixed, with "real" (B, h, w) = not padding;
        and the weak images (B, 3, H, W)."""
        c = self.cfg
        weak = batch_u["image_w"].to(self.device, non_blocking=True)
        with torch.no_grad():
            t_out = self.teacher(weak)
        ignore = ~real_pixels(batch_u["valid"].to(self.device), t_out["pred_masks"].shape[-2:])
        targets = teacher_targets(
            t_out,
            c.semi.regions,
            c.semi.tau_cls,
            c.semi.tau_pix,
            c.semi.soft_masks,
            ignore,
            confident=c.semi.region_pixels == "confident",
        )
        targets["real"] = ~ignore
        return targets, weak

    def mix(self, targets: dict, strong: Tensor, step: int, stream: int = 11) -> tuple[dict, Tensor]:
        """One CutMix box (stream ``stream`` of (seed, step)) applied to the targets, their
        "real" mask and the strong view → (mixed targets, mixed strong view)."""
        h, w = targets["label"].shape[-2:]
        small, big = stride_boxes(
            strong.shape[0],
            tuple(strong.shape[-2:]),
            (h, w),
            self.cfg.semi.cutmix_p,
            self.cfg.seed,
            step,
            self.device,
            stream,
        )
        mixed = cutmix_targets(targets, small)
        mixed["real"] = mix_with_partner(targets["real"], small)
        return mixed, apply_cutmix(strong, big)

    def pixel_contrast(self, s_out: dict, targets: dict, step: int) -> dict[str, Tensor]:
        """The optional pixel-level InfoNCE term (semi.pixel_contrast > 0), {} when off."""
        s = self.cfg.semi
        if s.pixel_contrast <= 0:
            return {}
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, step, 13))
        return {
            "pixel_contrast": s.pixel_contrast
            * pixel_contrast_loss(
                s_out["pixel_feats"],
                targets["label"],
                targets["valid"],
                s.pixel_contrast_tau,
                s.pixel_contrast_mode,
                s.pixel_contrast_samples,
                chunk=4096,
                generator=g,
            )
        }


def combine(
    sup: dict[str, Tensor], unsup: dict[str, Tensor], lam: float, stats: dict | None = None
) -> dict[str, Tensor]:
    """L = L_sup + λ_u·Σ unsup, with every term, both parts and the logged stats."""
    loss_u = sum(unsup.values()) if unsup else torch.zeros((), device=sup["loss"].device)
    out = {**sup, **unsup, "loss_sup": sup["loss"], "loss_unsup": loss_u, "lambda_u": torch.tensor(lam)}
    out["loss"] = sup["loss"] + lam * loss_u
    out.update({k: torch.tensor(float(v)) for k, v in (stats or {}).items()})
    return out


def warmup_terms(sup: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
    """The supervised warm-up's terms: the unlabeled branch would be multiplied by 0, so it is
    not run."""
    return {**sup, "loss_sup": sup["loss"], "lambda_u": torch.tensor(lam)}
