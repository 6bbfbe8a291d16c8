"""The composition root of a training run: ``build(cfg)`` makes every part from plain config
values — process set-up, data, student, method, optimizer and schedule, AMP, data streams —
and returns them together; the trainer only runs the loop over them."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from rc2l.config import Config
from rc2l.data.build import DatasetInfo, build_datasets, dataset_info
from rc2l.engine import distributed as D
from rc2l.engine.evaluate import AMP_DTYPES, resolve_amp
from rc2l.engine.malloc import keep_freed_memory
from rc2l.engine.methods import METHODS
from rc2l.engine.methods.base import Method
from rc2l.engine.optim import build_optimizer, build_scheduler
from rc2l.engine.rng import seed_everything
from rc2l.engine.streams import Streams
from rc2l.errors import TrainingError
from rc2l.models.segmenter import build_model


@dataclass
class Parts:
    device: torch.device
    info: DatasetInfo
    datasets: dict
    model: nn.Module  # the bare student
    net: nn.Module  # what a step calls forward on: the student, or its DDP wrapper under torchrun
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: str  # "bf16" | "fp16" | "off", resolved for the device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    streams: Streams


def setup_process(cfg: Config) -> torch.device:
    """Device (and the process group under torchrun), threads, allocator, determinism."""
    device = D.init_distributed(cfg.train.device)
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
    return device


def build_student(cfg: Config, num_classes: int, device: torch.device) -> nn.Module:
    model = build_model(num_classes, cfg.model).to(device)
    if not model.per_pixel:  # mask classification: deep supervision needs every layer's output
        model.decoder.aux_predictions = cfg.loss.deep_supervision
    if cfg.train.channels_last:  # before the method copies the student into its EMA teacher
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.sync_bn and D.is_dist():
        if device.type != "cuda":
            raise TrainingError(
                "model.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                "kernel); set model.sync_bn=false for CPU/gloo runs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def distributed(model: nn.Module, device: torch.device, uses_unlabeled: bool) -> nn.Module:
    """The DDP wrapper under torchrun, else the model itself."""
    if not D.is_dist():
        return model
    ids = [device.index] if device.type == "cuda" else None
    # semi-supervised steps may leave some parameters without a gradient in a step
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=uses_unlabeled)


def build(cfg: Config) -> Parts:
    device = setup_process(cfg)
    seed_everything(cfg.seed)  # same on every rank: student, teacher and extra heads start equal
    kind = METHODS[cfg.method]
    info = dataset_info(cfg)
    datasets = build_datasets(cfg, unlabeled_views=kind.unlabeled_views(cfg))
    model = build_student(cfg, info.num_classes, device)
    net = distributed(model, device, kind.uses_unlabeled)
    method = kind(cfg, model, device, info.num_classes, info.ignore_index, net=net)
    if D.rank() > 0:  # per-rank randomness (e.g. point sampling) from here on; rank 0 keeps cfg.seed
        seed_everything(cfg.seed + D.rank())
    groups = model.param_groups()
    if len(method.heads):
        groups["head"] = groups["head"] + list(method.heads.parameters())
    optimizer = build_optimizer(groups, cfg.train)
    amp = resolve_amp(cfg.train.amp, device)  # "auto" → bf16 | off for this device
    return Parts(
        device=device,
        info=info,
        datasets=datasets,
        model=model,
        net=net,
        method=method,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.train),
        amp=amp,
        amp_dtype=AMP_DTYPES[amp],
        scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
        streams=Streams(cfg, datasets, method.uses_unlabeled),
    )
