"""Append a measured result to docs/results.json from a finished run folder.

    python scripts/record_result.py RUN_DIR --command "rc2l train ..." [--note TEXT]
    python scripts/record_result.py --table camvid:1_8 [--where H100] [--iters 1500] [--per-class | --curves]  # markdown for docs/results.md
    python scripts/record_result.py RUN_DIR --command ... --machine "H100 (cuda)" --commit abc1234  # made elsewhere
    python scripts/record_result.py --compare OUT_DIR  # every finished run of an `rc2l compare` folder
    python scripts/record_result.py --seeds camvid:1_8 --iters 2000 [--plot FIG.png]  # compare's table over every recorded seed
    python scripts/record_result.py --fair camvid:1_8 --iters 2000  # the fair fight: tuning rows, then each rival's entry

The row is read from the run itself (config.yaml, metrics.jsonl), never typed by hand: the
best evaluation (student or teacher), its step, its per-class IoU, every evaluation's mIoU, the dataset,
split and eval mode."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import yaml

from rc2l.engine.metrics_log import read_records
from rc2l.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]


def round1(seconds: float | None) -> float | None:
    """A wall time as recorded: tenths of a second, or None where it is unknown."""
    return None if seconds is None else round(seconds, 1)


def run_commits(records: list[dict]) -> str | None:
    """The commit(s) the run's own start records name, in order ("a, resumed at b" when a resume
    ran other code); None for runs made before the trainer wrote them."""
    seen = list(dict.fromkeys(r["commit"] for r in records if r.get("type") == "start" and r.get("commit")))
    return ", resumed at ".join(seen) or None


def run_device(records: list[dict], threads: int | None) -> str | None:
    """Where the run says it ran (its first start record), e.g. "AMD EPYC, 2 threads (cpu)"."""
    dev = next((r["device"] for r in records if r.get("type") == "start" and r.get("device")), None)
    if dev is None:
        return None
    kind, _, name = dev.partition(": ")
    return f"{name}, {threads} threads ({kind})" if kind == "cpu" and threads else f"{name} ({kind})"


def labeled_count(run: Path) -> int | None:
    from rc2l.config import load_config
    from rc2l.data.build import build_datasets

    try:
        return len(build_datasets(load_config(run / "config.yaml"))["labeled"])
    except Exception:  # noqa: BLE001 — a count is a convenience; the row stays valid without it
        return None


def class_names(run: Path, n: int) -> list[str]:
    """The dataset's class names (from the run's config; a reader's fixed names when its root is
    not on this machine), or "class i" when they cannot be had."""
    from rc2l.config import load_config
    from rc2l.data.build import dataset_info
    from rc2l.data.datasets import READERS

    try:
        names = dataset_info(load_config(run / "config.yaml")).class_names
    except Exception:  # noqa: BLE001 — names are labels for the numbers, which stay valid without them
        name = (yaml.safe_load((run / "config.yaml").read_text()).get("data") or {}).get("name")
        names = list(getattr(READERS.get(name), "class_names", []))
    return names if len(names) == n else [f"class {i}" for i in range(n)]


def select(rows: list[dict], dataset: str, split: str, machine: str = "", iters: int | None = None) -> list[dict]:
    """The recorded rows of one dataset and split, on machines whose description contains
    ``machine``, and of one schedule (``iters``) when given, in the order they were recorded."""
    return [
        r
        for r in rows
        if r["dataset"] == dataset
        and r["split"] == split
        and machine in r.get("machine", "")
        and iters in (None, r["iters"])
    ]


def table(rows: list[dict]) -> str:
    """Markdown rows (note, method, best mIoU and its model and step, final student/teacher,
    command). A run stopped before its last evaluation says where it was last evaluated."""
    out = ["| run | val mIoU (best) | model, step | final student / teacher | command |", "|---|---:|---|---|---|"]
    for r in rows:
        fin = " / ".join(f"{r['final'][m]:.2f}" for m in ("student", "teacher") if m in r["final"])
        done = r.get("last_eval_step", r["iters"])
        stopped = f" (stopped: last evaluated at step {done} of {r['iters']})" if done < r["iters"] else ""
        out.append(
            f"| {r['note'] or r['method']}{stopped} | {r['miou']:.2f} | {r['model_evaluated']}, {r['best_step']} "
            f"| {fin} | `{r['command']}` |"
        )
    return "\n".join(out)


def per_class_table(rows: list[dict]) -> str:
    """Markdown: one line per class, one column per row with per-class IoU, each at its best
    evaluation."""
    rows = [r for r in rows if r.get("per_class")]
    if not rows:
        return "(no recorded row with per-class IoU)"
    head = [f"{r['note'] or r['method']} ({r['model_evaluated']}, {r['best_step']})" for r in rows]
    out = ["| class | " + " | ".join(head) + " |", "|---|" + "---:|" * len(rows)]
    for c in rows[0]["per_class"]:
        out.append(
            f"| {c} | " + " | ".join(f"{r['per_class'][c]:.1f}" if c in r["per_class"] else "–" for r in rows) + " |"
        )
    return "\n".join(out)


def curves_table(rows: list[dict]) -> str:
    """Markdown: val mIoU (student / teacher) of each row at every evaluation step."""
    rows = [r for r in rows if r.get("history")]
    if not rows:
        return "(no recorded row with its evaluation history)"
    steps = sorted({int(s) for r in rows for h in r["history"].values() for s in h})
    out = ["| run | " + " | ".join(map(str, steps)) + " |", "|---|" + "---|" * len(steps)]
    for r in rows:
        models = [m for m in ("student", "teacher") if m in r["history"]]
        cells = [
            " / ".join(f"{r['history'][m][str(s)]:.1f}" if str(s) in r["history"][m] else "–" for m in models)
            for s in steps
        ]
        out.append(f"| {r['note'] or r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def row_name(r: dict) -> str:
    """The `rc2l compare` row a record belongs to ("" for a run made outside one)."""
    return r.get("compare_row") or (r.get("note") or "").partition("compare row '")[2].rpartition("'")[0]


def fair_table(rows: list[dict], tuned_rc2l: int) -> str:
    """Markdown: the fair fight's tuning rows (each rival's candidates at seed 0, final-step
    student) and its table: each rival's entry over its seeds, paired by seed with the supervised
    row of its model and with rc2l, pairing runs of the same device kind only. ``rows``: the
    records of one dataset, split and schedule; ``tuned_rc2l``: rc2l's tuning runs on val."""
    from rc2l.engine.compare import FAIR_RIVALS, device_kind, mean_std

    runs = {(row_name(r), r["seed"]): r for r in rows if row_name(r) and r.get("seed") is not None}

    def student(name: str, seed: int) -> float:
        return runs[(name, seed)]["final"]["student"]

    def paired(a: str | None, b: str | None) -> str:
        seeds = [
            s for (n, s) in runs if n == a and (b, s) in runs and device_kind(runs[(a, s)]) == device_kind(runs[(b, s)])
        ]
        if not seeds:
            return "–"
        return f"{mean_std([student(a, s) - student(b, s) for s in seeds])} (seeds {','.join(map(str, sorted(seeds)))})"

    tuning = [
        "| rival | configuration | final student, seed 0 | best (model, step) | machine |",
        "|---|---|---:|---|---|",
    ]
    ran = {rival: [n for n in spec["candidates"] if (n, 0) in runs] for rival, spec in FAIR_RIVALS.items()}
    entry = {rival: max(r, key=lambda n: student(n, 0)) if r else None for rival, r in ran.items()}
    for rival, spec in FAIR_RIVALS.items():
        if len(spec["candidates"]) == 1:
            continue
        for n in spec["candidates"]:
            r = runs.get((n, 0))
            cells = (
                [
                    f"{student(n, 0):.2f}" + (" ← chosen" if n == entry[rival] else ""),
                    f"{r['miou']:.2f} ({r['model_evaluated']}, {r['best_step']})",
                    r.get("machine") or "?",
                ]
                if r
                else ["not run", "", ""]
            )
            tuning.append(f"| {rival} | {n} | " + " | ".join(cells) + " |")
    table = [
        "| method | configurations tried on val | entry (chosen at seed 0) | seeds | final step, student | best evaluation | vs supervised of its model, paired | rc2l − it, paired |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for rival, spec in FAIR_RIVALS.items():
        win, n_ran, n_all = entry[rival], len(ran[rival]), len(spec["candidates"])
        tried = tuned_rc2l if rival == "rc2l" else n_ran + len(spec.get("tried_before", []))
        if win is None:
            table.append(f"| {rival} | {tried} | not run | | | | | |")
            continue
        done = sorted(s for (n, s) in runs if n == win)
        finals = mean_std([student(win, s) for s in done])
        teachers = [runs[(win, s)]["final"]["teacher"] for s in done if "teacher" in runs[(win, s)]["final"]]
        if teachers:
            finals += f" (teacher {mean_std(teachers)})"
        chosen = win if n_ran == n_all else f"{win} (provisional: {n_ran} of {n_all} run)"
        base = entry.get(spec["baseline"]) if spec["baseline"] else None
        table.append(
            f"| {rival} | {tried} | {chosen} | {','.join(map(str, done))} | {finals} | "
            f"{mean_std([runs[(win, s)]['miou'] for s in done])} | {paired(win, base) if base else '–'} | "
            f"{paired(entry['rc2l'], win) if rival != 'rc2l' else '–'} |"
        )
    return "\n".join(
        ["Tuning (seed 0; the chosen configuration is the best final-step student):", "", *tuning, "", *table]
    )


def compare_runs(rows: list[dict], labels: str | None = None) -> list[dict]:
    """The rows recorded from `rc2l compare` folders (``--compare``), in the shape its table and
    plot read: the seeds of one study row come from different folders and sessions, and
    docs/results.json is where they all are. A (row, seed) recorded twice keeps its last record."""
    from rc2l.engine.compare import STUDY_ROWS, better_model_curve

    runs: dict[tuple[str, int], dict] = {}
    for r in rows:
        name = row_name(r)
        if not name or (labels and r.get("eval_labels") != labels):
            continue
        final_model = max(r["final"], key=r["final"].get)
        curve = better_model_curve((int(step), v) for h in r["history"].values() for step, v in h.items())
        runs[(name, r["seed"])] = {
            "row": name,
            "seed": r["seed"],
            "final_miou": r["final"][final_model],
            "final_model": final_model,
            "best_miou": r["miou"],
            "best_model": r["model_evaluated"],
            "wall_s": r.get("wall_s"),
            "it_s_median": r.get("train_it_s_median"),
            "curve": curve,
            "machine": r.get("machine"),
        }
    names = list(dict.fromkeys(name for name, _ in runs))
    order = [n for n in STUDY_ROWS if n in names] + [n for n in names if n not in STUDY_ROWS]
    return [runs[k] for k in sorted(runs, key=lambda k: (order.index(k[0]), k[1]))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--command")
    ap.add_argument("--note", default="")
    ap.add_argument("--machine", help="where it ran (default: this machine's CPU)")
    ap.add_argument("--commit", help="the commit it ran at (default: the run's own start records, else HEAD)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.json"))
    ap.add_argument("--compare", metavar="OUT_DIR", help="record every finished run of an `rc2l compare` folder")
    ap.add_argument(
        "--outside-study",
        action="store_true",
        help="with --compare: keep the runs out of the --seeds tables (a check that reruns a study row, e.g. for speed)",
    )
    ap.add_argument("--table", metavar="DATASET:SPLIT", help="print the recorded rows as markdown and exit")
    ap.add_argument("--where", default="", help="with --table: only rows whose machine contains this text")
    ap.add_argument("--iters", type=int, help="with --table: only rows of this schedule (train.iters)")
    ap.add_argument("--per-class", action="store_true", help="with --table: per-class IoU, one column per row")
    ap.add_argument(
        "--curves", action="store_true", help="with --table: val mIoU at every evaluation, one line per row"
    )
    ap.add_argument(
        "--seeds", metavar="DATASET:SPLIT", help="the compare table (mean ± std over seeds) of recorded rows"
    )
    ap.add_argument(
        "--labels",
        choices=["native", "resized"],
        help="with --seeds or --fair: only rows evaluated at these labels (--fair: native unless given)",
    )
    ap.add_argument(
        "--fair",
        metavar="DATASET:SPLIT",
        help="the fair fight's tuning rows and table (docs/results.md, 'A fair fight')",
    )
    ap.add_argument("--plot", metavar="PNG", help="with --seeds: val mIoU against step, band over seeds")
    ap.add_argument("--baseline", default="supervised", help="with --seeds: the row paired differences are taken to")
    a = ap.parse_args()
    if a.seeds:
        from rc2l.engine import compare

        dataset, _, split = a.seeds.partition(":")
        runs = compare_runs(select(json.loads(Path(a.out).read_text()), dataset, split, a.where, a.iters), a.labels)
        if not runs:
            raise SystemExit(f"error: {a.out}: no recorded compare row of {a.seeds}")
        print(
            compare.table(
                runs,
                a.baseline,
                f"Recorded compare rows: {a.seeds}, {a.iters or 'any'} steps, {a.labels or 'any'} labels",
            )
        )
        if a.plot:
            compare.plot(runs, Path(a.plot))
        return
    if a.fair:
        dataset, _, split = a.fair.partition(":")
        rows = json.loads(Path(a.out).read_text())
        tuned = sum(r["dataset"] == dataset and r["method"] == "rc2l" and r.get("seed") is None for r in rows)
        picked = [
            r for r in select(rows, dataset, split, a.where, a.iters) if r.get("eval_labels") == (a.labels or "native")
        ]
        print(fair_table(picked, tuned))
        return
    if a.table:
        dataset, _, split = a.table.partition(":")
        render = per_class_table if a.per_class else curves_table if a.curves else table
        print(render(select(json.loads(Path(a.out).read_text()), dataset, split, a.where, a.iters)))
        return
    if a.compare:
        for r in json.loads((Path(a.compare) / "compare.json").read_text()):
            if r.get("returncode") == 0 and "final_miou" in r:
                kind = "check row" if a.outside_study else "compare row"
                record(
                    Path(r["run_dir"]),
                    "rc2l " + r["command"].removeprefix("-m rc2l "),
                    f"{a.note} {kind} '{r['row']}'".strip(),
                    a,
                    {
                        kind.replace(" ", "_"): r["row"],
                        "wall_s": round1(r.get("wall_s")),
                        "jobs": r.get("jobs", 1),
                    },
                )
        return
    if not a.run_dir or not a.command:
        ap.error("RUN_DIR and --command are required (or --table DATASET:SPLIT, or --compare OUT_DIR)")
    record(Path(a.run_dir), a.command, a.note, a)


def record(run: Path, command: str, note: str, a: argparse.Namespace, extra: dict | None = None) -> None:
    """Append (or replace: same command and machine) the row of one finished run."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    records, warns = read_records(run / "metrics.jsonl")
    for w in warns:
        print(f"warning: {w}", file=sys.stderr)
    evals = [r for r in records if "miou" in r]
    if not evals:
        raise SystemExit(f"error: no evaluation in {run / 'metrics.jsonl'}")
    best = max(evals, key=lambda r: r["miou"])
    last = max(r["step"] for r in evals)
    train = [r for r in records if r.get("type") == "train"]
    ends = [r for r in records if r.get("type") == "end"]
    row = {
        "dataset": cfg["data"]["name"],
        "labeled": labeled_count(run),
        "split": cfg["data"]["split"],
        "method": cfg["method"],
        "eval_split": best["split"],
        "eval_mode": best["mode"],
        "miou": round(best["miou"], 2),
        "model_evaluated": best["model"],
        "best_step": best["step"],
        "final": {r["model"]: round(r["miou"], 2) for r in evals if r["step"] == last},
        "history": {
            m: {str(r["step"]): round(r["miou"], 4) for r in evals if r["model"] == m}
            for m in sorted({r["model"] for r in evals})
        },
        "per_class": dict(zip(class_names(run, len(best["per_class"])), (round(v, 4) for v in best["per_class"])))
        if best.get("per_class")
        else None,
        "iters": cfg["train"]["iters"],
        "last_eval_step": last,
        "backbone": cfg["model"]["backbone"],
        "arch": cfg["model"].get("arch", "maskformer"),
        "seed": cfg.get("seed"),
        "eval_labels": best.get("labels", "resized"),
        "train_it_s_median": sorted(r["it_s"] for r in train)[len(train) // 2] if train else None,
        "command": command,
        "commit": a.commit or run_commits(records) or git_commit(),
        "machine": a.machine
        or run_device(records, cfg["train"].get("threads"))
        or f"{platform.machine()} {platform.processor() or ''} cpu".strip(),
        "note": note,
        **({"wall_s": round1(ends[-1]["wall_s"])} if ends else {}),
        **(extra or {}),
    }
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    rows = [r for r in rows if (r["command"], r.get("machine")) != (row["command"], row["machine"])] + [row]
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
