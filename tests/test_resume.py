"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) and continued with resume=auto
ends with the same weights, bit for bit, as an uninterrupted run of the same length.

Bit-exactness holds on CPU with train.deterministic=true, train.threads=1, data.workers=0
(the settings in reliability_helpers.TINY). loss.num_points > 0 makes the loss draw random
points from the global torch RNG every step, so the RNG states must be restored exactly too."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from rc2l.engine.checkpoint import load_state
from rc2l.provenance import git_commit

from reliability_helpers import (
    CONFIG,
    assert_equal_tensors,
    cli_popen,
    tiny_overrides,
    train_inprocess,
    train_records,
    wait_for,
    weights,
)

ITERS = 6
RUN = [f"train.iters={ITERS}", "train.save_every=2", "train.eval_every=3", "loss.num_points=64"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Weights of an uninterrupted run of ITERS steps."""
    run = tmp_path_factory.mktemp("ref")
    train_inprocess(run, *RUN)
    return {"last": weights(run / "last.safetensors"), "state": load_state(run / "state.pt"), "run": run}


def assert_same_rng(a: dict, b: dict) -> None:
    """torch, numpy (key and position) and python RNG states equal."""
    assert torch.equal(a["torch"], b["torch"])
    assert a["numpy"] == b["numpy"] and a["numpy_pos"] == b["numpy_pos"]
    assert a["python"] == b["python"]


def _temp_files(run):
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_sigkill_then_resume_auto_is_bit_exact(tmp_path, reference):
    run = tmp_path / "run"
    proc = cli_popen(["train", CONFIG, *tiny_overrides(run, *RUN)], tmp_path / "log.txt")
    try:
        assert wait_for(lambda: (run / "state.pt").exists(), 120, proc), (tmp_path / "log.txt").read_text()
        proc.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of a later checkpoint write
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "last.safetensors").exists(), "the run finished before it was killed: test proves nothing"
    killed_at = load_state(run / "state.pt")["step"]
    assert 2 <= killed_at < ITERS

    out = train_inprocess(run, *RUN, "resume=auto")
    assert out["step"] == ITERS
    assert_equal_tensors(weights(run / "last.safetensors"), reference["last"], "student after resume")
    st = load_state(run / "state.pt")
    assert st["step"] == ITERS
    ref_opt = reference["state"]["optimizer"]["state"]
    assert st["optimizer"]["state"].keys() == ref_opt.keys() and ref_opt
    for k, v in ref_opt.items():  # Adam's first and second moments and its step count
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st["optimizer"]["state"][k][name], v[name]), (k, name)
    assert st["scheduler"] == reference["state"]["scheduler"]
    assert st["data"] == reference["state"]["data"]
    assert_same_rng(st["rng"], reference["state"]["rng"])
    assert _temp_files(run) == []  # a temp file left by the kill is cleaned up by the next save
    # the log reads like the uninterrupted run's: what the killed run logged after its checkpoint is gone
    losses = lambda r: [(x["step"], x["loss"]) for x in train_records(r)]  # noqa: E731
    assert losses(run) == losses(reference["run"])
    starts = [
        json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"type": "start"' in line
    ]
    assert [r["step"] for r in starts] == [0, killed_at]  # every (re)start says where and with which code
    assert {r["commit"] for r in starts} == {git_commit()}


@pytest.mark.slow
def test_sigterm_saves_current_step_exits_cleanly_and_resumes(tmp_path, reference):
    run = tmp_path / "run"
    proc = cli_popen(["train", CONFIG, *tiny_overrides(run, *RUN, "train.save_every=1000")], tmp_path / "log.txt")
    try:
        assert wait_for(lambda: len(train_records(run)) >= 1, 120, proc), (tmp_path / "log.txt").read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
    log = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 0, log
    assert "stopped by signal" in log
    st = load_state(run / "state.pt")  # save_every=1000: this state can only come from the signal
    assert 1 <= st["step"] < ITERS
    assert st["step"] == train_records(run)[-1]["step"]  # saved at the step it stopped at
    assert not (run / "last.safetensors").exists()

    train_inprocess(run, *RUN, "resume=auto")
    steps = [r["step"] for r in train_records(run)]
    assert steps == list(range(1, ITERS + 1))  # continued from there: no step repeated or lost
    assert_equal_tensors(weights(run / "last.safetensors"), reference["last"], "student after SIGTERM + resume")


def test_in_process_signal_stop_and_resume_semi_rc2l(tmp_path, monkeypatch):
    """method=rc2l (EMA teacher, RFC head, unlabeled stream): stop by SIGINT (Ctrl-C) at step 2, resume,
    and compare student, teacher and head with an uninterrupted 4-step run."""
    from rc2l.engine.methods import RC2L

    extra = [
        "method=rc2l",
        "data.split=1_4",
        "data.unlabeled_batch_size=2",
        "train.iters=4",
        "train.save_every=100",
        "train.eval_every=100",
        "semi.rampup_iters=2",
    ]
    train_inprocess(tmp_path / "ref", *extra)
    ref = load_state(tmp_path / "ref" / "state.pt")

    real = RC2L.step

    def stop_at_2(self, batch_l, batch_u, step):
        if step == 1:  # during the 2nd step: the loop saves and stops after it
            signal.raise_signal(signal.SIGINT)
        return real(self, batch_l, batch_u, step)

    monkeypatch.setattr(RC2L, "step", stop_at_2)
    out = train_inprocess(tmp_path / "run", *extra)
    assert out == {"interrupted": True, "step": 2}
    first_part = load_state(tmp_path / "run" / "state.pt")["wall_s"]
    monkeypatch.setattr(RC2L, "step", real)
    out = train_inprocess(tmp_path / "run", *extra, "resume=auto")
    st = load_state(tmp_path / "run" / "state.pt")
    assert st["step"] == 4
    # the run's wall time counts both parts, not only the process that finished it
    (end,) = [
        r
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if r.get("type") == "end"
    ]
    assert 0 < first_part and 0 < end["wall_s_this_part"]
    assert end["wall_s"] == pytest.approx(first_part + end["wall_s_this_part"], abs=0.5) == out["wall_s"]
    for part in ("model", "teacher", "heads"):
        assert_equal_tensors(st[part], ref[part], part)
    assert st["data"] == ref["data"] and st["data"]["unlabeled"]["position"] > 0


def test_resume_with_another_world_size_maps_the_data_position(tmp_path, reference, caplog):
    """A state saved by 2 ranks (each 3 samples into epoch 1 = global position 6) resumed by one
    process continues at position 6; per-rank RNG streams cannot be mapped and a warning says so."""
    from rc2l.engine.checkpoint import save_state
    from rc2l.engine.train import Trainer

    from reliability_helpers import TorchSettings, tiny_config

    st = dict(reference["state"])
    st["data"] = {"labeled": {"epoch": 1, "position": 3, "world": 2}}
    st["rng_ranks"] = [st["rng"], st["rng"]]
    save_state(st, tmp_path / "two.pt")
    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path / "run", *RUN, f"resume={tmp_path / 'two.pt'}"))
    assert (tr.streams.positions["labeled"].epoch, tr.streams.positions["labeled"].position) == (1, 6)
    assert tr.step == ITERS
    assert "saved by 2 process(es), this run has 1: RNG states not restored" in caplog.text


def test_resumed_log_drops_what_the_interrupted_run_logged_after_its_checkpoint(tmp_path):
    """Resuming at step 4: the killed run's records of steps 5-6 go (they are logged again), its
    records up to 4, start records and a half-written line stay; TensorBoard hides them too."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rc2l.engine.metrics_log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(tmp_path, enabled=True)
    recs = [
        {"type": "start", "step": 0},
        *({"type": "train", "step": s, "loss": s / 4} for s in range(1, 7)),
        {"step": 4, "miou": 50.0, "model": "student"},
        {"step": 6, "miou": 51.0, "model": "student"},
    ]
    for r in recs:
        first.write(r, "train")
    first.close()
    with open(path, "a") as f:
        f.write('{"step": 7, "ty')
    log = MetricsLog(tmp_path, enabled=True, resumed_at=4)
    log.write({"type": "start", "step": 4}, "run")
    log.write({"type": "train", "step": 5, "loss": 0.5}, "train")
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines[:-3]] == [r for r in recs if r["step"] <= 4]
    assert lines[-3] == '{"step": 7, "ty'
    assert [json.loads(x)["step"] for x in lines[-2:]] == [4, 5]
    tb = EventAccumulator(str(tmp_path / "tb"))
    tb.Reload()
    assert [(e.step, e.value) for e in tb.Scalars("train/loss")] == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (5, 0.5)]


