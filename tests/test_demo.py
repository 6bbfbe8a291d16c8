"""`rc2l demo` at a tiny size: both runs finish and the table is printed."""
from __future__ import annotations

import re

from helpers import tiny_model_overrides
from infer_helpers import TorchSettings, cli

TINY_DEMO = [*tiny_model_overrides("resnet18"), "train.iters=2", "train.eval_every=2", "train.save_every=2",
             "train.warmup_iters=1", "train.threads=1", "train.progress=false", "data.split=1_4",
             "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.batch_size=2",
             "data.unlabeled_batch_size=2", "semi.start_iter=0", "semi.rampup_iters=1"]


def test_demo_at_a_tiny_size_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    with TorchSettings():
        code, stdout, stderr = cli(["demo", "--out", str(out), *TINY_DEMO])
    assert code == 0, stderr[-2000:]
    assert "== supervised: 2 steps, labels 1_4 of 8 synthetic images" in stdout
    assert "== rc2l: 2 steps" in stdout
    lines = stdout.splitlines()
    head = lines.index("| method | labeled | val mIoU (best) | model | minutes |")
    assert lines[head + 1] == "|---|---|---:|---|---:|"
    rows = [re.fullmatch(r"\| (\w+) \| 1_4 \| (\d+\.\d\d) \| (student|teacher) \| \d+\.\d \|", ln) for ln in lines[head + 2:head + 4]]
    assert all(rows), lines[head + 2:head + 4]
    assert [r.group(1) for r in rows] == ["supervised", "rc2l"]
    miou = {r.group(1): float(r.group(2)) for r in rows}
    assert all(0 <= v <= 100 for v in miou.values())
    assert rows[0].group(3) == "student"  # supervised-only has no teacher
    gain = re.search(r"RC²L vs supervised-only with the same labels and budget: ([+-]\d+\.\d\d) mIoU", stdout)
    assert gain and abs(float(gain.group(1)) - (miou["rc2l"] - miou["supervised"])) <= 0.011
    for name in ("supervised", "rc2l"):
        assert (out / name / "best.safetensors").exists() and (out / name / "last.safetensors").exists()
