"""The training loop: data → step → log → eval → checkpoint (torchvision-references style)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rc2l.config import Config, model_keys_read, save_config, to_dict
from rc2l.data.build import build_datasets, collate, dataset_info
from rc2l.data.sampler import ResumableSampler, SeededDataset, StreamPosition
from rc2l.engine import distributed as D
from rc2l.engine.checkpoint import load_state, model_meta, save_state, save_weights
from rc2l.engine.evaluate import AMP_DTYPES, evaluate_as_configured, resolve_amp, val_loader
from rc2l.engine.malloc import keep_freed_memory
from rc2l.engine.methods import METHODS
from rc2l.engine.metrics_log import MetricsLog
from rc2l.engine.model_dir import command_line, write_model_dir
from rc2l.engine.optim import build_optimizer, build_scheduler
from rc2l.engine.progress import Progress, summary_line
from rc2l.engine.run_dir import claim_run_dir
from rc2l.errors import CheckpointError, TrainingError
from rc2l.losses.functional import targets_from_labels
from rc2l.models.segmenter import build_model
from rc2l.provenance import run_record

log = logging.getLogger("rc2l")
STATE_FILE = "state.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    v = json.loads(state["python"])
    random.setstate((v[0], tuple(v[1]), v[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def channels_last_collate(batch: list[dict | None]) -> dict | None:
    """``collate`` with the image batches in channels_last (NHWC) memory format, for a model
    converted to it (train.channels_last): convolutions then need no layout conversion."""
    out = collate(batch)
    if out is not None:
        for k, v in out.items():
            if torch.is_tensor(v) and v.dim() == 4:
                out[k] = v.contiguous(memory_format=torch.channels_last)
    return out


def make_loader(
    dataset, batch_size: int, sampler: ResumableSampler, workers: int, channels_last: bool = False
) -> DataLoader:
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=channels_last_collate if channels_last else collate,
        drop_last=True,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class GracefulStop:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Trainer:
    """Holds everything a resume must restore: student, the method's EMA teacher and extra
    heads, optimizer, scheduler, AMP scaler, data-stream positions, RNG states, step and best
    score. What a step computes is the method's (``rc2l.engine.methods``)."""

    def __init__(self, cfg: Config):
        self.started = time.time()
        self.cfg = cfg
        self.device = D.init_distributed(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.keep_freed_memory:
            keep_freed_memory()
        if cfg.train.deterministic:
            # cuBLAS is deterministic only with a fixed workspace; TF32 rounds differently per kernel choice.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        seed_everything(cfg.seed)  # same on every rank: student, teacher and extra heads start equal
        self.run_dir = Path(cfg.out_dir)
        self.main = D.is_main()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.info = dataset_info(cfg)
        self.datasets = build_datasets(cfg)
        k = self.info.num_classes
        self.model = build_model(k, cfg.model).to(self.device)
        if not self.model.per_pixel:  # mask classification: deep supervision needs every layer's output
            self.model.decoder.aux_predictions = cfg.loss.deep_supervision
        if cfg.train.channels_last:  # before the method copies the student into its EMA teacher
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.model.sync_bn and D.is_dist():
            if self.device.type != "cuda":
                raise TrainingError(
                    "model.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                    "kernel); set model.sync_bn=false for CPU/gloo runs"
                )
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.method = METHODS[cfg.method](cfg, self.model, self.device, k, self.info.ignore_index)
        if D.rank() > 0:  # per-rank randomness (e.g. point sampling) from here on; rank 0 keeps cfg.seed
            seed_everything(cfg.seed + D.rank())
        groups = self.model.param_groups()
        if len(self.heads):
            groups["head"] = groups["head"] + [p for p in self.heads.parameters()]
        self.optimizer = build_optimizer(groups, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.amp = resolve_amp(cfg.train.amp, self.device)  # "auto" → bf16 | off for this device
        self.amp_dtype = AMP_DTYPES[self.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.ddp_model = self.model
        if D.is_dist():
            ids = [self.device.index] if self.device.type == "cuda" else None
            # semi-supervised steps may leave some parameters without a gradient in a step
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self.method.uses_unlabeled
            )
        self.method.net = self.ddp_model
        self.step = 0
        self.best = {"miou": -1.0, "model": None, "step": -1}
        self.bad_steps = 0
        self.skipped_steps = 0
        self.skipped_samples = 0  # bad samples dropped (data.bad_samples=skip), counted per draw
        # wall time of the earlier parts of a resumed run (None: a state saved before it was kept)
        self.earlier_seconds: float | None = 0.0
        self._build_loaders()
        resumed = self._maybe_resume()
        self.log = MetricsLog(self.run_dir, self.main, self.step if resumed else None)
        self.provenance = run_record(self.step, self.device)
        self.log.write(self.provenance, "run")

    @property
    def teacher(self) -> nn.Module | None:
        return self.method.teacher

    @property
    def heads(self) -> nn.ModuleDict:
        return self.method.heads

    # ----- set-up -------------------------------------------------------------------------
    def _build_loaders(self) -> None:
        c = self.cfg
        r, w = D.rank(), D.world_size()
        self.samplers = {"labeled": ResumableSampler(len(self.datasets["labeled"]), c.seed, r, w)}
        if self.method.uses_unlabeled:
            if self.datasets.get("unlabeled") is None:
                raise TrainingError(
                    f"method={c.method} needs unlabeled images: set data.split to a partition with an unlabeled.txt "
                    f"(e.g. 1_8), not '{c.data.split}'"
                )
            self.samplers["unlabeled"] = ResumableSampler(len(self.datasets["unlabeled"]), c.seed + 1, r, w)
        self.positions = {k: StreamPosition(s) for k, s in self.samplers.items()}

    def _iterators(self) -> dict:
        c = self.cfg
        its = {}
        # Starting a DataLoader iterator draws its base seed from the global torch RNG; a resumed
        # run starts its iterators at another step than the run it continues, so keep that draw
        # off the global stream (samples are seeded by the sampler anyway).
        with torch.random.fork_rng(devices=[]):
            for k, s in self.samplers.items():
                s.start(self.positions[k].epoch, self.positions[k].position)
                bs = c.data.batch_size if k == "labeled" else c.data.unlabeled_batch_size
                its[k] = iter(make_loader(self.datasets[k], bs, s, c.data.workers, c.train.channels_last))
        return its

    # ----- state --------------------------------------------------------------------------
    def state_dict(self, rng_ranks: list[dict] | None = None) -> dict:
        """Everything a resume restores. ``rng_ranks``: every rank's RNG state (DDP), gathered by
        :meth:`save`; a single process stores its own."""
        rngs = rng_ranks or [rng_state()]
        return {
            "format": "rc2l-state-v1",
            "config": json.dumps(to_dict(self.cfg)),
            "num_classes": self.info.num_classes,
            "step": self.step,
            "model": self.model.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "heads": self.heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": {k: {**p.state(), "world": D.world_size()} for k, p in self.positions.items()},
            "rng": rngs[0],
            "rng_ranks": rngs,
            "best": json.dumps(self.best),
            "skipped_steps": self.skipped_steps,
            "skipped_samples": self.skipped_samples,
            "wall_s": self.wall_seconds(),
        }

    def wall_seconds(self, part: float | None = None) -> float | None:
        """Wall time of the whole run so far, every resumed part counted; None if a part's is unknown.
        ``part``: this part's seconds, when the caller has already read the clock."""
        part = time.time() - self.started if part is None else part
        return None if self.earlier_seconds is None else self.earlier_seconds + part

    def save(self) -> None:
        """state.pt (rank 0 writes, atomically); all ranks take part (RNG states are gathered)."""
        rngs = D.all_gather_object(rng_state())
        if self.main:
            self._check_finite()
            save_state(self.state_dict(rngs), self.run_dir / STATE_FILE)
        D.barrier()

    def _check_finite(self) -> None:
        """Never write a NaN/Inf model: the previous state.pt stays the last good one."""
        for name, mod in (("student", self.model), ("teacher", self.teacher), ("heads", self.heads)):
            if mod is None:
                continue
            for k, v in mod.state_dict().items():
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    raise TrainingError(
                        f"{name} tensor '{k}' is not finite at step {self.step}: not saving it; "
                        f"last good state in {self.run_dir / STATE_FILE}"
                    )

    def _maybe_resume(self) -> bool:
        """Restore the training state named by ``resume``; whether one was restored."""
        r = self.cfg.resume
        if not r:
            return False
        path = self.run_dir / STATE_FILE if r == "auto" else Path(r)
        if r == "auto" and not path.exists():
            log.info("resume=auto: no %s yet, starting from scratch", path)
            return False
        st = load_state(path)
        if st.get("format") != "rc2l-state-v1":
            raise CheckpointError(f"{path}: not an rc2l training state")
        old = json.loads(st["config"])
        saved, now = (model_keys_read(self.cfg.model.arch, m) for m in (old["model"], to_dict(self.cfg)["model"]))
        if saved != now:
            diff = [k for k in saved if saved[k] != now.get(k)]
            raise CheckpointError(
                f"{path}: saved with a different model config (differs in: {', '.join('model.' + d for d in diff)})"
            )
        from rc2l.engine.checkpoint import check_compatible

        saved_k = st.get("num_classes")
        if saved_k is not None and saved_k != self.info.num_classes:
            raise CheckpointError(
                f"{path}: saved for {saved_k} classes, this run's dataset "
                f"'{self.cfg.data.name}' has {self.info.num_classes}"
            )
        check_compatible(st["model"], self.model, path, {"num_classes": ""})
        self.model.load_state_dict(st["model"])
        if self.teacher is not None:
            if st["teacher"] is None:
                raise CheckpointError(f"{path}: state has no EMA teacher (saved by a supervised run?)")
            self.teacher.load_state_dict(st["teacher"])
        self.heads.load_state_dict(st["heads"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        for k, p in self.positions.items():
            d = st["data"][k]
            p.epoch, p.position = d["epoch"], d["position"]
            old_w = d.get("world", D.world_size())
            if old_w != D.world_size():  # positions count per rank: map through the global position
                p.position = d["position"] * old_w // D.world_size()
                p.advance(0)  # past this rank's share of the epoch → next epoch
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
        self.step = st["step"]
        self.best = json.loads(st["best"])
        self.skipped_steps = st.get("skipped_steps", 0)
        self.skipped_samples = st.get("skipped_samples", 0)
        self.earlier_seconds = st.get("wall_s")
        if self.main:
            log.info("resumed from %s at step %d", path, self.step)
        return True

    # ----- loop ---------------------------------------------------------------------------
    def _mask_norm(self, batches: list[dict]) -> float:
        """The set loss's normalizer for one micro-batch: target masks summed over this step's
        ``accum_steps`` micro-batches and all ranks, divided by accum_steps × world_size. With
        it, mask/dice losses of (micro-batches × ranks) add up to those of one global batch."""
        n = sum(len(t["labels"]) for b in batches for t in targets_from_labels(b["mask"], self.info.ignore_index))
        total = D.all_reduce_sum(torch.tensor(float(n), device=self.device))
        return total.item() / (D.world_size() * len(batches))

    def _next(self, its: dict, key: str):
        """Next batch of a stream; samples dropped as bad (data.bad_samples=skip) are counted, and
        a batch with none left is skipped."""
        while True:
            batch = next(its[key])
            bs = self.cfg.data.batch_size if key == "labeled" else self.cfg.data.unlabeled_batch_size
            self.positions[key].advance(bs)
            if batch is None:
                self.skipped_samples += bs
                continue
            self.skipped_samples += int(batch.get("num_skipped", 0))
            return batch

    def train_step(self, its: dict) -> dict | None:
        """One optimizer step over ``accum_steps`` micro-batches; None if skipped (non-finite)."""
        c = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        buffers = {k: b.clone() for k, b in self.model.named_buffers()}  # a skipped step must not move BatchNorm
        micro_l = [self._next(its, "labeled") for _ in range(c.train.accum_steps)]
        micro_u = [self._next(its, "unlabeled") if "unlabeled" in its else None for _ in range(c.train.accum_steps)]
        norm = self._mask_norm(micro_l) if D.is_dist() or c.train.accum_steps > 1 else None
        for micro, (batch_l, batch_u) in enumerate(zip(micro_l, micro_u)):
            sync = micro == c.train.accum_steps - 1 or not D.is_dist()
            cm = self.ddp_model.no_sync() if not sync else contextlib.nullcontext()
            with cm:
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    terms = self.method.step(batch_l, batch_u, self.step, norm)
                loss = terms["loss"]
                finite = torch.isfinite(loss.detach()).float()
                D.all_reduce_sum(finite)
                if finite.item() < D.world_size():
                    self._restore_buffers(buffers)
                    return None
                self.scaler.scale(loss / c.train.accum_steps).backward()
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / c.train.accum_steps
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

    def _stop_requested(self, stop: GracefulStop) -> bool:
        """A signal seen by any rank stops all ranks at the same step (torchrun forwards SIGTERM to
        each worker, not necessarily within the same step)."""
        if not D.is_dist():
            return stop.signal is not None
        flag = D.all_reduce_sum(torch.tensor(float(stop.signal is not None), device=self.device))
        if flag.item() > 0 and stop.signal is None:
            stop.signal = signal.SIGTERM
        return flag.item() > 0

    def _sync_head_grads(self) -> None:
        """Extra heads (RFC's g) live outside DDP: average their gradients by hand."""
        for p in self.heads.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            D.all_reduce_sum(p.grad)
            p.grad /= D.world_size()

    def evaluate_all(self) -> list[dict]:
        loader = val_loader(self.datasets["val"], self.cfg.data.workers)
        models = self.method.models_to_evaluate()
        for m in models.values():
            D.broadcast_buffers(m)
        results = []
        for name, m in models.items():
            r = evaluate_as_configured(m, loader, self.cfg, self.info, self.device, self.amp_dtype)
            rec = {"step": self.step, **r, "model": name}
            self.log.write(rec, f"val_{name}")
            results.append(rec)
        best = max(results, key=lambda r: r["miou"])
        if best["miou"] > self.best["miou"]:
            self.best = {"miou": best["miou"], "model": best["model"], "step": self.step}
            if self.main:
                self._check_finite()
                m = models[best["model"]]
                save_weights(m, self.run_dir / "best.safetensors", self._meta(best["model"], best["miou"]))
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

    def _log_train(self, logs: dict, t0: float, last_step: int, progress: Progress) -> None:
        logs = D.mean_over_ranks(logs)  # rank 0 logs the mean over all ranks' micro-batches
        rec = {
            "step": self.step,
            "type": "train",
            **{k: round(v, 6) for k, v in logs.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "it_s": (self.step - last_step) / max(time.time() - t0, 1e-9),
            "skipped_steps": self.skipped_steps,
            "skipped_samples": self.skipped_samples,
        }
        self.log.write(rec, "train")
        progress.logged(rec)

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

    def _write_model_dir(self) -> None:
        """RUN_DIR/model: the best weights as a self-contained, shareable model folder (model card,
        config, classes), the layout of a Hugging Face model repository."""
        best = self.run_dir / "best.safetensors"
        if best.is_file():
            write_model_dir(
                self.run_dir / "model",
                best,
                to_dict(self.cfg),
                {
                    "labeled": len(self.datasets["labeled"]),
                    "command": command_line(),
                    "commit": self.provenance["commit"],
                },
            )

    def fit(self) -> dict:
        c = self.cfg
        its = self._iterators()
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
                if self.step % c.train.log_every == 0 or self.step == c.train.iters:
                    self._log_train(logs, t0, last_log_step, progress)
                    t0, last_log_step = time.time(), self.step
                if self.step % c.train.eval_every == 0 or self.step == c.train.iters:
                    last_eval = self.evaluate_all()
                    progress.evaluated(self.step, last_eval)
                if self.step % c.train.save_every == 0 or self.step == c.train.iters:
                    self.save()
                if self._stop_requested(stop):
                    self.save()
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
            self._check_finite()
            save_weights(self.model, self.run_dir / "last.safetensors", self._meta("student"))
            self._write_model_dir()
        if self.skipped_samples:
            log.warning(
                "%d bad training sample draw(s) skipped (data.bad_samples=skip); the files are named in "
                "the 'skipping bad sample' warnings above",
                self.skipped_samples,
            )
        part = time.time() - self.started
        result = {
            "step": self.step,
            "best": self.best,
            "last_eval": last_eval,
            "skipped_samples": self.skipped_samples,
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
