import json

import pytest

from rc2l.cli import main
from rc2l.engine.ablate import DEFAULT_ROWS, parse_rows

from helpers import SYNTHETIC, tiny_model_overrides

TINY = [
    *tiny_model_overrides("resnet18"),
    "data.workers=0",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "train.iters=2",
    "train.eval_every=2",
    "train.save_every=2",
    "train.threads=1",
    "data.split=1_4",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=2",
    "semi.start_iter=0",
]


def test_rows_switch_the_right_terms():
    assert DEFAULT_ROWS["+RCC"] == ["method=rc2l", "semi.rmc=0", "semi.rfc=0", "semi.rcc=1", "semi.smc=0"]
    assert DEFAULT_ROWS["all four"] == ["method=rc2l", "semi.rmc=1", "semi.rfc=1", "semi.rcc=1", "semi.smc=1"]
    rows = parse_rows("supervised,+RMC", ["soft: semi.soft_masks=true semi.tau_cls=0.5"])
    assert list(rows) == ["supervised", "+RMC", "soft"]
    assert rows["soft"] == ["semi.soft_masks=true", "semi.tau_cls=0.5"]
    with pytest.raises(SystemExit):
        parse_rows("nope", [])


@pytest.mark.slow
def test_ablate_runs_rows_writes_table_and_plot_and_continues_an_interrupted_ablation(tmp_path, monkeypatch):
    """The +RCC row was cut off at step 2 of 4 (Ctrl-C): running the ablation resumes it from its
    checkpoint instead of starting over; running it again keeps both finished rows; a changed
    command is refused instead of mixed into the old rows."""
    import signal

    from rc2l.config import load_config
    from rc2l.engine.methods import RC2L
    from rc2l.engine.train import train

    from reliability_helpers import TorchSettings

    args = [SYNTHETIC, *TINY, "train.iters=4", "train.eval_every=4"]
    real = RC2L.step

    def stop_at_2(self, batch_l, batch_u, step):
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return real(self, batch_l, batch_u, step)

    monkeypatch.setattr(RC2L, "step", stop_at_2)
    with TorchSettings():
        cut = train(load_config(args[0], [*args[1:], *DEFAULT_ROWS["+RCC"], f"out_dir={tmp_path / 'plus_RCC'}"]))
    assert cut == {"interrupted": True, "step": 2}
    monkeypatch.setattr(RC2L, "step", real)

    assert main(["ablate", *args, "--out", str(tmp_path), "--only", "supervised,+RCC"]) == 0
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["row"] for r in rows] == ["supervised", "+RCC"]
    assert all(r["returncode"] == 0 and r["peak_rss_mib"] > 50 and "best_miou" in r for r in rows)
    assert rows[1]["final"].keys() == {"student", "teacher"}
    assert [r["resumed_at"] for r in rows] == [None, 2]
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "plus_RCC" / "metrics.jsonl").read_text().splitlines()
        if '"type": "train"' in x
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # continued, not restarted
    table = (tmp_path / "ablation.md").read_text()
    assert "| supervised |" in table and "(resumed at step 2)" in table
    assert (tmp_path / "ablation.png").stat().st_size > 1000

    logs = {p: p.read_bytes() for p in tmp_path.glob("*/metrics.jsonl")}
    assert main(["ablate", *args, "--out", str(tmp_path), "--only", "supervised,+RCC"]) == 0
    assert {p: p.read_bytes() for p in logs} == logs  # nothing ran again
    assert json.loads((tmp_path / "ablation.json").read_text()) == rows
    with pytest.raises(SystemExit, match=r"row 'supervised' was run with another config \(differs in: train\.iters\)"):
        main(["ablate", *args, "train.iters=6", "--out", str(tmp_path), "--only", "supervised,+RCC"])
