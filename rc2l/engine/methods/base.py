"""What every method offers the trainer, and what the methods share: the supervised loss of
the model's kind and how the loss terms are put together.

The trainer calls, once per optimizer step, ``method.begin_step(labeled micro-batches)``, then
per micro-batch ``method.step(labeled, unlabeled, step)`` → loss terms (the total to
back-propagate under "loss"), then ``method.after_step(step)``. It saves ``method.teacher`` and
``method.heads`` with the student, optimises ``method.heads`` with it, and evaluates
``method.models_to_evaluate()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rc2l.config import Config
from rc2l.losses.criterion import SetCriterion
from rc2l.losses.pixel import PixelCriterion

if TYPE_CHECKING:
    from rc2l.engine.methods.ema import EmaTeacher


def view_weights(views: int, fp: bool) -> tuple[float, float]:
    """(weight of each strong view, weight of the feature-perturbed view): (0.25, 0.5) with two
    views and FP as UniMatch; the strong views share 1 − w_fp."""
    w_fp = 0.5 if fp else 0.0
    return (1.0 - w_fp) / views, w_fp


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
    forward on — the DDP wrapper under torchrun, else the model itself. ``ema``: the method's
    EMA teacher, if it has one.

    ``description`` (the model card's line) and ``loss_terms`` (the logged terms besides the
    "loss*" ones, which the report plots) are declared by each registered method."""

    description = ""
    loss_terms: tuple[str, ...] = ()
    uses_unlabeled = False

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        device: torch.device,
        num_classes: int,
        ignore_index: int = 255,
        net: nn.Module | None = None,
    ):
        self.cfg, self.model, self.device = cfg, model, device
        self.net = model if net is None else net
        self.criterion = build_criterion(cfg, num_classes, ignore_index).to(device)
        self.ema: EmaTeacher | None = None
        self.heads = nn.ModuleDict()  # trainable modules besides the student (RFC's g)

    @classmethod
    def unlabeled_views(cls, cfg: Config) -> int:
        """Strong views per unlabeled sample the data must carry (0: no unlabeled images)."""
        return 1 if cls.uses_unlabeled else 0

    @property
    def teacher(self) -> nn.Module | None:
        return None if self.ema is None else self.ema.model

    def begin_step(self, labeled: list[dict]) -> None:
        """Before an optimizer step over the labeled micro-batches ``labeled``: the supervised
        loss takes its normaliser from all of them (and all processes)."""
        self.criterion.begin_step([b["mask"] for b in labeled])

    def supervised_loss(self, batch: dict) -> dict[str, Tensor]:
        """batch: {"image" (B, 3, H, W), "mask" (B, H, W)} → the criterion's terms and "loss"."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["mask"].to(self.device, non_blocking=True)
        return self.criterion(self.net(images), labels)

    def step(self, labeled: dict, unlabeled: dict | None, step: int) -> dict[str, Tensor]:
        return self.supervised_loss(labeled)

    def after_step(self, step: int) -> None:
        """Called after each optimizer step ``step`` (0-based)."""
        if self.ema is not None:
            self.ema.update(step)

    def models_to_evaluate(self) -> dict[str, nn.Module]:
        return {"student": self.model} if self.ema is None else {"student": self.model, "teacher": self.ema.model}


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
