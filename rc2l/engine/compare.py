"""`rc2l compare CONFIG --seeds 0 1 2`: rows × seeds, each a fresh `rc2l train` process in
its own folder (<out>/<row>/seed<k>), then a table of mean ± std over seeds of the final-step
mIoU (the honest number) and of the best evaluation (the field's number), which model it is,
the per-seed paired difference to the baseline row, wall time and steps/s, and a plot of val
mIoU against step with a band over seeds.

Running the same command again continues: finished runs are kept, a cut-off run resumes from
its checkpoint, a folder holding a run of another config is refused (as `rc2l ablate`).
``--jobs N`` runs N of them at once (a GPU or a many-core machine fits several small rows), each
with an equal share of the CPU's threads; every run records how many ran beside it.
``--budget SECONDS`` (a lent GPU for an hour, say) starts a waiting run only while every running
run, slowed by one more beside it, is projected from its own steps/s to finish in time, and at the
end stops the runs still going: they checkpoint, are listed as stopped, and the same command
continues them later."""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from rc2l.engine.ablate import (
    best_and_final,
    check_row_folder,
    extra_rows,
    resumed_at,
    run_row,
    save_miou_figure,
)
from rc2l.engine.metrics_log import read_records

ARCH_PIXEL = ["model.arch=deeplabv3plus"]
# The region-vs-pixel study (issue 18): the five main rows first, then the rows that separate
# "region" from "pixel" inside rc2l itself.
STUDY_ROWS: dict[str, list[str]] = {
    "supervised": ["method=supervised"],
    "rc2l": ["method=rc2l"],
    "unimatch": ["method=unimatch"],
    "supervised (deeplabv3plus)": ["method=supervised", *ARCH_PIXEL],
    "unimatch (deeplabv3plus)": ["method=unimatch", *ARCH_PIXEL],
    "fixmatch": ["method=fixmatch"],
    "fixmatch τ0.7": ["method=fixmatch", "semi.fixmatch_threshold=0.7"],
    "rc2l region terms only": ["method=rc2l", "semi.smc_dice_only=true"],
    "rc2l + unimatch perturbations": ["method=rc2l", "semi.region_views=2", "semi.region_fp=true"],
    # at τ 0.95 the rare classes keep 3–15 % of their pixels as pseudo-labels (docs/results.md)
    "unimatch τ0.7": ["method=unimatch", "semi.unimatch.threshold=0.7"],
}


# The fair fight: UniMatch's driving-scene recipe (its Cityscapes config) as overrides of
# configs/camvid.yaml (configs/camvid_unimatch_driving.yaml is the same, as a file), split in
# the optimizer part a supervised row can take and the semi-supervised part.
DRIVING_OPTIM = [
    "train.optimizer=sgd",
    "train.lr=0.005",
    "train.backbone_lr_mult=1.0",
    "train.weight_decay=0.0001",
    "train.warmup_iters=0",
    "train.clip_grad=0.0",
]
DRIVING = [
    "method=unimatch",
    *DRIVING_OPTIM,
    "semi.start_iter=0",
    "semi.rampup_iters=0",
    "semi.unimatch.threshold=0.0",
    "semi.unimatch.loss_scale=0.5",
]
OHEM = ["loss.pixel_sup=ohem"]
# The grid declared in docs/results.md ("A fair fight") before its runs: four configurations per
# rival at seed 0, selected by the final-step student mIoU; listed in the order they are run.
FAIR_ROWS: dict[str, list[str]] = {
    "supervised-dl S4 adamw ce": ["method=supervised", *ARCH_PIXEL],
    "unimatch M1 driving": DRIVING,
    "unimatch-dl D1 driving ohem": [*DRIVING, *ARCH_PIXEL, *OHEM],
    "supervised-dl S1 sgd ohem": ["method=supervised", *ARCH_PIXEL, *DRIVING_OPTIM, *OHEM],
    "unimatch M2 adamw τ0": ["method=unimatch", "semi.unimatch.threshold=0.0", "semi.unimatch.loss_scale=0.5"],
    "unimatch-dl D2 driving ce": [*DRIVING, *ARCH_PIXEL],
    "supervised-dl S2 sgd ce": ["method=supervised", *ARCH_PIXEL, *DRIVING_OPTIM],
    "unimatch M3 adamw τ0.7": ["method=unimatch", "semi.unimatch.threshold=0.7"],
    "unimatch-dl D3 adamw τ0 ohem": [
        "method=unimatch",
        *ARCH_PIXEL,
        "semi.unimatch.threshold=0.0",
        "semi.unimatch.loss_scale=0.5",
        *OHEM,
    ],
    "supervised-dl S3 adamw ohem": ["method=supervised", *ARCH_PIXEL, *OHEM],
    "unimatch M4 adamw τ0.95 ema": ["method=unimatch", "semi.unimatch.teacher=ema"],
    "unimatch-dl D4 adamw τ0.95 ce": ["method=unimatch", *ARCH_PIXEL],
}
PRESETS = {"study": STUDY_ROWS, "fair": FAIR_ROWS}
# The fair table (scripts/record_result.py --fair): each rival's candidate rows, of which the one
# with the best final-step student mIoU at seed 0 is its entry, and the rows run before the
# protocol that count as tried but are not candidates (DeepLabv3+ with untrained ASPP taps,
# superseded by S4 and D4, the same recipes with every tap trained). rc2l's count of tried
# configurations is its seed-less tuning rows in docs/results.json.
FAIR_RIVALS: dict[str, dict] = {
    "supervised": {"baseline": None, "candidates": ["supervised"]},
    "rc2l": {"baseline": "supervised", "candidates": ["rc2l"]},
    "unimatch": {"baseline": "supervised", "candidates": ["unimatch", *(n for n in FAIR_ROWS if "unimatch M" in n)]},
    "supervised, DeepLabv3+": {
        "baseline": None,
        "candidates": [n for n in FAIR_ROWS if "supervised-dl" in n],
        "tried_before": ["supervised (deeplabv3plus)"],
    },
    "unimatch, DeepLabv3+": {
        "baseline": "supervised, DeepLabv3+",
        "candidates": [n for n in FAIR_ROWS if "unimatch-dl" in n],
        "tried_before": ["unimatch (deeplabv3plus)"],
    },
}


