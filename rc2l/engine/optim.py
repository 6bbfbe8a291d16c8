"""AdamW (or SGD) with a backbone learning-rate multiplier, linear warm-up then poly decay."""

from __future__ import annotations

import torch
from torch import nn

from rc2l.config import TrainConfig


def _split_decay(params: list[nn.Parameter]) -> tuple[list, list]:
    """Norm weights and biases (1-D) take no weight decay."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return decay, no_decay


SGD_MOMENTUM = 0.9  # DeepLab's and UniMatch's


def build_optimizer(groups: dict[str, list[nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """groups: {"backbone": [...], "head": [...], ...}; only "backbone" gets the multiplier."""
    param_groups = []
    for name, params in groups.items():
        lr = cfg.lr * (cfg.backbone_lr_mult if name == "backbone" else 1.0)
        decay, no_decay = _split_decay(params)
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "lr": lr, "weight_decay": wd, "name": name})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=SGD_MOMENTUM, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based)."""
    if cfg.warmup_iters > 0 and step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    progress = min(step, cfg.iters) / max(cfg.iters, 1)
    return (1 - progress) ** cfg.poly_power


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
