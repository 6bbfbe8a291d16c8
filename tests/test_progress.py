"""A run piped to a file (nohup, SLURM) writes a line per logged step and per evaluation, never
a line per step, and ends with a summary line."""

import re
import subprocess
import sys
from pathlib import Path

from helpers import tiny_model_overrides

REPO = Path(__file__).resolve().parents[1]

TINY = [
    *tiny_model_overrides("resnet18"),
    "data.workers=0",
    "data.batch_size=2",
    "data.split=full",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=2",
    "train.threads=1",
]


def test_piped_training_writes_o_of_iters_over_log_every_lines(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "rc2l",
                "train",
                str(REPO / "configs" / "synthetic.yaml"),
                *TINY,
                "train.iters=24",
                "train.log_every=6",
                "train.eval_every=12",
                f"out_dir={tmp_path / 'run'}",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    lines = log.read_text().splitlines()
    assert p.returncode == 0, "\n".join(lines[-5:])
    steps = [ln for ln in lines if re.search(r"step \d+/24 loss", ln)]
    assert [int(re.search(r"step (\d+)/24", ln).group(1)) for ln in steps] == [6, 12, 18, 24]
    assert all("steps/s" in ln and "ETA" in ln and "lr" in ln for ln in steps)
    evals = [ln for ln in lines if re.search(r"step \d+: val student mIoU", ln)]
    assert len(evals) == 2
    assert sum("finished 24 steps" in ln and "best val mIoU" in ln and str(tmp_path / "run") in ln for ln in lines) == 1
    assert len(lines) <= 24 // 6 + 2 + 12, "\n".join(lines)  # a handful of fixed lines (start, model folder, done)
    assert not any("\r" in ln or "it/s]" in ln for ln in lines)  # no progress-bar frames in a file