def row_folder(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("+", "plus_").replace("τ", "tau"))


def parse_rows(preset: str | None, extra: list[str]) -> dict[str, list[str]]:
    rows = {**(PRESETS[preset] if preset else {}), **extra_rows(extra)}
    if not rows:
        raise SystemExit("error: no rows: give --preset study|fair and/or --row 'NAME: key=value ...'")
    return rows


def better_model_curve(points: Iterable[tuple[int, float]]) -> dict[str, float]:
    """(step, mIoU) of every evaluated model (student, teacher) → {"step": the better mIoU there},
    in step order: the curve a row is plotted with."""
    curve: dict[int, float] = {}
    for step, miou in points:
        curve[step] = max(curve.get(step, -1.0), miou)
    return {str(k): v for k, v in sorted(curve.items())}


def run_summary(run_dir: Path) -> dict:
    """One finished run: final-step and best mIoU (and which model), its curve, steps/s."""
    path = run_dir / "metrics.jsonl"
    records = read_records(path)[0] if path.exists() else []
    evals = [r for r in records if "miou" in r]
    if not evals:
        return {}
    row = best_and_final(evals)
    final_model = max(row["final"], key=row["final"].get)
    its = sorted(r["it_s"] for r in records if r.get("type") == "train" and "it_s" in r)
    ends = [r for r in records if r.get("type") == "end"]
    return {
        **row,
        "final_miou": row["final"][final_model],
        "final_model": final_model,
        "curve": better_model_curve((e["step"], e["miou"]) for e in evals),
        "it_s_median": its[len(its) // 2] if its else None,
        # the trainer's own count covers every resumed part (None where one part's is unknown)
        **({"wall_s": ends[-1]["wall_s"]} if ends else {}),
    }


def mean_std(values: list[float]) -> str:
    """Mean ± sample std; one value has no spread to show."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _models(runs: list[dict], key: str) -> str:
    names = sorted({r[key] for r in runs})
    return "/".join(names)


def table(runs: list[dict], baseline: str, title: str) -> str:
    """Markdown: one line per row, over its finished seeds."""
    base = {r["seed"]: r["final_miou"] for r in runs if r["row"] == baseline and "final_miou" in r}
    lines = [
        f"# {title}",
        "",
        f"final = last evaluation (the better of student/teacher there); best = best "
        f"evaluation of the run; Δ = per-seed paired difference of the final mIoU to '{baseline}'.",
        "",
        "| row | seeds | final mIoU | model | best mIoU | model | Δ final vs baseline | wall min / run | steps/s |",
        "|---|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["row"] for r in runs):
        done = [r for r in runs if r["row"] == name and "final_miou" in r]
        if not done:
            lines.append(f"| {name} | – | not finished | | | | | | |")
            continue
        diffs = [r["final_miou"] - base[r["seed"]] for r in done if r["seed"] in base and name != baseline]
        speed = _per_device(done, "it_s_median", "{:.3f}")
        wall = _per_device(done, "wall_s", "{:.1f}", scale=1 / 60)  # rows recorded before wall time was kept have none
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in done)} | {mean_std([r['final_miou'] for r in done])} | "
            f"{_models(done, 'final_model')} | {mean_std([r['best_miou'] for r in done])} | {_models(done, 'best_model')} | "
            f"{mean_std(diffs) if diffs else '–'} | {wall} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def device_kind(run: dict) -> str:
    """The device kind of a recorded row's machine ("… (cuda)…" → GPU, "… (cpu)" → CPU), or ""."""
    machine = run.get("machine") or ""
    return "GPU" if "(cuda" in machine else "CPU" if "(cpu" in machine else ""


def _per_device(done: list[dict], key: str, fmt: str, scale: float = 1.0) -> str:
    """Mean of ``key`` over a row's runs; a row whose seeds ran on a CPU and a GPU gets one mean
    each ("CPU 57.3; GPU 9.5"): their average would describe no machine."""
    groups: dict[str, list[float]] = {}
    for r in done:
        if r.get(key):
            groups.setdefault(device_kind(r), []).append(r[key] * scale)
    if len({device_kind(r) for r in done}) <= 1:
        return fmt.format(statistics.mean(next(iter(groups.values())))) if groups else "–"
    return "; ".join(f"{dev or '?'} {fmt.format(statistics.mean(v))}" for dev, v in sorted(groups.items()))


def plot(runs: list[dict], path: Path) -> None:
    """val mIoU (better of student/teacher) against step: mean over seeds, band = min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name in dict.fromkeys(r["row"] for r in runs):
        curves = [r["curve"] for r in runs if r["row"] == name and r.get("curve")]
        steps = sorted({int(s) for c in curves for s in c if all(s in c2 for c2 in curves)})
        if not steps:
            continue
        vals = [[c[str(s)] for c in curves] for s in steps]
        mean = [statistics.mean(v) for v in vals]
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{name} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
    save_miou_figure(fig, ax, path)


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="rows × seeds: mean ± std of final and best mIoU, paired differences, a plot")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value applied to every row (e.g. data.split=1_8)")
    p.add_argument("--out", required=True, help="folder for <row>/seed<k> run folders and compare.md/json/png")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run for every row (default 0)")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="study: the region-vs-pixel study's rows; fair: the rivals' declared tuning grid (docs/results.md)",
    )
    p.add_argument("--row", action="append", default=[], help="row 'NAME: key=value ...' (repeatable)")
    p.add_argument("--only", help="comma-separated subset of the rows")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="ROW:SEED",
        help="run exactly these (repeatable, in this order; instead of --only × --seeds), e.g. 'unimatch:1'",
    )
    p.add_argument("--baseline", default="supervised", help="row the paired differences are taken to")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (default 1); each gets train.threads = CPU cores / jobs unless an override sets it",
    )
    p.add_argument(
        "--budget",
        type=float,
        help="seconds: start a run only if it and every running run are projected to finish by then; "
        "stop (checkpoint) what still runs at the end",
    )
    p.set_defaults(func=run)


def _plan(args) -> list[tuple[str, list[str], int, Path, int]]:
    """(row, its overrides, seed, run folder, total steps) for every planned run."""
    from rc2l.config import load_config

    load_config(args.config, args.overrides)  # fail fast on a bad key, before any run
    rows = parse_rows(args.preset, args.row)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in rows]
        if unknown:
            raise SystemExit(f"error: unknown row {unknown[0]!r} (known: {', '.join(rows)})")
        rows = {n: rows[n] for n in names}
    pairs = [(n, s) for n in rows for s in args.seeds]
    if args.run:
        pairs = [_run_spec(spec, rows) for spec in args.run]
    plan = []
    for name, seed in pairs:
        full = [*args.overrides, *rows[name], f"seed={seed}"]
        iters = load_config(args.config, full).train.iters
        run_dir = Path(args.out) / row_folder(name) / f"seed{seed}"
        check_row_folder(f"{name} seed {seed}", run_dir, args.config, full)
        plan.append((name, full, seed, run_dir, iters))
    return plan


def _run_spec(spec: str, rows: dict[str, list[str]]) -> tuple[str, int]:
    name, _, seed = spec.rpartition(":")
    if name.strip() not in rows or not seed.strip().isdigit():
        raise SystemExit(f"error: --run {spec!r}: want 'ROW:SEED' with ROW one of: {', '.join(rows)}")
    return name.strip(), int(seed)


def _thread_share(overrides: list[str], jobs: int) -> list[str]:
    """With several runs at once, each gets its share of the cores (torch's default would give
    every run all of them: N runs × all cores oversubscribe the machine several times over)."""
    if jobs <= 1 or any(o.startswith("train.threads=") for o in overrides):
        return []
    return [f"train.threads={max(1, (os.cpu_count() or 1) // jobs)}"]


class Budget:
    """Admission by deadline: each running run's steps/s is measured from its metrics.jsonl; a
    waiting run starts only if, with one more run beside them (every rate scaled by n/(n+1), as
    on a saturated GPU or CPU), all running runs and the new one (at the slowest rate seen) end
    with 10 % of the time to spare."""

    STARTUP_S = 45.0  # import, data cache, first evaluation's compile: not in the steps/s
    MIN_SPAN_S = 20.0

    def __init__(self, seconds: float, first_wave: int = 1):
        self.end = time.time() + seconds
        self.first_wave = first_wave  # started at once, before any rate is known
        self.seen: dict[Path, tuple[float, int]] = {}

    def left(self) -> float:
        return self.end - time.time()

    @staticmethod
    def step(run_dir: Path) -> int:
        path = run_dir / "metrics.jsonl"
        steps = [r["step"] for r in read_records(path)[0] if r.get("type") == "train"] if path.exists() else []
        return max(steps, default=0)

    def rate(self, run_dir: Path, step: int) -> float | None:
        """Steps/s since this run's first logged step was seen (``step``: its last logged one); None
        until enough time has passed."""
        now = time.time()
        if step == 0:
            return None
        t0, s0 = self.seen.setdefault(run_dir, (now, step))
        return (step - s0) / (now - t0) if now - t0 >= self.MIN_SPAN_S and step > s0 else None

    def admits(self, running: dict[Path, int], new_iters: int) -> bool:
        """``running``: run folder → its total steps. True if a run of ``new_iters`` steps may start now."""
        if not running or (len(running) < self.first_wave and not self.seen):
            return self.left() > self.STARTUP_S
        steps = {d: self.step(d) for d in running}
        rates = {d: self.rate(d, steps[d]) for d in running}
        if any(r is None for r in rates.values()):
            return False
        slow = len(running) / (len(running) + 1)
        spare = 0.9 * self.left()
        if any((running[d] - steps[d]) / (rates[d] * slow) > spare for d in running):
            return False
        return new_iters / (min(rates.values()) * slow) + self.STARTUP_S <= spare


def run(args) -> int:
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs {args.jobs}: must be 1 or more")
    out = Path(args.out)
    plan = _plan(args)
    out.mkdir(parents=True, exist_ok=True)
    previous = {}
    if (out / "compare.json").exists():
        previous = {(r["row"], r["seed"]): r for r in json.loads((out / "compare.json").read_text())}
    planned = {(name, seed) for name, _, seed, _, _ in plan}
    # runs of this folder that another command (other --only/--seeds) made stay in its table
    others = [r for k, r in previous.items() if k not in planned and _finished(r)]
    done: dict[int, dict] = {}
    lock = threading.Lock()
    budget = Budget(args.budget, first_wave=(args.jobs + 1) // 2) if args.budget else None
    procs: dict[Path, object] = {}
    stopped: set[Path] = set()

    def listing() -> list[dict]:
        return others + [done[k] for k in sorted(done)]

    def one(i: int, name: str, full: list[str], seed: int, run_dir: Path, iters: int) -> None:
        tag = f"[{i + 1}/{len(plan)}] {name}, seed {seed}"
        continuing = " (continuing)" if (run_dir / "state.pt").exists() else ""
        print(f"{tag}: {' '.join(full)}{continuing}", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        register = lambda proc: procs.__setitem__(run_dir, proc)
        full_run = full + _thread_share(full, args.jobs)
        info = run_row(args.config, full_run, run_dir, run_dir.parent / f"seed{seed}.log", register)
        r = {"row": name, "seed": seed, **info, "jobs": args.jobs, "resumed_at": resumed_at(run_dir)}
        earlier = previous.get((name, seed), {})
        if "stopped_at" in earlier:  # this command continued a run --budget stopped: count both parts
            r["wall_s"] += earlier["wall_s"]
        elif r["resumed_at"]:  # continued a run stopped otherwise: this process's time is one part of it
            r["wall_s"] = None
        r.update(run_dir=str(run_dir), wall_s_this_part=info["wall_s"], **run_summary(run_dir))
        if (
            run_dir in stopped and r.get("final_step") != iters
        ):  # its numbers are those of a cut-off run: kept apart from the table
            r = {k: v for k, v in r.items() if k not in ("final_miou", "best_miou", "curve")}
            r["stopped_at"] = Budget.step(run_dir)
        with lock:
            done[i] = r
            (out / "compare.json").write_text(json.dumps(listing(), indent=1))
        ending = (
            f"stopped at step {r['stopped_at']} (--budget)"
            if "stopped_at" in r
            else (
                f"final {r.get('final_miou', float('nan')):.2f} ({r.get('final_model', '-')}), best "
                f"{r.get('best_miou', float('nan')):.2f}"
            )
        )
        took = f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") else f"{info['wall_s'] / 60:.1f} min in this part"
        print(f"{tag}: {ending}, {took}, exit {info['returncode']}", flush=True)

    waiting = []
    for i, (name, full, seed, run_dir, iters) in enumerate(plan):
        if (name, seed) in previous and _finished(previous[(name, seed)]):
            print(f"[{i + 1}/{len(plan)}] {name}, seed {seed}: finished before, kept", flush=True)
            done[i] = previous[(name, seed)]
        else:
            waiting.append((i, name, full, seed, run_dir, iters))
    _schedule(waiting, one, args, budget, procs, stopped)
    runs = listing()
    (out / "compare.json").write_text(json.dumps(runs, indent=1))
    finished = [r for r in runs if "stopped_at" not in r]
    text = table(finished, args.baseline, f"Compare: {args.config} {' '.join(args.overrides)}".strip())
    text += "".join(
        f"\n{r['row']}, seed {r['seed']}: stopped at step {r['stopped_at']} (--budget)"
        for r in runs
        if "stopped_at" in r
    )
    (out / "compare.md").write_text(text)
    plot(finished, out / "compare.png")
    print(text)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
    return 0 if all(r["returncode"] == 0 for r in runs) and len(finished) == len(runs) else 1


def _finished(r: dict) -> bool:
    return "stopped_at" not in r and (Path(r["run_dir"]) / "last.safetensors").exists()


def _schedule(waiting: list, one, args, budget: Budget | None, procs: dict, stopped: set) -> None:
    """Start waiting runs (plan order) while fewer than --jobs run and the budget admits them;
    when the budget ends, stop the running ones and start no more."""
    threads: dict[Path, threading.Thread] = {}
    iters = {item[4]: item[5] for item in waiting}
    errors: list[BaseException] = []

    def guarded(*item) -> None:
        try:
            one(*item)
        except BaseException as exc:  # re-raised in the caller's thread once the others end
            errors.append(exc)

    while waiting or threads:
        threads = {d: t for d, t in threads.items() if t.is_alive()}
        if budget is not None and budget.left() <= 0:
            if waiting:
                print(f"--budget: ended; not started: {_names(waiting)}", flush=True)
            waiting = []
            for d in threads:
                if d not in stopped and d in procs and procs[d].poll() is None:
                    stopped.add(d)
                    procs[d].send_signal(signal.SIGTERM)
        while waiting and len(threads) < args.jobs:
            if budget is not None and not budget.admits({d: iters[d] for d in threads}, iters[waiting[0][4]]):
                break
            item = waiting.pop(0)
            threads[item[4]] = threading.Thread(target=guarded, args=item)
            threads[item[4]].start()
        time.sleep(1.0 if budget is None else 5.0)
        if not threads and waiting and budget is not None and budget.left() <= Budget.STARTUP_S:
            print(f"--budget: too little time left; not started: {_names(waiting)}", flush=True)
            waiting = []
    for t in threads.values():
        t.join()
    if errors:
        raise errors[0]


def _names(waiting: list) -> str:
    return ", ".join(f"{item[1]}:{item[3]}" for item in waiting)
