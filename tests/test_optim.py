"""The optimizer and LR schedule (rc2l.engine.optim): linear warm-up then poly decay at its
break points, the backbone LR multiplier, and the no-weight-decay split for norm weights and
biases; and that the trainer steps the schedule once per optimizer step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rc2l.config import TrainConfig
from rc2l.engine.optim import build_optimizer, build_scheduler, lr_factor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight 4-D (decay), bias 1-D (no decay)
        self.bn = nn.BatchNorm2d(4)  # weight and bias 1-D (no decay)
        self.fc = nn.Linear(4, 2)  # weight 2-D (decay), bias 1-D (no decay)
        self.query = nn.Embedding(3, 4)  # 2-D (decay)


def _optimizer(cfg: TrainConfig):
    bb, head = Tiny(), Tiny()
    opt = build_optimizer({"backbone": list(bb.parameters()), "head": list(head.parameters())}, cfg)
    return opt, bb, head


def _group_of(opt, p):
    (g,) = [g for g in opt.param_groups if any(q is p for q in g["params"])]
    return g


def test_backbone_multiplier_and_no_decay_split():
    cfg = TrainConfig(lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05, warmup_iters=0, iters=10)
    opt, bb, head = _optimizer(cfg)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(bb.parameters())) + len(list(head.parameters()))  # each parameter once
    for net, lr in ((bb, 1e-4), (head, 1e-3)):
        for name, p in net.named_parameters():
            g = _group_of(opt, p)
            assert g["lr"] == pytest.approx(lr), name
            want_wd = 0.0 if (name.endswith("bias") or name.startswith("bn.")) else 0.05
            assert g["weight_decay"] == want_wd, name
    assert isinstance(opt, torch.optim.AdamW)
    # groups are named after the part they belong to (backbone/head), two per part (decay / no decay)
    assert sorted((g["name"], g["weight_decay"]) for g in opt.param_groups) == [
        ("backbone", 0.0),
        ("backbone", 0.05),
        ("head", 0.0),
        ("head", 0.05),
    ]


def test_sgd_keeps_the_groups_and_steps_the_schedule():
    """train.optimizer=sgd: the same groups, LRs and weight decay as AdamW, momentum 0.9, and the
    schedule drives its LR (DeepLab's and UniMatch's optimizer, for the per-pixel model's recipe)."""
    cfg = TrainConfig(optimizer="sgd", lr=0.01, backbone_lr_mult=0.1, weight_decay=1e-4, warmup_iters=0, iters=10)
    opt, bb, head = _optimizer(cfg)
    adamw, _, _ = _optimizer(TrainConfig(lr=0.01, backbone_lr_mult=0.1, weight_decay=1e-4, warmup_iters=0, iters=10))
    assert isinstance(opt, torch.optim.SGD) and not isinstance(opt, torch.optim.AdamW)
    assert [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [
        (g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in adamw.param_groups
    ]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    sched = build_scheduler(opt, cfg)
    (bb.conv.weight.sum() + head.conv.weight.sum()).backward()
    opt.step()
    sched.step()
    assert _group_of(opt, head.conv.weight)["lr"] == pytest.approx(0.01 * lr_factor(1, cfg))
    from rc2l.config import ConfigError, load_config

    assert load_config(overrides=["train.optimizer=sgd"]).train.optimizer == "sgd"
    with pytest.raises(ConfigError, match="train.optimizer"):
        load_config(overrides=["train.optimizer=adam"])


def test_no_decay_split_on_the_real_model():
    """On the segmenter: every norm weight and bias has weight decay 0, every matrix/conv kernel
    the configured decay, and only backbone parameters get the multiplier."""
    from rc2l.models.segmenter import build_model

    from helpers import tiny_model_config

    model = build_model(3, tiny_model_config("resnet18"))
    cfg = TrainConfig(lr=2e-4, backbone_lr_mult=0.5, weight_decay=0.01)
    opt = build_optimizer(model.param_groups(), cfg)
    bb = {id(p) for p in model.backbone.parameters()}
    norms = {
        id(p)
        for m in model.modules()
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
        for p in m.parameters()
    }
    assert norms and len(norms) < len(list(model.parameters()))
    for name, p in model.named_parameters():
        g = _group_of(opt, p)
        assert g["lr"] == pytest.approx(1e-4 if id(p) in bb else 2e-4), name
        if id(p) in norms or name.endswith("bias"):
            assert g["weight_decay"] == 0.0, name
        elif p.ndim >= 2:
            assert g["weight_decay"] == 0.01, name


def _lrs(cfg: TrainConfig, steps: int) -> list[tuple[float, float]]:
    """(backbone lr, head lr) in force at optimizer steps 0..steps-1 (scheduler stepped after each)."""
    opt, _, _ = _optimizer(cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(steps):
        by = {g["name"]: g["lr"] for g in opt.param_groups}
        out.append((by["backbone"], by["head"]))
        opt.step()
        sched.step()
    return out


def test_lr_schedule_at_its_break_points():
    cfg = TrainConfig(lr=1.0, backbone_lr_mult=0.1, warmup_iters=4, iters=10, poly_power=0.9)
    lrs = _lrs(cfg, 11)
    head = [h for _, h in lrs]
    # warm-up: linear from lr/warmup at step 0 up to the full lr at its last step
    assert head[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # then poly decay (1 - t/T)^p counted from step 0 of the run, not from the end of warm-up
    assert head[4] == pytest.approx((1 - 4 / 10) ** 0.9)
    assert head[5] == pytest.approx((1 - 5 / 10) ** 0.9)
    assert head[9] == pytest.approx((1 - 9 / 10) ** 0.9)  # the last step still trains
    assert head[10] == 0.0  # step == iters: the schedule has reached 0
    assert all(a > b for a, b in zip(head[4:], head[5:]))  # decreasing after warm-up
    assert [b for b, _ in lrs] == pytest.approx([0.1 * h for h in head])  # the multiplier at every step
    # past the end it stays 0 (a resumed run with a longer budget would need a new schedule)
    assert lr_factor(15, cfg) == 0.0


def test_lr_schedule_without_warmup_and_other_power():
    cfg = TrainConfig(lr=0.5, warmup_iters=0, iters=4, poly_power=2.0)
    head = [h for _, h in _lrs(cfg, 5)]
    assert head == pytest.approx([0.5, 0.5 * 0.75**2, 0.5 * 0.5**2, 0.5 * 0.25**2, 0.0])
    assert lr_factor(0, TrainConfig(warmup_iters=1, iters=4)) == 1.0  # one warm-up step is the full LR


def test_trainer_logs_the_scheduled_lr_every_step(tmp_path):
    """Through the training loop: the logged lr (the first group: the backbone's, for the next
    step) follows lr · backbone_lr_mult · lr_factor(step): one scheduler step per optimizer step."""
    from reliability_helpers import train_inprocess, train_records

    train_inprocess(
        tmp_path,
        "train.iters=4",
        "train.warmup_iters=2",
        "train.lr=0.01",
        "train.backbone_lr_mult=0.5",
        "train.eval_every=100",
        "train.save_every=100",
    )
    cfg = TrainConfig(lr=0.01, warmup_iters=2, iters=4)
    recs = train_records(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["lr"] for r in recs] == pytest.approx([0.01 * 0.5 * lr_factor(r["step"], cfg) for r in recs])
