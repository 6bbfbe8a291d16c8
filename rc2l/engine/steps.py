"""One training step per method. Each takes the shared context, a labeled batch and (for
semi-supervised methods) an unlabeled batch, and returns the loss terms; the total to
back-propagate is under "loss". A new method is one new function here."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rc2l.config import Config
from rc2l.losses.criterion import SetCriterion


@dataclass
class StepContext:
    cfg: Config
    model: nn.Module  # student (possibly DDP-wrapped)
    criterion: SetCriterion
    device: torch.device
    teacher: nn.Module | None = None
    heads: nn.ModuleDict = field(default_factory=nn.ModuleDict)  # trainable extras (RFC head)
    num_masks_fn: object = None  # callable(labels) → global mean target count (DDP)
    extras: dict = field(default_factory=dict)  # method-specific objects (region losses, ...)


def supervised_loss(ctx: StepContext, batch: dict) -> dict[str, Tensor]:
    images = batch["image"].to(ctx.device, non_blocking=True)
    labels = batch["mask"].to(ctx.device, non_blocking=True)
    out = ctx.model(images)
    n = None
    if ctx.num_masks_fn is not None:
        n = ctx.num_masks_fn(labels)
    return ctx.criterion(out, labels, n)


def supervised_step(ctx: StepContext, batch_l: dict, batch_u: dict | None, step: int) -> dict[str, Tensor]:
    return supervised_loss(ctx, batch_l)


STEPS = {"supervised": supervised_step}
