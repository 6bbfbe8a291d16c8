"""Shared by the reliability tests (resume, checkpoints, faults, distributed): a tiny CPU
training config, in-process runs that leave the test session's torch settings as they found
them, CLI subprocesses, and weight comparisons."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import REPO, tiny_model_overrides
from helpers import SYNTHETIC as CONFIG

# EfficientNet-Lite0 (3.1 M parameters, 12 MB weights) with a tiny decoder: ~0.2 s a step at
# 64 px on one thread, so a 10-step run with checkpoints takes ~2 s.
TINY = [
    *tiny_model_overrides("efficientnet_lite0"),
    "data.workers=0",
    "data.split=full",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=3",
    "data.batch_size=2",
    "train.warmup_iters=2",
    "train.log_every=1",
    "train.progress=false",
    "train.threads=1",
    "train.deterministic=true",
    "semi.start_iter=0",
    # exactness is checked on CPU; RC2L_TEST_DEVICE=cuda runs the same tests on a GPU
    f"train.device={os.environ.get('RC2L_TEST_DEVICE', 'cpu')}",
]


def tiny_overrides(out_dir: Path | str, *extra: str) -> list[str]:
    return [*TINY, f"out_dir={out_dir}", *extra]


def tiny_config(out_dir: Path | str, *extra: str):
    from rc2l.config import load_config

    return load_config(CONFIG, tiny_overrides(out_dir, *extra))


class TorchSettings:
    """Context manager: an in-process Trainer sets threads and deterministic mode globally."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        self.det = torch.are_deterministic_algorithms_enabled()
        self.det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        self.rng = torch.get_rng_state()
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.det, warn_only=self.det_warn)
        torch.set_rng_state(self.rng)
        return False


def train_inprocess(out_dir: Path | str, *extra: str) -> dict:
    """``rc2l train`` in this process (no interpreter start-up: ~4 s saved per run)."""
    from rc2l.engine.train import train

    with TorchSettings():
        return train(tiny_config(out_dir, *extra))


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env


def cli(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``python -m rc2l <args>`` in a subprocess, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "rc2l", *args],
        cwd=REPO,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_popen(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "rc2l", *args],
        cwd=REPO,
        env=cli_env(**env),
        stdout=f,
        stderr=subprocess.STDOUT,
        text=True,
    )


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def wait_for(cond, timeout: float, proc: subprocess.Popen | None = None, interval: float = 0.02) -> bool:
    """Poll ``cond()`` until true; False on timeout or when ``proc`` exits first."""
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(cond())
        time.sleep(interval)
    return False


def train_records(run: Path) -> list[dict]:
    from rc2l.engine.metrics_log import read_records

    path = run / "metrics.jsonl"
    return [r for r in read_records(path)[0] if r.get("type") == "train"] if path.exists() else []


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_equal_tensors(a: dict, b: dict, what: str = "") -> None:
    assert a.keys() == b.keys(), what
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, (
        f"{what}: {len(bad)} tensors differ, e.g. {bad[0]} (max |diff| "
        f"{(a[bad[0]].double() - b[bad[0]].double()).abs().max().item():.3g})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
