"""state.pt: everything a resume restores — student, the method's EMA teacher and extra heads,
optimizer, scheduler, AMP scaler, data-stream positions, every rank's RNG states, step, best
score, skip counters, wall time — and the guard that never writes a non-finite model. ``tr``
below is the ``Trainer`` (engine/train.py), read and written through its attributes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rc2l.config import model_keys_read, to_dict
from rc2l.engine import distributed as D
from rc2l.engine.checkpoint import check_compatible, load_state, save_state
from rc2l.engine.rng import rng_state, set_rng_state
from rc2l.errors import CheckpointError, TrainingError

log = logging.getLogger("rc2l")
STATE_FILE = "state.pt"
FORMAT = "rc2l-state-v1"


def state_dict(tr, rng_ranks: list[dict] | None = None) -> dict:
    """``rng_ranks``: every rank's RNG state (DDP), gathered by :func:`save`; a single process
    stores its own."""
    rngs = rng_ranks or [rng_state()]
    return {
        "format": FORMAT,
        "config": json.dumps(to_dict(tr.cfg)),
        "num_classes": tr.info.num_classes,
        "step": tr.step,
        "model": tr.model.state_dict(),
        "teacher": tr.teacher.state_dict() if tr.teacher is not None else None,
        "heads": tr.heads.state_dict(),
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "scaler": tr.scaler.state_dict(),
        "data": tr.streams.state(),
        "rng": rngs[0],
        "rng_ranks": rngs,
        "best": json.dumps(tr.best),
        "skipped_steps": tr.skipped_steps,
        "skipped_samples": tr.streams.skipped_samples,
        "wall_s": tr.wall_seconds(),
    }


def check_finite(tr) -> None:
    """Never write a NaN/Inf model: the previous state.pt stays the last good one."""
    for name, mod in (("student", tr.model), ("teacher", tr.teacher), ("heads", tr.heads)):
        if mod is None:
            continue
        for k, v in mod.state_dict().items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise TrainingError(
                    f"{name} tensor '{k}' is not finite at step {tr.step}: not saving it; "
                    f"last good state in {tr.run_dir / STATE_FILE}"
                )


def save(tr) -> None:
    """state.pt (rank 0 writes, atomically); all ranks take part (RNG states are gathered)."""
    rngs = D.all_gather_object(rng_state())
    if tr.main:
        check_finite(tr)
        save_state(state_dict(tr, rngs), tr.run_dir / STATE_FILE)
    D.barrier()


def _check_same_model(tr, st: dict, path: Path) -> None:
    old = json.loads(st["config"])
    saved, now = (model_keys_read(tr.cfg.model.arch, m) for m in (old["model"], to_dict(tr.cfg)["model"]))
    if saved != now:
        diff = [k for k in saved if saved[k] != now.get(k)]
        raise CheckpointError(
            f"{path}: saved with a different model config (differs in: {', '.join('model.' + d for d in diff)})"
        )
    saved_k = st.get("num_classes")
    if saved_k is not None and saved_k != tr.info.num_classes:
        raise CheckpointError(
            f"{path}: saved for {saved_k} classes, this run's dataset '{tr.cfg.data.name}' has {tr.info.num_classes}"
        )
    check_compatible(st["model"], tr.model, path, {"num_classes": ""})


def restore(tr) -> bool:
    """Restore the training state named by ``resume``; whether one was restored."""
    r = tr.cfg.resume
    if not r:
        return False
    path = tr.run_dir / STATE_FILE if r == "auto" else Path(r)
    if r == "auto" and not path.exists():
        log.info("resume=auto: no %s yet, starting from scratch", path)
        return False
    st = load_state(path)
    if st.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rc2l training state")
    _check_same_model(tr, st, path)
    tr.model.load_state_dict(st["model"])
    if tr.teacher is not None:
        if st["teacher"] is None:
            raise CheckpointError(f"{path}: state has no EMA teacher (saved by a supervised run?)")
        tr.teacher.load_state_dict(st["teacher"])
    tr.heads.load_state_dict(st["heads"])
    tr.optimizer.load_state_dict(st["optimizer"])
    tr.scheduler.load_state_dict(st["scheduler"])
    tr.scaler.load_state_dict(st["scaler"])
    tr.streams.load_state(st["data"])
    ranks = st.get("rng_ranks") or [st["rng"]]
    if len(ranks) == D.world_size():
        set_rng_state(ranks[D.rank()])
    else:  # another world size: weights, optimizer and data position resume, per-rank randomness does not
        log.warning(
            "%s was saved by %d process(es), this run has %d: RNG states not restored; the data "
            "position is mapped to the new number of processes",
            path,
            len(ranks),
            D.world_size(),
        )
    tr.step = st["step"]
    tr.best = json.loads(st["best"])
    tr.skipped_steps = st.get("skipped_steps", 0)
    tr.streams.skipped_samples = st.get("skipped_samples", 0)
    tr.earlier_seconds = st.get("wall_s")
    if tr.main:
        log.info("resumed from %s at step %d", path, tr.step)
    return True
