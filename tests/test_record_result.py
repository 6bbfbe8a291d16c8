"""scripts/record_result.py: rows are read from a run folder, never typed; --table renders them."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "record_result.py"


def _run_folder(tmp_path: Path, iters: int = 400) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = {
        "data": {"name": "camvid", "split": "1_8"},
        "method": "rc2l",
        "train": {"iters": iters},
        "model": {"backbone": "efficientnet_lite0"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    recs = [
        {"step": 25, "type": "train", "it_s": 0.4},
        {"step": 200, "split": "val", "mode": "original", "miou": 50.0, "model": "student"},
        {
            "step": 400,
            "split": "val",
            "mode": "original",
            "miou": 52.5,
            "model": "teacher",
            "per_class": [90.0 + i for i in range(10)] + [12.345],
        },
        {"step": 400, "split": "val", "mode": "original", "miou": 51.0, "model": "student"},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return run


def test_record_then_table(tmp_path):
    run, out = _run_folder(tmp_path), tmp_path / "results.json"
    for _ in range(2):  # the same command twice keeps one row
        subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                str(run),
                "--command",
                "rc2l train x",
                "--note",
                "rc2l row",
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    assert (rows[0]["miou"], rows[0]["model_evaluated"], rows[0]["best_step"]) == (52.5, "teacher", 400)
    assert rows[0]["final"] == {"teacher": 52.5, "student": 51.0}
    # the best evaluation's per-class IoU, named by the dataset's classes (CamVid's 11)
    assert list(rows[0]["per_class"].items())[:2] == [("sky", 90.0), ("building", 91.0)]
    assert rows[0]["per_class"]["bicyclist"] == 12.345
    md = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", "camvid:1_8", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| rc2l row | 52.50 | teacher, 400 | 51.00 / 52.50 | `rc2l train x` |" in md
    pc = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", "camvid:1_8", "--per-class", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| class | rc2l row (teacher, 400) |" in pc and "| pole | 92.0 |" in pc
    curves = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", "camvid:1_8", "--curves", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| run | 200 | 400 |" in curves and "| rc2l row | 50.0 / – | 51.0 / 52.5 |" in curves
    for other in (["camvid:1_4"], ["camvid:1_8", "--iters", "600"]):  # another split, another schedule: header only
        assert (
            subprocess.run(
                [sys.executable, str(SCRIPT), "--table", *other, "--out", str(out)], capture_output=True, text=True
            ).stdout.count("\n")
            == 2
        )


def test_rows_from_another_machine_and_stopped_runs(tmp_path):
    """--machine/--commit describe a run made elsewhere; the same command on two machines keeps
    two rows; --where picks one machine's rows; a run stopped early says where."""
    run, out = _run_folder(tmp_path, iters=600), tmp_path / "results.json"
    rec = [sys.executable, str(SCRIPT), str(run), "--command", "rc2l train x", "--out", str(out)]
    subprocess.run(rec, check=True, capture_output=True)
    subprocess.run(rec + ["--machine", "H100 cuda", "--commit", "abc1234"], check=True, capture_output=True)
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and rows[1]["machine"] == "H100 cuda" and rows[1]["commit"] == "abc1234"
    assert rows[1]["last_eval_step"] == 400 and rows[1]["iters"] == 600
    md = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", "camvid:1_8", "--where", "H100", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert md.count("\n") == 3 and "(stopped: last evaluated at step 400 of 600)" in md


