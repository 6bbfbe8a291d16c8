"""`rc2l ablate CONFIG`: the method's ablation rows with one seed and one schedule, each a
fresh `rc2l train` process (so its peak memory is its own), then a markdown table and a
plot of val mIoU against step for every row.

Running the same command again continues an interrupted ablation: finished rows are kept,
the row that was cut off resumes from its last checkpoint (``resume=auto``), the rest run.
A row folder that holds a run of another config is refused rather than mixed in."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rc2l.engine.metrics_log import read_records

OFF = {"semi.rmc": 0, "semi.rfc": 0, "semi.rcc": 0, "semi.smc": 0}


def _losses(**on) -> list[str]:
    return ["method=rc2l"] + [f"{k}={on.get(k.split('.')[1], v)}" for k, v in OFF.items()]


# The paper's order: the consistency terms first, then each contrastive term on top of them.
DEFAULT_ROWS: dict[str, list[str]] = {
    "supervised": ["method=supervised"],
    "+RCC": _losses(rcc=1),
    "+RCC+SMC": _losses(rcc=1, smc=1),
    "+RMC": _losses(rcc=1, smc=1, rmc=1),
    "+RFC": _losses(rcc=1, smc=1, rfc=1),
    "all four": _losses(rcc=1, smc=1, rmc=1, rfc=1),
}


def parse_rows(only: str | None, extra: list[str]) -> dict[str, list[str]]:
    rows = dict(DEFAULT_ROWS)
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in names if n not in rows]
        if unknown:
            raise SystemExit(f"error: unknown ablation row {unknown[0]!r} (known: {', '.join(rows)})")
        rows = {n: rows[n] for n in names}
    return {**rows, **extra_rows(extra)}


def extra_rows(specs: list[str]) -> dict[str, list[str]]:
    """``--row 'NAME: key=value key=value'`` options (ablate's and compare's) → {name: overrides}."""
    rows = {}
    for spec in specs:
        if ":" not in spec:
            raise SystemExit(f"error: --row {spec!r} must look like 'NAME: key=value key=value'")
        name, overrides = spec.split(":", 1)
        rows[name.strip()] = shlex.split(overrides)
    return rows


# Keys that may differ between an interrupted row and its continuation.
RUN_ONLY_KEYS = ("out_dir", "resume", "overwrite", "train.progress", "train.threads", "train.keep_freed_memory")


def check_row_folder(name: str, run_dir: Path, config: str, overrides: list[str]) -> None:
    """Refuse a row folder that holds a run of another config (e.g. the command changed since)."""
    import yaml

    from rc2l.config import flatten, load_config, to_dict

    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    old = flatten(yaml.safe_load(saved.read_text()) or {})
    new = flatten(to_dict(load_config(config, [*overrides, f"out_dir={run_dir}"])))
    diff = sorted(k for k in old.keys() | new.keys() if k not in RUN_ONLY_KEYS and old.get(k) != new.get(k))
    if diff:
        raise SystemExit(
            f"error: {saved}: row {name!r} was run with another config (differs in: {', '.join(diff)}); "
            f"use another --out or remove {run_dir}"
        )


def resumed_at(run_dir: Path) -> int | None:
    """The step the row's last start continued from (its ``start`` record), None for a fresh run."""
    path = run_dir / "metrics.jsonl"
    starts = [r for r in read_records(path)[0] if r.get("type") == "start"] if path.exists() else []
    return (starts[-1]["step"] or None) if starts else None


def run_row(config: str, overrides: list[str], out_dir: Path, log_path: Path, on_start=None) -> dict:
    """One training in a child process (continuing the folder's run if it holds a checkpoint);
    returns wall time, peak RSS (MiB) and exit status. ``on_start(proc)`` gets the child, e.g. to
    stop it (SIGTERM: it checkpoints and exits)."""
    cmd = [
        sys.executable,
        "-m",
        "rc2l",
        "train",
        config,
        *overrides,
        f"out_dir={out_dir}",
        "resume=auto",
        "train.progress=false",
    ]
    t0 = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if on_start is not None:
            on_start(proc)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": time.time() - t0,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "returncode": proc.returncode,
        "command": " ".join(shlex.quote(c) for c in cmd[1:]),
    }


