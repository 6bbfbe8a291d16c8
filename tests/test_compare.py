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
    assert mean_std([]) == "–" and mean_std([3.0]) == "3.00"
    runs[2]["machine"], runs[3]["machine"] = "Intel Xeon, 2 threads (cpu)", "NVIDIA H200 (cuda)"
    runs[3].update(wall_s=30, it_s_median=4.0)
    rc2l = next(line for line in table(runs, "supervised", "t").splitlines() if line.startswith("| rc2l"))
    assert "| CPU 2.0; GPU 0.5 | CPU 0.250; GPU 4.000 |" in rc2l  # never one mean over both devices


def test_every_study_row_is_a_valid_config():
    from rc2l.config import load_config

    cfgs = {name: load_config(REPO / "configs" / "camvid.yaml", ov) for name, ov in STUDY_ROWS.items()}
    assert cfgs["unimatch τ0.7"].semi.unimatch.threshold == 0.7 and cfgs["unimatch"].semi.unimatch.threshold == 0.95
    assert cfgs["fixmatch τ0.7"].semi.fixmatch_threshold == 0.7


def test_fair_grid_is_four_valid_configurations_per_rival():
    """The declared grid: four configurations for each rival, the first of the UniMatch ones
    being its driving-scene recipe, every row a valid config; the same keys as the preset file."""
    from collections import Counter

    from rc2l.config import load_config
    from rc2l.engine.compare import FAIR_ROWS

    cfgs = {name: load_config(REPO / "configs" / "camvid.yaml", ov) for name, ov in FAIR_ROWS.items()}
    rival = Counter(name.split()[0] for name in cfgs)
    assert rival == {"unimatch": 4, "unimatch-dl": 4, "supervised-dl": 4}
    m1, d1 = cfgs["unimatch M1 driving"], cfgs["unimatch-dl D1 driving ohem"]
    assert (m1.method, m1.train.optimizer, m1.semi.unimatch.threshold, m1.model.arch) == (
        "unimatch",
        "sgd",
        0.0,
        "maskformer",
    )
    assert (d1.model.arch, d1.loss.pixel_sup, d1.model.aspp_rates) == ("deeplabv3plus", "ohem", [2, 4, 6])
    driving = load_config(REPO / "configs" / "camvid_unimatch_driving.yaml", ["data.split=full"])
    assert driving.train == m1.train and driving.semi == m1.semi
    assert all(c.model.arch == "deeplabv3plus" for n, c in cfgs.items() if "-dl " in n)
    assert len({str(ov) for ov in FAIR_ROWS.values()}) == len(FAIR_ROWS)  # no row twice
    assert parse_rows("fair", []) == FAIR_ROWS


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