def test_commit_comes_from_the_runs_own_start_records(tmp_path):
    """The trainer writes a start record (with its commit and device) at every start and resume:
    the row's commit and machine are read from there, naming a resume that ran other code; --commit still overrides."""
    run, out = _run_folder(tmp_path), tmp_path / "results.json"
    starts = [
        {"type": "start", "step": 0, "commit": "aaa1111", "device": "cpu: AMD EPYC"},
        {"type": "start", "step": 200, "commit": "aaa1111", "device": "cpu: Intel Xeon"},
        {"type": "start", "step": 300, "commit": "bbb2222+dirty"},
    ]
    with open(run / "metrics.jsonl", "a") as f:
        f.write("\n".join(json.dumps(r) for r in starts) + "\n")
    rec = [sys.executable, str(SCRIPT), str(run), "--command", "rc2l train x", "--out", str(out)]
    subprocess.run(rec, check=True, capture_output=True)
    row = json.loads(out.read_text())[0]
    assert row["commit"] == "aaa1111, resumed at bbb2222+dirty"
    assert row["machine"] == "AMD EPYC (cpu)"  # where the run started, as its own record says
    subprocess.run(rec + ["--commit", "ccc3333"], check=True, capture_output=True)
    assert json.loads(out.read_text())[0]["commit"] == "ccc3333"


def test_seeds_table_over_recorded_compare_rows(tmp_path):
    """--seeds builds compare's table from docs/results.json, where the seeds of one study row
    land from different folders and sessions: mean ± std, paired differences, one record per
    (row, seed) (the later wins), only the asked labels, and the band plot."""

    def row(name, seed, final, best, labels="native", **extra):
        return {
            "dataset": "camvid",
            "split": "1_8",
            "iters": 2000,
            "machine": "cpu",
            "seed": seed,
            "miou": best,
            "model_evaluated": "teacher",
            "final": {"student": final - 1, "teacher": final},
            "history": {"student": {"250": 40.0, "2000": final - 1}, "teacher": {"250": 41.0, "2000": final}},
            "eval_labels": labels,
            "note": f"compare row '{name}'",
            **extra,
        }

    rows = [
        row("rc2l", 0, 60.0, 61.0),  # replaced below by the later record of the same seed
        row("supervised", 0, 55.0, 56.0, wall_s=600.0),
        row("supervised", 1, 57.0, 58.0, wall_s=1200.0),
        row("rc2l", 0, 62.0, 62.5),
        row("rc2l", 1, 62.0, 62.5),
        row("rc2l", 2, 99.0, 99.0, labels="resized"),
    ]
    out, fig = tmp_path / "results.json", tmp_path / "seeds.png"
    out.write_text(json.dumps(rows))
    cmd = [sys.executable, str(SCRIPT), "--seeds", "camvid:1_8", "--labels", "native", "--out", str(out)]
    md = subprocess.run(cmd + ["--plot", str(fig)], check=True, capture_output=True, text=True).stdout
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "seeds" not in ln}
    assert list(lines) == ["supervised", "rc2l"]  # the study's row order
    assert "| 0,1 | 56.00 ± 1.41 | teacher | 57.00 ± 1.41 | teacher | – | 15.0 |" in lines["supervised"]
    assert "| 0,1 | 62.00 ± 0.00 |" in lines["rc2l"] and "| 6.00 ± 1.41 | – |" in lines["rc2l"]  # +7 and +5
    assert fig.stat().st_size > 0
    empty = subprocess.run(cmd[:3] + ["camvid:1_4", "--out", str(out)], capture_output=True, text=True)
    assert empty.returncode != 0 and "no recorded compare row of camvid:1_4" in empty.stderr


def test_compare_folder_recorded_inside_or_outside_the_study(tmp_path):
    """--compare records each finished run with its wall time; --outside-study keeps a check that
    reruns a study row (a speed pair) out of the --seeds table, where it would replace that seed."""
    run = _run_folder(tmp_path)
    folder = tmp_path / "cmp"
    folder.mkdir()
    done = {"returncode": 0, "final_miou": 52.5, "run_dir": str(run), "wall_s": 123.44, "command": "-m rc2l train x"}
    (folder / "compare.json").write_text(json.dumps([{**done, "row": "rc2l"}, {"row": "stopped", "returncode": -15}]))
    base = [sys.executable, str(SCRIPT), "--compare", str(folder)]
    study, check = tmp_path / "study.json", tmp_path / "check.json"
    subprocess.run(base + ["--out", str(study)], check=True, capture_output=True)
    subprocess.run(base + ["--outside-study", "--out", str(check)], check=True, capture_output=True)
    (s,), (c,) = json.loads(study.read_text()), json.loads(check.read_text())
    assert s["compare_row"] == "rc2l" and s["wall_s"] == 123.4 and s["command"] == "rc2l train x"
    assert c["check_row"] == "rc2l" and "compare_row" not in c and c["wall_s"] == 123.4
    assert "compare row" not in c["note"]
    seeds = [sys.executable, str(SCRIPT), "--seeds", "camvid:1_8"]
    assert subprocess.run(seeds + ["--out", str(study)], capture_output=True).returncode == 0
    missing = subprocess.run(seeds + ["--out", str(check)], capture_output=True, text=True)
    assert missing.returncode != 0 and "no recorded compare row" in missing.stderr


