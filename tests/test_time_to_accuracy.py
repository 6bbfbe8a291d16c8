"""scripts/time_to_accuracy.py: minutes are rebuilt from the train records' it_s (a resume
included), the plotted mIoU is the better model per evaluation, and two runs share a figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "time_to_accuracy.py"


@pytest.fixture
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_run(
    folder: Path, method: str, it_s: float, evals: dict[int, tuple[float, float]], resume_at: int | None = None
):
    """A run logging every 10 steps at ``it_s`` to step 40; evals: step → (student, teacher)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"method: {method}\n")
    recs = [{"type": "start", "step": 0, "commit": "abc1234", "device": "cpu: Test CPU"}]
    for step in range(10, 41, 10):
        if step - 10 == resume_at:
            recs.append({"type": "start", "step": resume_at, "commit": "def5678", "device": "cpu: Test CPU"})
        recs.append({"type": "train", "step": step, "it_s": it_s, "loss": 1.0})
        if step in evals:
            for model, miou in zip(("student", "teacher"), evals[step]):
                recs.append({"step": step, "split": "val", "miou": miou, "model": model})
    lines = [json.dumps(r) for r in recs] + ["{cut off by a kil"]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_two_runs_minutes_best_model_and_figure(tta, tmp_path, capsys):
    fast = write_run(tmp_path / "fast", "supervised", 1.0, {20: (40.0, 0.0), 40: (50.0, 0.0)})
    slow = write_run(tmp_path / "slow", "rc2l", 0.5, {20: (30.0, 45.0), 40: (55.0, 60.0)}, resume_at=20)
    out = tmp_path / "fig" / "tta.png"
    assert tta.main([str(fast), str(slow), "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    a, b = tta.load_run(fast), tta.load_run(slow)
    # 10 steps at 1 it/s = 1/6 min per log interval; at 0.5 it/s twice that
    rounded = lambda run: [(s, round(m, 4), v) for s, m, v in run["evals"]]  # noqa: E731
    assert rounded(a) == [(20, round(20 / 60, 4), 40.0), (40, round(40 / 60, 4), 50.0)]
    assert rounded(b) == [(20, round(40 / 60, 4), 45.0), (40, round(80 / 60, 4), 60.0)]
    assert b["commit"] == "abc1234, def5678" and b["device"] == "cpu: Test CPU" and b["label"] == "slow (rc2l)"
    text = capsys.readouterr()
    assert "| slow (rc2l) | cpu: Test CPU | abc1234, def5678 | 40 | 1.3 | 60.00 | 1.3 |" in text.out
    assert "not valid JSON" in text.err


def test_minutes_between_and_past_train_records(tta):
    points = [(0, 0.0), (10, 1.0), (20, 3.0)]
    assert tta.minutes_at(points, 15) == pytest.approx(2.0)
    assert tta.minutes_at(points, 25) == pytest.approx(4.0)
    assert tta.minutes_at(points, 0) == 0.0


def test_label_count_must_match(tta, tmp_path):
    run = write_run(tmp_path / "r", "rc2l", 1.0, {20: (1.0, 2.0)})
    with pytest.raises(SystemExit, match="1 labels for 2 runs"):
        tta.main([str(run), str(run), "--out", str(tmp_path / "f.png"), "--label", "x"])
