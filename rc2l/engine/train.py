"""The training loop over the parts ``engine.build.build`` makes: data → step → log → eval →
checkpoint (torchvision-references style), with the guards a long run needs — gradient
accumulation, DDP, AMP, a non-finite step skipped with the model as it was, exact resume,
clean stop on a signal."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from rc2l.config import Config, save_config, to_dict
from rc2l.engine import distributed as D
from rc2l.engine import train_state
from rc2l.engine.build import build
from rc2l.engine.checkpoint import model_meta, save_weights
from rc2l.engine.evaluate import collapse_note, evaluate_as_configured, val_loader
from rc2l.engine.metrics_log import MetricsLog
from rc2l.engine.model_dir import command_line, write_model_dir
from rc2l.engine.progress import Progress, summary_line
from rc2l.engine.run_dir import claim_run_dir
from rc2l.engine.signals import GracefulStop
from rc2l.engine.train_state import STATE_FILE
from rc2l.errors import TrainingError
from rc2l.provenance import run_record

log = logging.getLogger("rc2l")


class Trainer:
    """One run: its parts (``build``), the step count, best score and skip counters, and the
    loop. What a step computes is the method's (``rc2l.engine.methods``); what a resume
    restores is ``train_state``'s."""

    def __init__(self, cfg: Config):
        self.started = time.time()
        self.cfg = cfg
        p = build(cfg)
        self.device, self.info, self.datasets, self.streams = p.device, p.info, p.datasets, p.streams
        self.model, self.net, self.method = p.model, p.net, p.method
        self.optimizer, self.scheduler, self.scaler = p.optimizer, p.scheduler, p.scaler
        self.amp, self.amp_dtype = p.amp, p.amp_dtype
        self.run_dir = Path(cfg.out_dir)
        self.main = D.is_main()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.step = 0
        self.best = {"miou": -1.0, "model": None, "step": -1}
        self.bad_steps = 0
        self.skipped_steps = 0
        # wall time of the earlier parts of a resumed run (None: a state saved before it was kept)
        self.earlier_seconds: float | None = 0.0
        resumed = train_state.restore(self)
        self.log = MetricsLog(self.run_dir, self.main, self.step if resumed else None)
        self.provenance = run_record(self.step, self.device)
        self.log.write(self.provenance, "run")

    @property
    def teacher(self) -> nn.Module | None:
        return self.method.teacher

    @property
    def heads(self) -> nn.ModuleDict:
        return self.method.heads

    def wall_seconds(self, part: float | None = None) -> float | None:
        """Wall time of the whole run so far, every resumed part counted; None if a part's is unknown.
        ``part``: this part's seconds, when the caller has already read the clock."""
        part = time.time() - self.started if part is None else part
        return None if self.earlier_seconds is None else self.earlier_seconds + part

    # ----- one optimizer step -------------------------------------------------------------
    def train_step(self, its: dict) -> dict | None:
        """One optimizer step over ``accum_steps`` micro-batches; None if skipped (non-finite)."""
        c = self.cfg
        n = c.train.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        buffers = {k: b.clone() for k, b in self.model.named_buffers()}  # a skipped step must not move BatchNorm
        micro_l = [self.streams.next(its, "labeled") for _ in range(n)]
        micro_u = [self.streams.next(its, "unlabeled") if "unlabeled" in its else None for _ in range(n)]
        self.method.begin_step(micro_l)
        amp = dict(dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)
        for micro, (batch_l, batch_u) in enumerate(zip(micro_l, micro_u)):
            sync = micro == n - 1 or not D.is_dist()  # DDP all-reduces the gradients on the last one
            with self.net.no_sync() if not sync else contextlib.nullcontext():
                with torch.autocast(self.device.type, **amp):
                    terms = self.method.step(batch_l, batch_u, self.step)
                loss = terms["loss"]
                finite = D.all_reduce_sum(torch.isfinite(loss.detach()).float())
                if finite.item() < D.world_size():
                    self._restore_buffers(buffers)
                    return None
                self.scaler.scale(loss / n).backward()
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / n
        if D.is_dist() and len(self.heads):
            self._sync_head_grads()
        # Unscale and measure the gradient norm always (clip only if clip_grad > 0): a finite loss can
        # still give Inf/NaN gradients, and applying them would write a NaN model. With fp16 the
        # scaler skips such steps itself (and lowers its scale).
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        gnorm = torch.nn.utils.clip_grad_norm_(params, c.train.clip_grad if c.train.clip_grad > 0 else math.inf)
        logs["grad_norm"] = float(gnorm)
        if not math.isfinite(logs["grad_norm"]) and c.train.amp != "fp16":
            self.optimizer.zero_grad(set_to_none=True)
            self._restore_buffers(buffers)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.after_step(self.step)
        return logs

    @torch.no_grad()
    def _restore_buffers(self, saved: dict) -> None:
        """Put the student's buffers (BatchNorm running statistics) back as they were before a
        step that is then skipped: its forward pass ran in train mode and may have moved them,
        or made them NaN."""
        for k, b in self.model.named_buffers():
            b.copy_(saved[k])

    def _sync_head_grads(self) -> None:
        """Extra heads (RFC's g) live outside DDP: average their gradients by hand."""
        for p in self.heads.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            D.all_reduce_sum(p.grad)
            p.grad /= D.world_size()

    def _bad_step(self) -> None:
        c = self.cfg
        self.bad_steps += 1
        self.skipped_steps += 1
        log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", self.step, self.bad_steps)
        if self.bad_steps >= c.train.max_bad_steps:
            state = self.run_dir / STATE_FILE
            last = f"last good state in {state}" if state.exists() else "no state saved yet"
            raise TrainingError(
                f"{self.bad_steps} non-finite losses or gradients in a row at step {self.step} "
                f"(train.max_bad_steps={c.train.max_bad_steps}): stopping; lower train.lr, try "
                f"train.amp=off, or check the data; {last}"
            )

    # ----- evaluation and what the run writes ---------------------------------------------
    def evaluate(self) -> list[dict]:
        """Every model the method offers, on val as configured; the best so far → best.safetensors."""
        loader = val_loader(self.datasets["val"], self.cfg.data.workers)
        models = self.method.models_to_evaluate()
        for m in models.values():
            D.broadcast_buffers(m)
        results = []
        for name, m in models.items():
            r = evaluate_as_configured(m, loader, self.cfg, self.info, self.device, self.amp_dtype)
            results.append({"step": self.step, **r, "model": name})
            self.log.write(results[-1], f"val_{name}")
            note = collapse_note(r["confusion"], self.info.class_names) if self.main else None
            if note:
                log.warning("step %d: the %s %s", self.step, name, note)
        top = max(results, key=lambda r: r["miou"])
        if top["miou"] > self.best["miou"]:
            self.best = {"miou": top["miou"], "model": top["model"], "step": self.step}
            if self.main:
                train_state.check_finite(self)
                meta = self._meta(top["model"], top["miou"])
                save_weights(models[top["model"]], self.run_dir / "best.safetensors", meta)
        return results

    def _meta(self, which: str, miou: float | None = None) -> dict:
        extra = {
            "step": str(self.step),
            "model_evaluated": which,
            "dataset": self.cfg.data.name,
            "class_names": self.info.class_names,
            "palette": [list(p) for p in self.info.palette],
            "crop_size": list(self.cfg.data.crop_size),
            "resize": list(self.cfg.data.resize),  # for predict/export
            "commit": self.provenance["commit"],
        }
        if miou is not None:
            extra["miou"] = f"{miou:.4f}"
        return model_meta(self.model, to_dict(self.cfg)["model"], extra)

    def _finish(self) -> None:
        """last.safetensors, and RUN_DIR/model: the best weights as a self-contained, shareable
        model folder (model card, config, classes), laid out as a Hugging Face model repository."""
        train_state.check_finite(self)
        save_weights(self.model, self.run_dir / "last.safetensors", self._meta("student"))
        best = self.run_dir / "best.safetensors"
        if best.is_file():
            info = {"labeled": len(self.datasets["labeled"]), "command": command_line()}
            write_model_dir(
                self.run_dir / "model", best, to_dict(self.cfg), {**info, "commit": self.provenance["commit"]}
            )

    def _log_train(self, logs: dict, t0: float, last_step: int, progress: Progress) -> None:
        logs = D.mean_over_ranks(logs)  # rank 0 logs the mean over all ranks' micro-batches
        rec = {
            "step": self.step,
            "type": "train",
            **{k: round(v, 6) for k, v in logs.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "it_s": (self.step - last_step) / max(time.time() - t0, 1e-9),
            "skipped_steps": self.skipped_steps,
            "skipped_samples": self.streams.skipped_samples,
        }
        self.log.write(rec, "train")
        progress.logged(rec)

    # ----- the loop -----------------------------------------------------------------------
    def fit(self) -> dict:
        c = self.cfg
        its = self.streams.iterators()
        progress = Progress(c.train.iters, self.step, c.method, enabled=self.main and c.train.progress)
        t0, last_log_step = time.time(), self.step
        self.model.train()
        last_eval = None
        with GracefulStop() as stop:
            while self.step < c.train.iters:
                logs = self.train_step(its)
                if logs is None:
                    self._bad_step()
                    continue
                self.bad_steps = 0
                self.step += 1
                progress.step(logs["loss"])
                end = self.step == c.train.iters
                if self.step % c.train.log_every == 0 or end:
                    self._log_train(logs, t0, last_log_step, progress)
                    t0, last_log_step = time.time(), self.step
                if self.step % c.train.eval_every == 0 or end:
                    last_eval = self.evaluate()
                    progress.evaluated(self.step, last_eval)
                if self.step % c.train.save_every == 0 or end:
                    train_state.save(self)
                if stop.requested(self.device):
                    train_state.save(self)
                    progress.close()
                    log.warning(
                        "stopped by signal %d at step %d; state saved to %s (continue with resume=auto)",
                        stop.signal,
                        self.step,
                        self.run_dir / STATE_FILE,
                    )
                    self.log.close()
                    return {"interrupted": True, "step": self.step}
        progress.close()
        if self.main:
            self._finish()
        skipped = self.streams.skipped_samples
        if skipped:
            log.warning(
                "%d bad training sample draw(s) skipped (data.bad_samples=skip); the files are named in "
                "the 'skipping bad sample' warnings above",
                skipped,
            )
        part = time.time() - self.started
        result = {
            "step": self.step,
            "best": self.best,
            "last_eval": last_eval,
            "skipped_samples": skipped,
            "wall_s": self.wall_seconds(part),  # every part of a resumed run; None if one's is unknown
        }
        self.log.write({"type": "end", "step": self.step, "wall_s": result["wall_s"], "wall_s_this_part": part}, "run")
        self.log.close()
        if self.main:
            log.info("%s", summary_line(self.run_dir, result, part, self.earlier_seconds))
        return result


def train(cfg: Config) -> dict:
    """Train one run. The run folder is claimed first (:mod:`rc2l.engine.run_dir`): rank 0 locks
    it for the trainer's whole life and refuses an earlier run there unless told to continue or
    replace it. ``Trainer`` built directly (tests, benchmarks) skips that claim."""
    try:
        if int(os.environ.get("RANK", "0")) != 0:
            claim = contextlib.nullcontext()
        else:
            D.check_device(cfg.train.device)  # a bad device writes nothing, not even the folder
            claim = claim_run_dir(cfg)
        with claim:
            trainer = Trainer(cfg)
            return trainer.fit()
    except RuntimeError as e:
        if D.is_dist() and D.is_comm_error(e):  # a rank died or hangs: fail with one line, not a traceback
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else e.__class__.__name__
            raise TrainingError(
                f"rank {D.rank()}: lost contact with another process (it died, was killed or stopped responding "
                f"for RC2L_DIST_TIMEOUT={D.dist_timeout()} s); see the other ranks' logs ({e.__class__.__name__}: {msg})"
            ) from None
        raise
    finally:
        D.cleanup()
