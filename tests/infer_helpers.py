"""Shared by the predict / export / report tests: one tiny trained run per test session, tiny
fresh models saved as rc2l weights, image writers and the in-process CLI."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers import REPO, TINY_MODEL, tiny_model_overrides

TINY_RUN = [
    *tiny_model_overrides("resnet18"),
    "data.workers=0",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=4",
    "data.batch_size=2",
    "train.iters=4",
    "train.eval_every=2",
    "train.save_every=4",
    "train.log_every=1",
    "train.progress=false",
    "train.threads=1",
]
_cache: dict[str, Path] = {}


class TorchSettings:
    """An in-process Trainer sets the thread count and RNG globally: restore them."""

    def __enter__(self):
        self.threads, self.rng = torch.get_num_threads(), torch.get_rng_state()
        self.det = torch.are_deterministic_algorithms_enabled()
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        torch.set_rng_state(self.rng)
        torch.use_deterministic_algorithms(self.det)
        return False


def tiny_run(tmp_path_factory) -> Path:
    """A 4-step synthetic ResNet-18 run folder (config.yaml, metrics.jsonl, best/last.safetensors),
    trained once per test session (~5 s) and shared by the infer test modules."""
    if "run" not in _cache:
        from rc2l.config import load_config
        from rc2l.engine.train import train

        out = tmp_path_factory.mktemp("infer_run")
        cfg = load_config(REPO / "configs" / "synthetic.yaml", [*TINY_RUN, f"out_dir={out}"])
        with TorchSettings():
            train(cfg)
        _cache["run"] = out
    return _cache["run"]


def fresh_weights(path: Path, backbone: str, num_classes: int = 5, seed: int = 0, **extra) -> Path:
    """A freshly initialised tiny model saved the way training saves weights."""
    from rc2l.config import ModelConfig
    from rc2l.engine.checkpoint import model_meta, save_weights
    from rc2l.models.segmenter import build_model

    torch.manual_seed(seed)
    mc = ModelConfig(backbone=backbone, pretrained="none", **TINY_MODEL)
    model = build_model(num_classes, mc).eval()
    meta = {"class_names": [f"c{i}" for i in range(num_classes)], "crop_size": [64, 64], "resize": [], **extra}
    save_weights(model, path, model_meta(model, vars(mc), meta))
    return path


def synthetic_image(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    """A scene from the built-in generator (so a trained model sees familiar content), resized
    to h×w when that differs from 64×64."""
    from rc2l.data import synthetic

    rgb, _ = synthetic.generate(seed, "val", seed % 4, size=64)
    im = Image.fromarray(rgb)
    if (h, w) != (64, 64):
        im = im.resize((w, h), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return np.array(im)


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``rc2l <argv>`` in this process → (exit code, stdout, stderr)."""
    from rc2l.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()
