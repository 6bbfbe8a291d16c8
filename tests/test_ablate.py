import json

import pytest

from rc2l.cli import main
from rc2l.engine.ablate import DEFAULT_ROWS, parse_rows

TINY = ["model.pretrained=none", "model.backbone=resnet18", "model.hidden_dim=32", "model.mask_dim=32",
        "model.num_queries=8", "model.dec_layers=2", "model.nheads=4", "model.dim_feedforward=64",
        "data.workers=0", "data.batch_size=2", "data.unlabeled_batch_size=2", "train.iters=2",
        "train.eval_every=2", "train.save_every=2", "train.threads=1", "data.split=1_4",
        "data.synthetic.num_train=8", "data.synthetic.num_val=2", "semi.start_iter=0"]


def test_rows_switch_the_right_terms():
    assert DEFAULT_ROWS["+RCC"] == ["method=rc2l", "semi.rmc=0", "semi.rfc=0", "semi.rcc=1", "semi.smc=0"]
    assert DEFAULT_ROWS["all four"] == ["method=rc2l", "semi.rmc=1", "semi.rfc=1", "semi.rcc=1", "semi.smc=1"]
    rows = parse_rows("supervised,+RMC", ["soft: semi.soft_masks=true semi.tau_cls=0.5"])
    assert list(rows) == ["supervised", "+RMC", "soft"]
    assert rows["soft"] == ["semi.soft_masks=true", "semi.tau_cls=0.5"]
    with pytest.raises(SystemExit):
        parse_rows("nope", [])


@pytest.mark.slow
def test_ablate_runs_rows_and_writes_table_and_plot(tmp_path):
    rc = main(["ablate", "configs/synthetic.yaml", *TINY, "--out", str(tmp_path), "--only", "supervised,+RCC"])
    assert rc == 0
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["row"] for r in rows] == ["supervised", "+RCC"]
    assert all(r["returncode"] == 0 and r["peak_rss_mib"] > 50 and "best_miou" in r for r in rows)
    assert rows[1]["final"].keys() == {"student", "teacher"}
    table = (tmp_path / "ablation.md").read_text()
    assert "| supervised |" in table and "| +RCC |" in table
    assert (tmp_path / "ablation.png").stat().st_size > 1000
