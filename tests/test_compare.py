"""`rc2l compare`: rows × seeds, mean ± std of final and best mIoU, paired differences."""

import json
from pathlib import Path

import pytest

from rc2l.cli import main
from rc2l.engine.compare import STUDY_ROWS, mean_std, parse_rows, table

from helpers import tiny_model_overrides

REPO = Path(__file__).resolve().parents[1]

TINY = [
    *tiny_model_overrides("resnet18"),
    "data.workers=0",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "train.iters=2",
    "train.eval_every=1",
    "train.save_every=2",
    "train.threads=1",
    "data.split=1_4",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=2",
    "semi.start_iter=0",
]


def test_table_means_stds_and_paired_differences():
    runs = [
        {
            "row": "supervised",
            "seed": s,
            "final_miou": v,
            "final_model": "student",
            "best_miou": v + 1,
            "best_model": "student",
            "wall_s": 60,
            "it_s_median": 0.5,
        }
        for s, v in ((0, 50.0), (1, 52.0))
    ]
    runs += [
        {
            "row": "rc2l",
            "seed": s,
            "final_miou": v,
            "final_model": "teacher",
            "best_miou": v,
            "best_model": "teacher",
            "wall_s": 120,
            "it_s_median": 0.25,
        }
        for s, v in ((0, 53.0), (1, 53.0))
    ]
    text = table(runs, "supervised", "t")
    sup = next(line for line in text.splitlines() if line.startswith("| supervised"))
    rc2l = next(line for line in text.splitlines() if line.startswith("| rc2l"))
    assert "51.00 ± 1.41" in sup and "52.00 ± 1.41" in sup  # final and best over the two seeds
    assert "| 2.00 ± 1.41 |" in rc2l  # paired: +3 on seed 0, +1 on seed 1
    assert "teacher" in rc2l and "| 2.0 |" in rc2l and "0.250" in rc2l
    assert mean_std([]) == "–" and mean_std([3.0]) == "3.00 ± 0.00"


def test_every_study_row_is_a_valid_config():
    from rc2l.config import load_config

    cfgs = {name: load_config(REPO / "configs" / "camvid.yaml", ov) for name, ov in STUDY_ROWS.items()}
    assert cfgs["unimatch τ0.7"].semi.unimatch.threshold == 0.7 and cfgs["unimatch"].semi.unimatch.threshold == 0.95
    assert cfgs["fixmatch τ0.7"].semi.fixmatch_threshold == 0.7


def test_study_rows_and_parse():
    assert STUDY_ROWS["unimatch (deeplabv3plus)"] == ["method=unimatch", "model.arch=deeplabv3plus"]
    assert "fixmatch τ0.7" in STUDY_ROWS and "rc2l region terms only" in STUDY_ROWS
    assert list(parse_rows(None, ["a: method=supervised"])) == ["a"]
    with pytest.raises(SystemExit):
        parse_rows(None, [])


@pytest.mark.slow
def test_compare_runs_rows_times_seeds_and_continues(tmp_path, capsys):
    args = [
        "compare",
        "configs/synthetic.yaml",
        *TINY,
        "--out",
        str(tmp_path),
        "--seeds",
        "0",
        "1",
        "--row",
        "supervised: method=supervised",
        "--row",
        "unimatch: method=unimatch semi.unimatch.threshold=0",
    ]
    assert main(args) == 0
    runs = json.loads((tmp_path / "compare.json").read_text())
    assert [(r["row"], r["seed"]) for r in runs] == [
        ("supervised", 0),
        ("supervised", 1),
        ("unimatch", 0),
        ("unimatch", 1),
    ]
    assert all(r["returncode"] == 0 and r["final_step"] == 2 and set(r["curve"]) == {"1", "2"} for r in runs)
    assert runs[0]["final_miou"] != runs[1]["final_miou"] or runs[0]["curve"] != runs[1]["curve"]  # seeds differ
    md = (tmp_path / "compare.md").read_text()
    assert "± " in md and (tmp_path / "compare.png").stat().st_size > 0
    assert (tmp_path / "unimatch" / "seed1" / "last.safetensors").exists()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished before, kept") == 4
