"""Time to accuracy: val mIoU against wall-clock minutes and against steps, several runs on one
figure, from the runs' own metrics.jsonl (what users wait for is minutes to a given accuracy,
not steps/s alone).

    python scripts/time_to_accuracy.py RUN_DIR [RUN_DIR ...] --out fig.png [--label NAME ...]

Minutes are rebuilt from the "train" records: each covers the steps since the previous train
record (or since the "start" record of a resume) at its logged ``it_s``, and that interval's
wall clock includes the evaluation and checkpoint written at its start, so evaluation cost counts.
Per evaluation step the plotted mIoU is the better of the models evaluated there (student,
teacher), as ``best.safetensors`` keeps. A table with each run's device and commit (from its
start records), best mIoU and minutes to it is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rc2l.engine.metrics_log import read_records


def wall_clock(records: list[dict]) -> list[tuple[int, float]]:
    """[(step, cumulative minutes)] at every train record, starting at (first step, 0)."""
    points: list[tuple[int, float]] = []
    last_step, minutes = None, 0.0
    for r in records:
        if r.get("type") == "start":
            last_step = int(r["step"])
            if not points:
                points.append((last_step, 0.0))
        elif r.get("type") == "train" and r.get("it_s"):
            prev = last_step if last_step is not None else 0
            if not points:
                points.append((prev, 0.0))
            minutes += (r["step"] - prev) / r["it_s"] / 60.0
            points.append((int(r["step"]), minutes))
            last_step = int(r["step"])
    return points


def minutes_at(points: list[tuple[int, float]], step: int) -> float:
    """Cumulative minutes at ``step``, linear between train records (the last rate past the end)."""
    if not points:
        return float("nan")
    for (s0, m0), (s1, m1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return m0 if s1 == s0 else m0 + (m1 - m0) * (step - s0) / (s1 - s0)
    if step <= points[0][0]:
        return points[0][1]
    (s0, m0), (s1, m1) = points[-2] if len(points) > 1 else points[-1], points[-1]
    rate = (m1 - m0) / (s1 - s0) if s1 > s0 else 0.0
    return m1 + rate * (step - s1)


def best_of_models(records: list[dict]) -> list[tuple[int, float]]:
    """[(step, best mIoU over the models evaluated at that step)], by step."""
    best: dict[int, float] = {}
    for r in records:
        if "miou" in r and "model" in r:
            s = int(r["step"])
            best[s] = max(best.get(s, float("-inf")), float(r["miou"]))
    return sorted(best.items())


def load_run(run: Path, label: str | None = None) -> dict:
    """One run folder → label, evaluations with minutes, device and commits of its starts."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found")
    records, warns = read_records(path)
    for w in warns:
        print(f"warning: {w}", file=sys.stderr)
    points = wall_clock(records)
    evals = [(s, minutes_at(points, s), m) for s, m in best_of_models(records)]
    starts = [r for r in records if r.get("type") == "start"]
    method = _config_method(run)
    return {
        "label": label or (f"{run.name} ({method})" if method else run.name),
        "evals": evals,
        "device": ", ".join(dict.fromkeys(str(r.get("device", "?")) for r in starts)) or "?",
        "commit": ", ".join(dict.fromkeys(str(r.get("commit", "?")) for r in starts)) or "?",
        "minutes": points[-1][1] if points else float("nan"),
        "steps": points[-1][0] if points else 0,
    }


def _config_method(run: Path) -> str | None:
    try:
        import yaml

        return (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("method")
    except (OSError, ValueError, AttributeError):
        return None


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for r in runs:
        if not r["evals"]:
            continue
        steps, minutes, miou = zip(*r["evals"])
        axes[0].plot(minutes, miou, marker="o", ms=3, label=r["label"])
        axes[1].plot(steps, miou, marker="o", ms=3, label=r["label"])
    axes[0].set_xlabel("wall-clock minutes (training + evaluation)")
    axes[1].set_xlabel("step")
    axes[0].set_ylabel("val mIoU (best of student / teacher)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def table(runs: list[dict]) -> str:
    lines = [
        "| run | device | commit | steps | minutes | best mIoU | minutes to best |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        best = max(r["evals"], key=lambda e: e[2]) if r["evals"] else None
        cells = [
            r["label"],
            r["device"],
            r["commit"],
            str(r["steps"]),
            f"{r['minutes']:.1f}",
            f"{best[2]:.2f}" if best else "–",
            f"{best[1]:.1f}" if best else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with metrics.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="figure file (.png, .svg, .pdf)")
    p.add_argument(
        "--label", nargs="*", default=None, help="one legend label per run (default: folder name and method)"
    )
    args = p.parse_args(argv)
    if args.label and len(args.label) != len(args.runs):
        raise SystemExit(f"error: {len(args.label)} labels for {len(args.runs)} runs")
    labels = args.label or [None] * len(args.runs)
    runs = [load_run(r, lab) for r, lab in zip(args.runs, labels)]
    for r in runs:
        if not r["evals"]:
            print(f"warning: {r['label']}: no evaluation records", file=sys.stderr)
    plot(runs, args.out)
    print(table(runs))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
