"""Distributed training on CPU with gloo: 2 ranks equal 1 process with the same global batch,
SIGTERM on one rank stops all ranks at the same step, resume continues exactly, a dead rank
makes the survivors fail with one error line instead of hanging.

Why 2 ranks × batch 1 is compared with 1 process × batch 1 × accum_steps 2 (and not with
1 process × batch 2): the backbone has BatchNorm, whose training-mode statistics come from the
images of one forward pass. Rank r at step t sees the sample at global position 2t + r of the
epoch order; the single process sees positions 2t and 2t + 1 in its two micro-batches. Each
forward pass has one image in both runs, so BatchNorm computes the same thing, and the
gradient is the mean of the same two per-image gradients (DDP averages over ranks; accumulation
divides each micro-batch loss by accum_steps). The set loss is normalised by the global target
count (all-reduced over ranks and summed over micro-batches), and the class loss is a mean per
forward pass in both runs. SyncBatchNorm would allow 2 × 2 vs 1 × 4, but PyTorch has no CPU
kernel for it (tested below: refused with a clear error). BatchNorm *running* statistics
differ by design (DDP keeps rank 0's, accumulation updates twice a step), so parameters are
compared, not buffers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from rc2l.data.sampler import ResumableSampler
from rc2l.engine import distributed as D
from rc2l.engine.checkpoint import load_state
from rc2l.errors import RC2LError, TrainingError

from reliability_helpers import (
    REPO,
    TorchSettings,
    cli_env,
    free_port,
    last_line,
    tiny_config,
    tiny_overrides,
    train_inprocess,
    train_records,
    wait_for,
    weights,
)

ITERS = 6
RUN = [f"train.iters={ITERS}", "train.eval_every=3", "train.save_every=100", "data.batch_size=1"]


def launch_ranks(run, extra, world=2, prelude=None, **env):
    """``python -m rc2l train`` once per rank with torchrun's env-var contract (no agent).
    ``prelude``: Python code each rank runs before rc2l's ``__main__`` (``python -c``)."""
    port = str(free_port())
    procs = []
    if prelude is None:
        program = [sys.executable, "-m", "rc2l"]
    else:
        program = [sys.executable, "-c", prelude + "\nimport runpy\nrunpy.run_module('rc2l', run_name='__main__')"]
    for r in range(world):
        e = cli_env(
            RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env
        )
        log = open(run.parent / f"{run.name}.rank{r}.log", "w")
        procs.append(
            subprocess.Popen(
                [*program, "train", "configs/synthetic.yaml", *tiny_overrides(run, *extra)],
                cwd=REPO,
                env=e,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _log(run, r):
    return (run.parent / f"{run.name}.rank{r}.log").read_text()


def _params(path, cfg):
    from rc2l.models.segmenter import build_model

    names = {n for n, _ in build_model(5, cfg.model).named_parameters()}
    w = weights(path)
    return {k: v for k, v in w.items() if k in names}


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_sigterm_resume(tmp_path):
    ref = tmp_path / "one"
    train_inprocess(ref, *RUN, "train.accum_steps=2")

    # 1) two ranks; SIGTERM to rank 1 only: both must stop at the same step and rank 0 saves
    run = tmp_path / "ddp"
    procs = launch_ranks(run, RUN, RC2L_DIST_TIMEOUT="60")
    try:
        assert wait_for(lambda: len(train_records(run)) >= 1, 120, procs[0]), _log(run, 0)
        procs[1].send_signal(signal.SIGTERM)
        rcs = [p.wait(120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert rcs == [0, 0], _log(run, 0)[-2000:] + _log(run, 1)[-2000:]
    st = load_state(run / "state.pt")
    stopped = st["step"]
    assert 1 <= stopped < ITERS and not (run / "last.safetensors").exists()
    assert f"stopped by signal 15 at step {stopped}" in _log(run, 0) and f"at step {stopped}" in _log(run, 1)
    assert len(st["rng_ranks"]) == 2 and not torch.equal(st["rng_ranks"][0]["torch"], st["rng_ranks"][1]["torch"])

    # 2) resume with torchrun (env-var init, rendezvous on a free port)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "rc2l",
            "train",
            "configs/synthetic.yaml",
            *tiny_overrides(run, *RUN, "resume=auto"),
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {run}/state.pt at step {stopped}" in r.stderr

    # the same weights as one process with the same global batch (to float tolerance)
    cfg = tiny_config(run)
    a, b = _params(run / "last.safetensors", cfg), _params(ref / "last.safetensors", cfg)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    # rank 0 alone writes the logs: every step once; the logged loss is the mean over ranks
    recs_d, recs_1 = train_records(run), train_records(ref)
    assert [x["step"] for x in recs_d] == list(range(1, ITERS + 1))
    for x, y in zip(recs_d, recs_1):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (x, y)
    # the all-reduced confusion counts each of the 3 val images once (no padding repeats)
    ev = lambda p: [
        x for x in map(__import__("json").loads, (p / "metrics.jsonl").read_text().splitlines()) if "miou" in x
    ]
    for x, y in zip(ev(run), ev(ref)):
        assert sum(map(sum, x["confusion"])) == sum(map(sum, y["confusion"])) > 0
    assert len(list((run / "tb").iterdir())) == 2  # one event file per run (stop + resume), rank 0 only
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_killed_rank_makes_the_survivor_exit_with_an_error(tmp_path):
    run = tmp_path / "run"
    procs = launch_ranks(
        run,
        ["train.iters=1000", "data.batch_size=1", "train.eval_every=1000", "train.save_every=1000"],
        RC2L_DIST_TIMEOUT="30",
    )
    try:
        assert wait_for(lambda: len(train_records(run)) >= 1, 120, procs[0]), _log(run, 0)
        procs[1].kill()  # e.g. the OOM killer
        t0 = time.time()
        rc = procs[0].wait(60)  # must not hang
        waited = time.time() - t0
    finally:
        for p in procs:
            p.kill()
    assert rc == 2 and waited < 60
    line = last_line(_log(run, 0))
    assert line.startswith("error: rank 0: lost contact with another process"), line


GLOO_TIMEOUT = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
    "waiting 8000ms for recv operation to complete"
)


def test_a_hung_rank_times_out_with_one_error_line(monkeypatch, tmp_path):
    """A rank that stops responding (SIGSTOP) without dying: gloo raises the RuntimeError above
    after RC2L_DIST_TIMEOUT seconds (seen in a real 2-process run); train() turns it into one
    line. (A real SIGSTOP run costs ~20 s, so the error is injected here.)"""
    from rc2l.engine import train as train_mod

    def hung(self):
        raise RuntimeError(GLOO_TIMEOUT)

    monkeypatch.setenv("RC2L_DIST_TIMEOUT", "8")
    monkeypatch.setenv("RANK", "1")  # not rank 0: no run folder to claim
    monkeypatch.setattr(train_mod.Trainer, "__init__", lambda self, cfg: None)
    monkeypatch.setattr(train_mod.Trainer, "fit", hung)
    monkeypatch.setattr(D, "is_dist", lambda: True)
    monkeypatch.setattr(D, "rank", lambda: 1)
    monkeypatch.setattr(D, "cleanup", lambda: None)
    with pytest.raises(TrainingError) as e:
        train_mod.train(None)
    msg = str(e.value)
    assert (
        msg.startswith(
            "rank 1: lost contact with another process (it died, was killed or stopped responding "
            "for RC2L_DIST_TIMEOUT=8 s)"
        )
        and "Timed out waiting 8000ms" in msg
    )
    assert "\n" not in msg
    # an ordinary RuntimeError (a bug) is not disguised as a lost rank
    monkeypatch.setattr(train_mod.Trainer, "fit", lambda self: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_mod.train(None)


def test_rendezvous_timeout_is_one_clear_error(monkeypatch):
    """Rank 0 of 2 whose partner never starts: a clear error after RC2L_DIST_TIMEOUT, not a hang."""
    port = free_port()
    for k, v in dict(
        RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RC2L_DIST_TIMEOUT="1"
    ).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(
        RC2LError,
        match=rf"rank 0 of 2 could not join the gloo process group at 127\.0\.0\.1:{port} "
        r"within 1 s \(RC2L_DIST_TIMEOUT\)",
    ):
        D.init_distributed("cpu")
    assert not D.is_dist()


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_bad_timeout_env_is_refused(monkeypatch, value):
    monkeypatch.setenv("RC2L_DIST_TIMEOUT", value)
    with pytest.raises(RC2LError, match="RC2L_DIST_TIMEOUT"):
        D.dist_timeout()


def test_single_process_uses_no_process_group(tmp_path):
    from rc2l.engine.train import Trainer

    with TorchSettings():
        Trainer(tiny_config(tmp_path, "train.iters=1"))
    assert not torch.distributed.is_initialized()


def test_sync_bn_on_cpu_is_refused(tmp_path):
    """model.sync_bn=true under DDP on CPU: PyTorch's SyncBatchNorm would fail in the first
    forward pass with an obscure error; the trainer refuses up front."""
    from rc2l.engine.train import Trainer

    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with TorchSettings(), pytest.raises(TrainingError, match="model.sync_bn=true needs CUDA devices"):
            Trainer(tiny_config(tmp_path, "model.sync_bn=true", "train.device=cpu"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("size", [16, 15])
def test_sampler_two_ranks_see_the_global_batch_of_one_process(size):
    """Step t of 2 ranks × batch b covers the same (sample, augmentation seed) pairs as step t of
    one process × batch 2b, over several epochs (with padding when size is odd)."""
    b, steps = 2, 20
    one = iter(ResumableSampler(size, seed=3, rank=0, world=1))
    ranks = [iter(ResumableSampler(size, seed=3, rank=r, world=2)) for r in range(2)]
    if size % 2:  # the 2-rank epoch is padded to 16: compare within the first epoch only
        steps = size // (2 * b)
    for _ in range(steps):
        single = {next(one) for _ in range(2 * b)}
        multi = {next(it) for it in ranks for _ in range(b)}
        assert single == multi


def test_sampler_resumes_mid_epoch():
    s = ResumableSampler(10, seed=1, rank=1, world=2)
    full = [x for _, x in zip(range(12), iter(s))]
    s2 = ResumableSampler(10, seed=1, rank=1, world=2)
    s2.start(1, 2)  # 5 per rank: position 7 = epoch 1, position 2
    assert [x for _, x in zip(range(5), iter(s2))] == full[7:12]


# ----------------------------------------------------------------------------- method=rc2l
# Batch 1 per forward pass for the reason in the module docstring (BatchNorm); the unlabeled
# stream too (with one image CutMix mixes an image with itself, so the boxes change nothing,
# in both runs alike). Regions are kept generously (τ_cls 0.3, τ_pix 0) so the tiny untrained
# model has matched regions and every region loss, the RFC head g included, gets gradients.
RC2L_RUN = [
    "method=rc2l",
    "data.split=1_4",
    "data.batch_size=1",
    "data.unlabeled_batch_size=1",
    "train.eval_every=100",
    "train.save_every=100",
    "semi.rfc=1",
    "semi.rampup_iters=2",
    "semi.tau_cls=0.3",
    "semi.tau_pix=0.0",
]

# BatchNorm momentum 0: the running statistics never move (training-mode outputs use the batch
# statistics as before). Used by both runs of the comparison below, in every process.
FREEZE_BN_STATS = """
from torch.nn.modules.batchnorm import _BatchNorm
import rc2l.engine.build as _train

def _build_frozen(*args, _build=_train.build_model, **kwargs):
    model = _build(*args, **kwargs)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.momentum = 0.0
    return model

_train.build_model = _build_frozen
"""


def _rc2l_one_vs_two(tmp_path, iters, prelude=None):
    """1 process × accum 2 and 2 gloo ranks, ``iters`` steps of method=rc2l; both states."""
    run = [*RC2L_RUN, f"train.iters={iters}"]
    if prelude is not None:
        import rc2l.engine.build as train_mod

        saved = train_mod.build_model
        exec(prelude, {})  # the same patch in this process, for the 1-process run
        try:
            train_inprocess(tmp_path / "one", *run, "train.accum_steps=2")
        finally:
            train_mod.build_model = saved
    else:
        train_inprocess(tmp_path / "one", *run, "train.accum_steps=2")
    procs = launch_ranks(tmp_path / "ddp", run, prelude=prelude, RC2L_DIST_TIMEOUT="60")
    try:
        rcs = [p.wait(300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert rcs == [0, 0], _log(tmp_path / "ddp", 0)[-3000:] + _log(tmp_path / "ddp", 1)[-3000:]
    return load_state(tmp_path / "one" / "state.pt"), load_state(tmp_path / "ddp" / "state.pt")


def _worst(a: dict, b: dict) -> tuple[float, str]:
    """max |a − b| over the floating-point tensors (``num_batches_tracked`` counts forward passes:
    2 a step on a rank, 4 with accumulation) and the tensor where it is."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_rc2l_two_ranks_equal_one_process_with_accumulation(tmp_path):
    """method=rc2l, 2 gloo ranks × batch 1 against 1 process × batch 1 × accum_steps=2 (issue 17):
    student, EMA teacher (parameters and buffers) and the RFC head g after 4 steps, and every
    logged term. The RFC head lives outside DDP, so this checks ``Trainer._sync_head_grads``
    (without it the ranks' heads would drift apart and differ from the reference), the
    all-reduced set-loss normaliser and DDP with two forward passes (labeled, mixed unlabeled)
    and ``find_unused_parameters``.

    BatchNorm running statistics are frozen in both runs (momentum 0): DDP keeps rank 0's
    running statistics (broadcast at every forward pass), accumulation updates them with every
    micro-batch, and the EMA teacher, which runs in eval mode, inherits them from the student, so
    from the second step on the teachers would see different statistics and their pseudo-regions
    would differ (``test_rc2l_two_ranks_with_moving_batchnorm_statistics_differ``): a difference by
    design, not a sync bug. With them frozen everything else must agree. Tolerance 1e-5 (the
    supervised case's): the two runs add the same per-image gradients in another order (the
    all-reduce sums the ranks' already-averaged buckets, accumulation adds the micro-batches' in
    place), which may round differently; measured here on CPU: max |Δ| = 0.0 for all three (printed with -s)."""
    one, ddp = _rc2l_one_vs_two(tmp_path, 4, FREEZE_BN_STATS)
    assert ddp["step"] == one["step"] == 4
    assert set(one["heads"]) and all(k.startswith("rfc.") for k in one["heads"])
    for part in ("model", "teacher", "heads"):
        worst, name = _worst(one[part], ddp[part])
        print(f"rc2l 2 ranks vs accumulation, {part}: max |diff| {worst:.3g} ({name})")
        assert worst <= 1e-5, (part, name, worst)
    # the EMA moved the teacher away from the student: its comparison is not the student's again
    assert _worst(one["teacher"], one["model"])[0] > 1e-4
    recs_d, recs_1 = train_records(tmp_path / "ddp"), train_records(tmp_path / "one")
    assert [x["step"] for x in recs_d] == [x["step"] for x in recs_1] == [1, 2, 3, 4]
    for x, y in zip(recs_d, recs_1):
        assert x["regions_matched"] > 0  # the region losses acted (regions kept and matched)
        for k in ("loss", "loss_sup", "loss_unsup", "rmc", "rfc", "rcc", "smc"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (k, x, y)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="by design: DDP keeps rank 0's BatchNorm running statistics, accumulation "
    "updates them with every micro-batch; the EMA teacher (eval mode) inherits them, "
    "so its pseudo-regions, and from the second step the student, differ",
)
def test_rc2l_two_ranks_with_moving_batchnorm_statistics_differ(tmp_path):
    """The same comparison with BatchNorm as it trains (no freezing), 2 steps: step 1 uses the
    initial teacher in both runs and agrees, step 2 a teacher whose running statistics differ
    (a 4-step probe: the logged rmc and rfc differ from step 2 on, rcc and smc, which see only
    the teacher's argmax, from step 3; the student's parameters then differ by more than 1e-5)."""
    one, ddp = _rc2l_one_vs_two(tmp_path, 2)
    params = {k for k in one["model"] if "running" not in k and "num_batches" not in k}
    worst, name = _worst({k: one["model"][k] for k in params}, {k: ddp["model"][k] for k in params})
    assert worst <= 1e-5, (name, worst)