def test_resume_restores_the_numpy_and_python_rng(tmp_path, reference):
    """Nothing in training draws from numpy's or python's global RNG, so in the SIGKILL test
    their states match even without a restore; here the saved states differ from what
    seeding gives, and a resume must put exactly those back (and torch's)."""
    import random

    import numpy as np

    from rc2l.engine.checkpoint import save_state
    from rc2l.engine.rng import rng_state
    from rc2l.engine.train import Trainer

    from reliability_helpers import TorchSettings, tiny_config

    with TorchSettings():
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            np.random.seed(1234)
            np.random.random(7)
            random.seed(4321)
            random.random()
            torch.manual_seed(99)
            torch.rand(3)
            saved = rng_state()
            st = dict(reference["state"], rng=saved, rng_ranks=[saved])
            save_state(st, tmp_path / "s.pt")
            np.random.seed(0), random.seed(0)  # what Trainer's seeding would give anyway
            Trainer(tiny_config(tmp_path / "run", *RUN, f"resume={tmp_path / 's.pt'}"))
            assert_same_rng(rng_state(), saved)
            assert np.random.random() == np.random.RandomState(1234).random(8)[-1]
        finally:
            np.random.set_state(np_state), random.setstate(py_state)


def test_resume_from_a_state_without_wall_time_says_the_total_is_unknown(tmp_path, caplog):
    """A state saved before the wall time was kept: the finished run's total is None, not this part's."""
    import logging

    from rc2l.engine.checkpoint import save_state

    run = tmp_path / "run"
    train_inprocess(run, "train.iters=2", "train.eval_every=100")
    st = load_state(run / "state.pt")
    del st["wall_s"]
    save_state(st, run / "state.pt")
    with caplog.at_level(logging.INFO, logger="rc2l"):
        out = train_inprocess(run, "train.iters=3", "train.eval_every=100", "resume=auto")
    assert out["wall_s"] is None
    assert "the earlier parts' time is unknown" in caplog.text
    ends = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "end"]
    assert ends[-1]["wall_s"] is None and ends[-1]["wall_s_this_part"] > 0
