"""Tests of ``Trainer.train_step`` written to kill the mutants ``tools/mutation.py`` found alive
in it (docs/reliability.md, "Mutation score"): the skipped Inf-gradient step, the schedule and
the EMA teacher after a good step, and the head-gradient average on two real gloo ranks."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def test_an_infinite_gradient_with_a_finite_loss_is_skipped_cleanly(tmp_path):
    from rc2l.engine.train import Trainer

    from reliability_helpers import TorchSettings, tiny_config

    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path, "train.iters=3"))
        its = tr.streams.iterators()
        params = {k: p.detach().clone() for k, p in tr.model.named_parameters()}
        buffers = {k: b.clone() for k, b in tr.model.named_buffers()}
        sched = tr.scheduler.state_dict()
        p0 = next(tr.model.parameters())
        h = p0.register_hook(lambda g: g * float("inf"))
        assert tr.train_step(its) is None
        h.remove()
    assert all(p.grad is None for p in tr.model.parameters())  # no Inf gradient left behind
    assert all(torch.equal(p, params[k]) for k, p in tr.model.named_parameters())
    assert all(torch.equal(b, buffers[k]) for k, b in tr.model.named_buffers())  # BatchNorm put back
    assert tr.scheduler.state_dict() == sched


def test_a_good_step_advances_the_schedule_and_the_ema_teacher(tmp_path):
    from rc2l.engine.train import Trainer

    from reliability_helpers import TorchSettings, tiny_config

    with TorchSettings():
        tr = Trainer(
            tiny_config(
                tmp_path,
                "method=rc2l",
                "data.split=1_4",
                "data.unlabeled_batch_size=2",
                "train.iters=4",
                "semi.rampup_iters=2",
                "semi.ema_momentum=0.5",
            )
        )
        its = tr.streams.iterators()
        lr0 = tr.optimizer.param_groups[0]["lr"]
        assert tr.train_step(its) is not None
        assert tr.optimizer.param_groups[0]["lr"] != lr0  # warm-up: the LR moved
        # after step 0, m_0 = 0: the teacher is the student
        assert all(torch.equal(a, b) for a, b in zip(tr.teacher.parameters(), tr.model.parameters()))
        t_before = [p.clone() for p in tr.teacher.parameters()]
        tr.step = 1
        assert tr.train_step(its) is not None
        m = 0.5  # after step 1: min(1 − 1/2, 0.5)
        for t, t0, s in zip(tr.teacher.parameters(), t_before, tr.model.parameters()):
            assert torch.allclose(t, m * t0 + (1 - m) * s, atol=1e-6)
        assert any(not torch.equal(t, t0) for t, t0 in zip(tr.teacher.parameters(), t_before))
        assert all(p.grad is not None for p in tr.heads.parameters())


def _sync_rank(rank, port, queue):
    import torch.distributed as dist

    from rc2l.engine.train import Trainer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        heads = nn.ModuleDict({"a": nn.Linear(2, 1, bias=True)})
        heads["a"].weight.grad = torch.full((1, 2), float(rank + 1))  # rank 0: 1, rank 1: 2
        heads["a"].bias.grad = None  # unused on this rank: counts as 0
        if rank == 1:
            heads["a"].bias.grad = torch.full((1,), 4.0)
        fake = type("T", (), {"heads": heads})()
        Trainer._sync_head_grads(fake)
        queue.put((rank, heads["a"].weight.grad.tolist(), heads["a"].bias.grad.tolist()))
    finally:
        dist.destroy_process_group()


def test_head_gradients_are_averaged_over_two_gloo_ranks():
    """``Trainer._sync_head_grads`` on 2 real gloo ranks (forked, so a mutated trainer is the one
    tested): the mean of the ranks' gradients, a missing gradient counting as zero."""
    import multiprocessing as mp

    from reliability_helpers import free_port

    ctx = mp.get_context("fork")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_sync_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = sorted(queue.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
    assert got == [(0, [[1.5, 1.5]], [2.0]), (1, [[1.5, 1.5]], [2.0])]


def test_clip_grad_zero_means_no_clipping_and_one_clips_to_norm_one(tmp_path):
    from rc2l.engine.train import Trainer

    from reliability_helpers import TorchSettings, tiny_config

    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path, "train.iters=2", "train.clip_grad=0"))
        seen = {}
        tr.optimizer.register_step_pre_hook(
            lambda *_: seen.update(
                norm=float(torch.stack([p.grad.norm() for p in tr.model.parameters() if p.grad is not None]).norm())
            )
        )
        logs = tr.train_step(tr.streams.iterators())
    assert logs is not None and seen["norm"] > 0
    assert seen["norm"] == pytest.approx(logs["grad_norm"], rel=1e-4)  # the logged norm, nothing clipped away
    with TorchSettings():  # the default train.clip_grad=1: the applied gradient has norm 1, the logged one is larger
        tr = Trainer(tiny_config(tmp_path / "clip", "train.iters=2"))
        tr.optimizer.register_step_pre_hook(
            lambda *_: seen.update(
                norm=float(torch.stack([p.grad.norm() for p in tr.model.parameters() if p.grad is not None]).norm())
            )
        )
        logs = tr.train_step(tr.streams.iterators())
    assert logs["grad_norm"] > 1.5 and seen["norm"] == pytest.approx(1.0, rel=1e-4)


def _first_step(tmp_path, *extra):
    from torch.nn.modules.batchnorm import _BatchNorm

    from rc2l.engine.train import Trainer

    from reliability_helpers import TorchSettings, tiny_config

    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path, "loss.no_object_weight=1.0", "train.iters=10", "train.clip_grad=0", *extra))
        tr.model.train()
        for m in tr.model.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
        grads = {}
        tr.optimizer.register_step_pre_hook(
            lambda *_: grads.update(
                {k: p.grad.detach().clone() for k, p in tr.model.named_parameters() if p.grad is not None}
            )
        )
        logs = tr.train_step(tr.streams.iterators())
    return grads, logs


def test_accumulation_without_clipping_has_the_gradient_and_logs_of_the_big_batch(tmp_path):
    """As tests/test_scale.py::test_accumulation_2x2_equals_batch_4, with train.clip_grad=0: clipping
    to norm 1 would hide a wrongly scaled accumulated gradient (and AdamW is scale-invariant)."""
    big, logs_big = _first_step(tmp_path / "a", "data.batch_size=4")
    acc, logs_acc = _first_step(tmp_path / "b", "data.batch_size=2", "train.accum_steps=2")
    worst = max(float((big[k] - acc[k]).abs().max() / big[k].abs().max().clamp_min(1e-12)) for k in big)
    num = sum(((big[k] - acc[k]).double() ** 2).sum() for k in big)
    den = sum((big[k].double() ** 2).sum() for k in big)
    assert float((num / den).sqrt()) < 1e-5, worst
    for k in ("loss", "loss_mask", "loss_dice", "loss_ce"):  # logged: the mean over the micro-batches
        assert logs_acc[k] == pytest.approx(logs_big[k], rel=1e-5), k
    assert logs_acc["grad_norm"] == pytest.approx(logs_big["grad_norm"], rel=1e-5)
    for logs in (logs_big, logs_acc):  # the logged total is the sum of its logged parts, all positive
        assert logs["loss"] == pytest.approx(logs["loss_ce"] + logs["loss_mask"] + logs["loss_dice"], rel=1e-5)
        assert min(logs["loss_ce"], logs["loss_mask"], logs["loss_dice"]) > 0
