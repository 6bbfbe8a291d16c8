"""`rc2l eval` reproduces the training loop's own evaluation of the same weights."""

import json

from rc2l.cli import main

from helpers import SYNTHETIC, tiny_model_overrides

TINY = [
    *tiny_model_overrides("resnet18"),
    "data.workers=0",
    "data.batch_size=2",
    "data.split=full",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=3",
    "train.threads=1",
]


def test_eval_matches_training_eval_and_writes_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            ["train", SYNTHETIC, *TINY, "train.iters=3", "train.eval_every=3", "train.progress=false", f"out_dir={run}"]
        )
        == 0
    )
    final = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"miou"' in l][-1]
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", SYNTHETIC, *TINY, "--weights", str(run / "last.safetensors"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dataset synthetic | split val (3 images) | eval mode original | crop 64x64" in printed
    assert "mIoU" in printed
    res = json.loads(out.read_text())
    assert abs(res["miou"] - final["miou"]) < 1e-6
    assert set(res["per_class"]) == {"background", "disc", "square", "triangle", "ring"}
    assert res["mode"] == "original" and res["split"] == "val" and res["crop"] == [64, 64]
    assert main(["eval", SYNTHETIC, *TINY, "--weights", str(run / "last.safetensors"), "--mode", "sliding_window"]) == 0
    assert "eval mode sliding_window" in capsys.readouterr().out