def read_evals(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [r for r in read_records(path)[0] if "miou" in r] if path.exists() else []


def best_and_final(evals: list[dict]) -> dict:
    """A run's evaluation records (non-empty) → its best evaluation (mIoU, model, step, eval
    mode, split) and every model's mIoU at the last evaluated step ("final", "final_step")."""
    best = max(evals, key=lambda r: r["miou"])
    last_step = max(r["step"] for r in evals)
    final = {r["model"]: r["miou"] for r in evals if r["step"] == last_step}
    return {
        "best_miou": best["miou"],
        "best_model": best["model"],
        "best_step": best["step"],
        "final": final,
        "final_step": last_step,
        "mode": best["mode"],
        "split": best["split"],
        "labels": best.get("labels"),
    }


def summarize(name: str, run_dir: Path, info: dict) -> dict:
    evals = read_evals(run_dir)
    row = {"row": name, **info, "run_dir": str(run_dir)}
    if evals:
        row.update(best_and_final(evals))
    return row


def write_table(rows: list[dict], path: Path, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| row | best val mIoU | model | at step | final student / teacher | wall time | peak RSS |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        if "best_miou" not in r:
            lines.append(f"| {r['row']} | failed (exit {r['returncode']}) | | | | {r['wall_s']:.0f} s | |")
            continue
        fin = " / ".join(f"{r['final'][m]:.2f}" for m in ("student", "teacher") if m in r["final"])
        wall = f"{r['wall_s'] / 60:.1f} min" + (f" (resumed at step {r['resumed_at']})" if r.get("resumed_at") else "")
        lines.append(
            f"| {r['row']} | {r['best_miou']:.2f} | {r['best_model']} | {r['best_step']} | {fin} | "
            f"{wall} | {r['peak_rss_mib']:.0f} MiB |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        evals = read_evals(Path(r["run_dir"]))
        for model, style in (("student", "-"), ("teacher", "--")):
            pts = sorted((e["step"], e["miou"]) for e in evals if e["model"] == model)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=f"{r['row']} ({model})")
    save_miou_figure(fig, ax, path)


def save_miou_figure(fig, ax, path: Path) -> None:
    """Label, grid and legend of a val-mIoU-against-step plot, then write and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:  # e.g. every run was stopped before its first evaluation
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("ablate", help="run the ablation rows (supervised, +RCC, ... all four) and tabulate them")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value applied to every row (e.g. data.split=1_8 train.iters=2000)")
    p.add_argument("--out", required=True, help="folder for the rows' run folders, ablation.md/json/png")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(DEFAULT_ROWS)}")
    p.add_argument("--row", action="append", default=[], help="extra row 'NAME: key=value ...' (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rc2l.config import load_config

    load_config(args.config, args.overrides)  # fail fast on a bad key, before any row runs
    rows = parse_rows(args.only, args.row)
    out = Path(args.out)
    dirs = {name: out / name.replace("+", "plus_").replace(" ", "_") for name in rows}
    for name, ov in rows.items():
        load_config(args.config, [*args.overrides, *ov])
        check_row_folder(name, dirs[name], args.config, [*args.overrides, *ov])
    out.mkdir(parents=True, exist_ok=True)
    previous = {}
    if (out / "ablation.json").exists():
        previous = {r["row"]: r for r in json.loads((out / "ablation.json").read_text())}
    results = []
    for i, (name, ov) in enumerate(rows.items()):
        run_dir = dirs[name]
        if (run_dir / "last.safetensors").exists() and name in previous:
            print(f"[{i + 1}/{len(rows)}] {name}: finished before, kept", flush=True)
            results.append(previous[name])
            continue
        more = " (continuing from its checkpoint)" if (run_dir / "state.pt").exists() else ""
        print(f"[{i + 1}/{len(rows)}] {name}: {' '.join(ov)}{more}", flush=True)
        info = run_row(args.config, [*args.overrides, *ov], run_dir, out / f"{run_dir.name}.log")
        info["resumed_at"] = resumed_at(run_dir)
        results.append(summarize(name, run_dir, info))
        (out / "ablation.json").write_text(json.dumps(results, indent=1))
        r = results[-1]
        print(
            f"    best mIoU {r.get('best_miou', float('nan')):.2f} ({r.get('best_model', '-')}), "
            f"{info['wall_s'] / 60:.1f} min, exit {info['returncode']}",
            flush=True,
        )
    title = f"Ablation: {args.config} {' '.join(args.overrides)}".strip()
    print(write_table(results, out / "ablation.md", title))
    plot(results, out / "ablation.png")
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'ablation.png'}")
    return 0 if all(r["returncode"] == 0 for r in results) else 1
