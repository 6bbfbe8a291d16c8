"""Training-loop paths tested through the public Trainer / train() on the tiny synthetic config:
AMP really changes the compute dtype, the resume branches (no state yet, not an rc2l state, a
supervised state resumed by a semi-supervised run), the best checkpoint when the teacher wins,
and what a skipped non-finite step leaves untouched (docs/reliability.md)."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from rc2l.cli import main
from rc2l.engine.checkpoint import read_meta

from reliability_helpers import (
    CONFIG,
    TorchSettings,
    assert_equal_tensors,
    last_line,
    tiny_config,
    tiny_overrides,
    train_inprocess,
    weights,
)

ONE_STEP = ["train.iters=1", "train.eval_every=1", "train.save_every=1"]


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    with TorchSettings():
        rc = main(args)
    return rc, last_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- AMP
@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("off", torch.float32)])
def test_amp_changes_the_compute_dtype(tmp_path, amp, dtype):
    """train.amp=bf16 on CPU: a convolution of the backbone and a linear layer of the decoder
    compute in bf16 during a training step and during evaluation; the weights stay fp32."""
    from rc2l.engine.train import Trainer

    seen: dict[str, set] = {"conv": set(), "linear": set()}
    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path, f"train.amp={amp}", "train.iters=2"))
        conv = next(m for m in tr.model.backbone.modules() if isinstance(m, nn.Conv2d))
        linear = next(m for m in tr.model.decoder.modules() if type(m) is nn.Linear)
        conv.register_forward_hook(lambda m, i, o: seen["conv"].add(o.dtype))
        linear.register_forward_hook(lambda m, i, o: seen["linear"].add(o.dtype))
        assert tr.train_step(tr.streams.iterators()) is not None
        assert seen == {"conv": {dtype}, "linear": {dtype}}
        seen["conv"].clear(), seen["linear"].clear()
        tr.evaluate()
        assert seen == {"conv": {dtype}, "linear": {dtype}}
    assert {p.dtype for p in tr.model.parameters()} == {torch.float32}


# ----------------------------------------------------------------------------- resume branches
def test_resume_auto_without_a_state_starts_from_scratch(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rc2l")
    out = train_inprocess(tmp_path / "auto", *ONE_STEP, "resume=auto")
    assert out["step"] == 1
    assert f"resume=auto: no {tmp_path / 'auto' / 'state.pt'} yet, starting from scratch" in caplog.text
    starts = [
        json.loads(x) for x in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines() if '"type": "start"' in x
    ]
    assert [r["step"] for r in starts] == [0]
    train_inprocess(tmp_path / "plain", *ONE_STEP)  # the same as a run without resume
    assert_equal_tensors(
        weights(tmp_path / "auto" / "last.safetensors"), weights(tmp_path / "plain" / "last.safetensors")
    )


def test_resume_from_a_file_that_is_not_an_rc2l_state(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 3, "model": {"w": torch.zeros(2)}}, run / "state.pt")  # loads, but is not ours
    rc, line = run_cli(capsys, ["train", CONFIG, *tiny_overrides(run, "resume=auto", *ONE_STEP)])
    assert rc == 2
    assert line == f"error: {run / 'state.pt'}: not an rc2l training state", line
    assert not (run / "last.safetensors").exists()


def test_supervised_state_resumed_as_rc2l_has_no_teacher(tmp_path, capsys):
    """A supervised warm-up run continued as method=rc2l: its state has no EMA teacher."""
    sup = tmp_path / "sup"
    train_inprocess(sup, "data.split=1_4", *ONE_STEP)
    rc, line = run_cli(
        capsys,
        [
            "train",
            CONFIG,
            *tiny_overrides(
                tmp_path / "semi", "method=rc2l", "data.split=1_4", f"resume={sup / 'state.pt'}", "train.iters=2"
            ),
        ],
    )
    assert rc == 2
    assert line == f"error: {sup / 'state.pt'}: state has no EMA teacher (saved by a supervised run?)", line


# ----------------------------------------------------------------------------- best checkpoint
def test_best_checkpoint_is_the_teacher_when_the_teacher_wins(tmp_path, monkeypatch):
    import rc2l.engine.evaluate as evaluate_mod
    from rc2l.engine.train import Trainer

    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path, "method=rc2l", "data.split=1_4", "train.iters=4"))
    with torch.no_grad():  # a teacher that differs from the student
        for p in tr.teacher.parameters():
            p.add_(0.01)
    scores = {}

    def fake_evaluate(model, loader, num_classes, mode, crop, *args, **kw):
        which = "teacher" if model is tr.teacher else "student"
        assert which == "teacher" or model is tr.model
        s = scores[which]
        return {
            "miou": s,
            "per_class": [s] * num_classes,
            "mode": mode,
            "crop": list(crop),
            "pixels": 1,
            "confusion": [[0] * num_classes] * num_classes,
        }

    monkeypatch.setattr(evaluate_mod, "evaluate", fake_evaluate)
    best = tmp_path / "best.safetensors"
    scores.update(student=40.0, teacher=60.0)
    res = tr.evaluate()
    assert [(r["model"], r["miou"]) for r in res] == [("student", 40.0), ("teacher", 60.0)]
    assert tr.best == {"miou": 60.0, "model": "teacher", "step": 0}
    meta = read_meta(best)
    assert meta["model_evaluated"] == "teacher" and meta["miou"] == "60.0000" and meta["step"] == "0"
    saved = load_file(str(best))
    teacher = {k: v.detach() for k, v in tr.teacher.state_dict().items()}
    assert_equal_tensors(saved, teacher, "best.safetensors = teacher")
    assert not torch.equal(
        saved["backbone.body.conv_stem.weight"], tr.model.state_dict()["backbone.body.conv_stem.weight"]
    )

    tr.step = 2  # the student improves, but not past the best: best.safetensors stays the teacher
    scores.update(student=55.0, teacher=50.0)
    tr.evaluate()
    assert tr.best["model"] == "teacher" and read_meta(best)["step"] == "0"
    tr.step = 4  # now the student beats the best
    scores.update(student=70.0, teacher=65.0)
    tr.evaluate()
    assert tr.best == {"miou": 70.0, "model": "student", "step": 4}
    assert read_meta(best)["model_evaluated"] == "student"
    assert_equal_tensors(load_file(str(best)), {k: v.detach() for k, v in tr.model.state_dict().items()})


# ----------------------------------------------------------------------------- skipped steps
def _nan_on_second_call(monkeypatch, where: str):
    """The supervised step returns a NaN loss (``where="loss"``) or gets a NaN pixel in its
    input (``where="input"``: NaN from the forward pass) on its 2nd call."""
    from rc2l.engine.methods import Supervised

    real, calls = Supervised.step, []

    def step(self, bl, bu, s):
        calls.append(s)
        if len(calls) == 2 and where == "input":
            bl = {**bl, "image": bl["image"].clone()}
            bl["image"][0, :, :4, :4] = float("nan")
        terms = real(self, bl, bu, s)
        if len(calls) == 2 and where == "loss":
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Supervised, "step", step)
    return calls


def _one_good_then_one_skipped(tmp_path, monkeypatch, where):
    from rc2l.engine.train import Trainer

    _nan_on_second_call(monkeypatch, where)
    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path, "train.iters=3", "train.max_bad_steps=3"))
        its = tr.streams.iterators()
        assert tr.train_step(its) is not None
        before = {
            "params": {k: p.detach().clone() for k, p in tr.model.named_parameters()},
            "buffers": {k: b.clone() for k, b in tr.model.named_buffers()},
            "opt": copy.deepcopy(tr.optimizer.state_dict()),
            "sched": tr.scheduler.state_dict(),
        }
        assert tr.train_step(its) is None  # skipped
    return tr, before


def test_a_skipped_nan_step_leaves_parameters_and_optimizer_untouched(tmp_path, monkeypatch):
    tr, before = _one_good_then_one_skipped(tmp_path, monkeypatch, "loss")
    assert_equal_tensors({k: p.detach() for k, p in tr.model.named_parameters()}, before["params"], "parameters")
    opt = tr.optimizer.state_dict()
    assert opt["state"].keys() == before["opt"]["state"].keys() and opt["state"]
    for k, st in opt["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(st[name], before["opt"]["state"][k][name]), (k, name)
    assert tr.scheduler.state_dict() == before["sched"]  # the LR schedule did not advance
    assert all(p.grad is None for p in tr.model.parameters())  # no stale gradient left for the next step


def test_a_skipped_nan_step_leaves_batchnorm_statistics_untouched(tmp_path, monkeypatch):
    tr, before = _one_good_then_one_skipped(tmp_path, monkeypatch, "loss")
    assert_equal_tensors(dict(tr.model.named_buffers()), before["buffers"], "BatchNorm buffers")


def test_a_nan_from_the_forward_pass_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    calls = _nan_on_second_call(monkeypatch, "input")
    out = train_inprocess(
        tmp_path, "train.iters=3", "train.max_bad_steps=3", "train.eval_every=3", "train.save_every=3"
    )
    assert out["step"] == 3 and calls == [0, 1, 1, 2]
    assert all(
        torch.isfinite(v).all() for v in weights(tmp_path / "last.safetensors").values() if v.is_floating_point()
    )


def test_an_evaluation_that_predicts_one_class_everywhere_is_called_collapsed(tmp_path, caplog, monkeypatch):
    import rc2l.engine.train as train_module

    real = train_module.evaluate_as_configured

    def one_class(model, loader, cfg, info, *args, **kw):
        r = real(model, loader, cfg, info, *args, **kw)
        k = len(r["confusion"])
        truth = [sum(row) for row in r["confusion"]]  # the labels as they are, every pixel predicted as class 1
        r["confusion"] = [[truth[i] if j == 1 else 0 for j in range(k)] for i in range(k)]
        return r

    monkeypatch.setattr(train_module, "evaluate_as_configured", one_class)
    caplog.set_level(logging.INFO, logger="rc2l")
    train_inprocess(tmp_path / "run", *ONE_STEP)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("step 1: the student predicts '") and "collapsed to one class" in m for m in warned), warned