def test_fair_table_chooses_by_the_final_student_at_seed_0_and_pairs_like_devices(tmp_path):
    """--fair: each rival's entry is its candidate with the best final-step student at seed 0 (not
    the teacher, not the best evaluation); its seeds are paired with the supervised row of its
    model and with rc2l only where both ran on the same device kind; rows run before the protocol
    count as tried; rc2l's count is its seed-less tuning rows; a rival with candidates still to
    run is marked provisional."""
    from rc2l.engine.compare import FAIR_RIVALS

    def row(name, seed, student, teacher=None, best=None, machine="EPYC (cpu)"):
        final = {"student": student, **({"teacher": teacher} if teacher is not None else {})}
        return {
            "dataset": "camvid",
            "split": "1_8",
            "iters": 2000,
            "method": "x",
            "machine": machine,
            "seed": seed,
            "miou": best or max(final.values()),
            "model_evaluated": "student",
            "best_step": 2000,
            "final": final,
            "eval_labels": "native",
            "compare_row": name,
        }

    m1, m2, m3, m4 = FAIR_RIVALS["unimatch"]["candidates"][1:]
    rows = [
        *(row("supervised", s, 50.0 + s) for s in range(3)),
        *(row("rc2l", s, 54.0 + s, teacher=70.0) for s in range(3)),
        row("unimatch", 0, 49.0, best=80.0),  # the best evaluation does not choose
        row(m1, 0, 51.0),
        row(m2, 0, 52.0),  # chosen: the best final student at seed 0
        row(m3, 0, 48.0, teacher=90.0),  # the teacher does not choose either
        row(m4, 0, 45.0),
        row(m2, 1, 52.0),
        row(m2, 2, 56.0, machine="H100 (cuda)"),  # not paired with the CPU rows
        {**row("rc2l", None, 99.0), "method": "rc2l"},  # two tuning runs of rc2l
        {**row("rc2l", None, 99.0), "method": "rc2l"},
        row("supervised (deeplabv3plus)", 0, 40.0),
        row(FAIR_RIVALS["supervised, DeepLabv3+"]["candidates"][0], 0, 45.0),
    ]
    out = tmp_path / "results.json"
    out.write_text(json.dumps(rows))
    cmd = [sys.executable, str(SCRIPT), "--fair", "camvid:1_8", "--iters", "2000", "--out", str(out)]
    md = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    table = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in md.splitlines()[-5:]}
    uni = table["unimatch"]
    assert uni[:3] == ["5", m2, "0,1,2"]
    assert uni[3] == f"{(52 + 52 + 56) / 3:.2f} ± {statistics.stdev([52, 52, 56]):.2f}"
    assert uni[5] == "1.50 ± 0.71 (seeds 0,1)"  # 52 − 50, 52 − 51; seed 2 ran on a GPU
    assert uni[6] == "2.50 ± 0.71 (seeds 0,1)"  # rc2l 54, 55
    assert table["rc2l"][:4] == ["2", "rc2l", "0,1,2", "55.00 ± 1.00 (teacher 70.00 ± 0.00)"]
    sup_dl = table["supervised, DeepLabv3+"]
    assert sup_dl[0] == "2" and sup_dl[1].endswith("(provisional: 1 of 4 run)")
    assert table["unimatch, DeepLabv3+"][:2] == ["1", "not run"]
    assert f"| unimatch | {m2} | 52.00 ← chosen |" in md and md.count("← chosen") == 2
