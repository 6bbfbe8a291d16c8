"""`rc2l demo` at a tiny size: both runs finish, the table is printed, the picture and both
reports are written and their paths printed."""

from __future__ import annotations

import re

import pytest

from helpers import tiny_model_overrides
from infer_helpers import TorchSettings, cli

TINY_DEMO = [
    *tiny_model_overrides("resnet18"),
    "train.iters=2",
    "train.eval_every=2",
    "train.save_every=2",
    "train.warmup_iters=1",
    "train.threads=1",
    "train.progress=false",
    "data.split=1_4",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=2",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "semi.start_iter=0",
    "semi.rampup_iters=1",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny `rc2l demo` for every test here: (out folder, stdout)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    with TorchSettings():
        code, stdout, stderr = cli(["demo", "--out", str(out), *TINY_DEMO])
    assert code == 0, stderr[-2000:]
    return out, stdout


def test_demo_at_a_tiny_size_prints_the_table(demo_run):
    out, stdout = demo_run
    assert "== supervised: 2 steps, labels 1_4 of 8 synthetic images" in stdout
    assert "== rc2l: 2 steps" in stdout
    lines = stdout.splitlines()
    head = lines.index("| method | labeled | val mIoU (best) | model, step | final student | final teacher | minutes |")
    assert lines[head + 1] == "|---|---|---:|---|---:|---:|---:|"
    row = re.compile(
        r"\| (\w+) \| 1_4 \| (\d+\.\d\d) \| (student|teacher), (\d+) \| (\d+\.\d\d) \| "
        r"(\d+\.\d\d|–) \| \d+\.\d \|"
    )
    rows = [row.fullmatch(ln) for ln in lines[head + 2 : head + 4]]
    assert all(rows), lines[head + 2 : head + 4]
    assert [r.group(1) for r in rows] == ["supervised", "rc2l"]
    miou = {r.group(1): float(r.group(2)) for r in rows}
    assert all(0 <= v <= 100 for v in miou.values())
    assert rows[0].group(3) == "student" and rows[0].group(6) == "–"  # supervised-only has no teacher
    assert rows[1].group(6) != "–"
    gain = re.search(r"RC²L vs supervised-only with the same labels and budget: ([+-]\d+\.\d\d) mIoU", stdout)
    assert gain and abs(float(gain.group(1)) - (miou["rc2l"] - miou["supervised"])) <= 0.011
    for name in ("supervised", "rc2l"):
        assert (out / name / "best.safetensors").exists() and (out / name / "last.safetensors").exists()


def test_demo_writes_the_picture_and_both_reports(demo_run):
    from PIL import Image

    out, stdout = demo_run
    picture = out / "demo.png"
    assert f"picture: {picture}" in stdout
    with Image.open(picture) as im:  # 4 val images x (input, ground truth, supervised, rc2l)
        assert im.format == "PNG" and im.width > im.height > 0
    for name in ("supervised", "rc2l"):
        report = out / name / "report.html"
        assert f"report:  {report}" in stdout
        text = report.read_text(encoding="utf-8")
        assert "<html" in text.lower() and "gallery_000.png" in text
        assert (out / name / "report" / "gallery_000.png").is_file()


def test_a_second_demo_moves_the_first_aside(tmp_path):
    """`make demo` twice: the second starts afresh, the first run's files are kept aside."""
    out = tmp_path / "demo"
    few = [o for o in TINY_DEMO if not o.startswith("data.synthetic.num_val")] + ["data.synthetic.num_val=1"]
    with TorchSettings():
        for _ in range(2):
            code, _, stderr = cli(["demo", "--out", str(out), *few])
            assert code == 0, stderr[-2000:]
    for row in ("supervised", "rc2l"):
        assert len(list((out / row).glob("earlier-run-*/metrics.jsonl"))) == 1