def test_jobs_run_side_by_side_with_a_share_of_the_cores_and_the_folder_keeps_other_runs(tmp_path, monkeypatch):
    """--jobs 2 starts two runs before either ends (a barrier both must reach), gives each half the
    cores, records the job count; a later command on the same --out keeps the runs it did not plan."""
    import os
    import threading

    import rc2l.engine.compare as compare

    barrier, seen = threading.Barrier(2, timeout=20), []

    def fake_run_row(config, overrides, out_dir, log_path, on_start=None):
        seen.append(overrides)
        barrier.wait()  # raises BrokenBarrierError if the two runs were not in flight at once
        seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
        rec = {"step": 2, "split": "val", "mode": "original", "model": "student", "miou": 50.0 + seed}
        (out_dir / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
        (out_dir / "last.safetensors").write_bytes(b"")
        return {"wall_s": 1.0, "peak_rss_mib": 1.0, "returncode": 0, "command": "train"}

    monkeypatch.setattr(compare, "run_row", fake_run_row)
    monkeypatch.setattr(compare, "check_row_folder", lambda *a: None)
    out = str(tmp_path / "out")
    base = ["compare", "configs/synthetic.yaml", "--out", out, "--row", "a: method=supervised"]
    assert main([*base, "--seeds", "0", "1", "--jobs", "2"]) == 0
    share = f"train.threads={max(1, (os.cpu_count() or 1) // 2)}"
    assert len(seen) == 2 and all(share in o for o in seen)
    runs = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [(r["row"], r["seed"], r["jobs"]) for r in runs] == [("a", 0, 2), ("a", 1, 2)]  # plan order
    barrier = threading.Barrier(1)
    assert main([*base, "--seeds", "2", "--row", "b: method=fixmatch", "--only", "b"]) == 0
    assert "train.threads=" not in " ".join(seen[-1])  # one job: the config's own threads
    runs = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [(r["row"], r["seed"]) for r in runs] == [("a", 0), ("a", 1), ("b", 2)]
    assert "| a | 0,1 |" in (tmp_path / "out" / "compare.md").read_text()
    with pytest.raises(SystemExit, match="--jobs 0"):
        main([*base, "--jobs", "0"])


def _log_steps(run_dir: Path, step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": step, "loss": 1.0}) + "\n")


def test_budget_admits_a_run_only_while_every_run_is_projected_to_finish(tmp_path, monkeypatch):
    """Rates come from the runs' own logged steps; one more run slows each by n/(n+1)."""
    import rc2l.engine.compare as compare

    clock = [1000.0]
    monkeypatch.setattr(compare.time, "time", lambda: clock[0])
    budget = compare.Budget(600, first_wave=2)
    a, b = tmp_path / "a", tmp_path / "b"
    assert budget.admits({}, 1000)  # nothing runs: start one
    assert budget.admits({a: 1000}, 1000)  # the first wave starts before any rate is known
    _log_steps(a, 25)
    _log_steps(b, 25)
    assert not budget.admits({a: 1000, b: 1000}, 100)  # first sight of each run: no rate yet
    clock[0] += 30
    _log_steps(a, 175)  # 5 steps/s
    _log_steps(b, 85)  # 2 steps/s; 570 s left, 10 % kept spare: 513 s
    assert not budget.admits({a: 1000, b: 1000}, 100)  # b: 915 left / (2 × 2/3) = 686 s
    assert budget.admits({a: 1000, b: 300}, 400)  # a: 247 s, b: 161 s, new: 400 / 1.33 + 45 = 345 s
    assert not budget.admits({a: 1000, b: 300}, 1000)  # the new one, at the slowest rate: 795 s
    clock[0] += 530
    assert not budget.admits({}, 10)  # 40 s left: less than a run's start-up


def test_budget_end_stops_running_runs_and_lists_them_apart(tmp_path, monkeypatch, capsys):
    """At the deadline a running run gets SIGTERM, is kept out of the table and of 'finished'; a run
    never started is named; the next command continues the stopped one."""
    import signal
    import threading

    import rc2l.engine.compare as compare

    def fake_run_row(config, overrides, out_dir, log_path, on_start=None):
        stop = threading.Event()

        class Proc:
            def poll(self):
                return 0 if stop.is_set() else None

            def send_signal(self, sig):
                assert sig == signal.SIGTERM
                stop.set()

        on_start(Proc())
        rec = {"step": 1, "split": "val", "mode": "original", "model": "student", "miou": 40.0}
        (out_dir / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
        (out_dir / "last.safetensors").write_bytes(b"")
        assert stop.wait(30)
        return {"wall_s": 1.0, "peak_rss_mib": 1.0, "returncode": 0, "command": "train"}

    monkeypatch.setattr(compare, "run_row", fake_run_row)
    monkeypatch.setattr(compare, "check_row_folder", lambda *a: None)
    monkeypatch.setattr(compare.Budget, "STARTUP_S", 0.0)
    out = tmp_path / "out"
    args = ["compare", "configs/synthetic.yaml", "train.iters=4", "--out", str(out), "--row", "a: method=supervised"]
    assert main([*args, "--run", "a:3", "--run", "a:1", "--budget", "2"]) == 1
    text = capsys.readouterr().out
    assert "not started: a:1" in text and "a, seed 3: stopped at step 0 (--budget)" in text
    runs = json.loads((out / "compare.json").read_text())
    assert [(r["row"], r["seed"], r["stopped_at"]) for r in runs] == [("a", 3, 0)] and "final_miou" not in runs[0]
    assert "| a |" not in (out / "compare.md").read_text()
    with pytest.raises(SystemExit, match="ROW:SEED"):
        main([*args, "--run", "b:1"])


def test_a_continued_run_reports_the_wall_time_of_all_its_parts_or_none(tmp_path, monkeypatch):
    """A run stopped (SIGTERM, a lost session) and continued by a later command: the process that
    finishes it saw one part. The row takes the trainer's own total (its 'end' record); a run
    without one gets no wall time rather than that part's."""
    import rc2l.engine.compare as compare

    def fake_run_row(config, overrides, out_dir, log_path, on_start=None):
        seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
        recs = [
            {"type": "start", "step": 0},
            {"type": "start", "step": 5},  # continued from step 5
            {"step": 10, "split": "val", "mode": "original", "model": "student", "miou": 50.0},
        ]
        if seed == 1:
            recs.append({"type": "end", "step": 10, "wall_s": 300.0, "wall_s_this_part": 100.0})
        (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (out_dir / "last.safetensors").write_bytes(b"")
        return {"wall_s": 100.0, "peak_rss_mib": 1.0, "returncode": 0, "command": "train"}

    monkeypatch.setattr(compare, "run_row", fake_run_row)
    monkeypatch.setattr(compare, "check_row_folder", lambda *a: None)
    out = tmp_path / "out"
    args = ["compare", "configs/synthetic.yaml", "--out", str(out), "--row", "a: method=supervised"]
    assert main([*args, "--seeds", "0", "1"]) == 0
    runs = json.loads((out / "compare.json").read_text())
    assert [(r["seed"], r["resumed_at"], r["wall_s"], r["wall_s_this_part"]) for r in runs] == [
        (0, 5, None, 100.0),
        (1, 5, 300.0, 100.0),
    ]
    assert "| 5.0 |" in (out / "compare.md").read_text()  # the known total only: 300 s
