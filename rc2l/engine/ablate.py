"""`rc2l ablate CONFIG`: the method's ablation rows with one seed and one schedule, each a
fresh `rc2l train` process (so its peak memory is its own), then a markdown table and a
plot of val mIoU against step for every row."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

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
    for spec in extra:
        if ":" not in spec:
            raise SystemExit(f"error: --row {spec!r} must look like 'NAME: key=value key=value'")
        name, overrides = spec.split(":", 1)
        rows[name.strip()] = shlex.split(overrides)
    return rows


def run_row(config: str, overrides: list[str], out_dir: Path, log_path: Path) -> dict:
    """One training in a child process; returns wall time, peak RSS (MiB) and exit status."""
    cmd = [sys.executable, "-m", "rc2l", "train", config, *overrides, f"out_dir={out_dir}", "train.progress=false"]
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.time() - t0, "peak_rss_mib": usage.ru_maxrss / 1024, "returncode": proc.returncode,
            "command": " ".join(shlex.quote(c) for c in cmd[1:])}


def read_evals(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "miou" in r]


def summarize(name: str, run_dir: Path, info: dict) -> dict:
    evals = read_evals(run_dir)
    row = {"row": name, **info, "run_dir": str(run_dir)}
    if evals:
        best = max(evals, key=lambda r: r["miou"])
        last_step = max(r["step"] for r in evals)
        final = {r["model"]: r["miou"] for r in evals if r["step"] == last_step}
        row.update({"best_miou": best["miou"], "best_model": best["model"], "best_step": best["step"],
                    "final": final, "mode": best["mode"], "split": best["split"]})
    return row


def write_table(rows: list[dict], path: Path, title: str) -> str:
    lines = [f"# {title}", "", "| row | best val mIoU | model | at step | final student / teacher | wall time | peak RSS |",
             "|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        if "best_miou" not in r:
            lines.append(f"| {r['row']} | failed (exit {r['returncode']}) | | | | {r['wall_s']:.0f} s | |")
            continue
        fin = " / ".join(f"{r['final'][m]:.2f}" for m in ("student", "teacher") if m in r["final"])
        lines.append(f"| {r['row']} | {r['best_miou']:.2f} | {r['best_model']} | {r['best_step']} | {fin} | "
                     f"{r['wall_s'] / 60:.1f} min | {r['peak_rss_mib']:.0f} MiB |")
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
    ax.set_xlabel("step")
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
    for name, ov in rows.items():
        load_config(args.config, [*args.overrides, *ov])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (name, ov) in enumerate(rows.items()):
        run_dir = out / name.replace("+", "plus_").replace(" ", "_")
        print(f"[{i + 1}/{len(rows)}] {name}: {' '.join(ov)}", flush=True)
        info = run_row(args.config, [*args.overrides, *ov], run_dir, out / f"{run_dir.name}.log")
        results.append(summarize(name, run_dir, info))
        (out / "ablation.json").write_text(json.dumps(results, indent=1))
        r = results[-1]
        print(f"    best mIoU {r.get('best_miou', float('nan')):.2f} ({r.get('best_model', '-')}), "
              f"{info['wall_s'] / 60:.1f} min, exit {info['returncode']}", flush=True)
    title = f"Ablation: {args.config} {' '.join(args.overrides)}".strip()
    print(write_table(results, out / "ablation.md", title))
    plot(results, out / "ablation.png")
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'ablation.png'}")
    return 0 if all(r["returncode"] == 0 for r in results) else 1
