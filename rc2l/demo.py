"""`rc2l demo`: the method's showcase on the built-in synthetic data (no download): with few
labels, train supervised-only and RC²L with the same budget, evaluate both, print a table,
then write a picture (input / ground truth / supervised / rc2l on a few val images) and both
runs' report.html."""

from __future__ import annotations

import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
ROWS = {"supervised": ["method=supervised"], "rc2l": ["method=rc2l"]}
PICTURE_IMAGES = 4
HEADER = "| method | labeled | val mIoU (best) | model, step | final student | final teacher | minutes |"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="supervised vs RC²L on the built-in synthetic data with few labels (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="run folders, picture and reports go here (default runs/demo)")
    p.add_argument("overrides", nargs="*", help="key=value applied to both runs, e.g. data.split=1_4")
    p.set_defaults(func=run)


def run(args) -> int:
    from rc2l.config import load_config
    from rc2l.engine.train import train

    out = Path(args.out)
    results = {}
    for name, ov in ROWS.items():
        # the demo's folders are scratch: a second demo moves the first aside (resume=auto continues it)
        fresh = [] if any(o.startswith(("resume=", "overwrite=")) for o in args.overrides) else ["overwrite=true"]
        cfg = load_config(CONFIG, [*ov, f"out_dir={out / name}", *fresh, *args.overrides])
        print(
            f"== {name}: {cfg.train.iters} steps, labels {cfg.data.split} of {cfg.data.synthetic.num_train} "
            f"synthetic images",
            flush=True,
        )
        t0 = time.time()
        res = train(cfg)
        if res.get("interrupted"):
            print(f"{name} stopped at step {res['step']}; its state is in {out / name} (resume=auto)")
            return 130
        results[name] = {"result": res, "minutes": (time.time() - t0) / 60, "cfg": cfg}
    print_table(results)
    picture = write_picture(out, results)
    reports = [write_report(out / name) for name in results]
    print(f"\npicture: {picture}")
    for r in reports:
        print(f"report:  {r}")
    return 0


def final_scores(res: dict) -> dict[str, float]:
    """{model: mIoU} of the last evaluation (student, and teacher for rc2l)."""
    return {r["model"]: r["miou"] for r in res.get("last_eval") or []}


def print_table(results: dict) -> None:
    """The comparison: best-of-run (the better of student and teacher over the evaluations, the
    weights in best.safetensors) and the final student / teacher of each row."""
    print()
    print(HEADER)
    print("|---|---|---:|---|---:|---:|---:|")
    for name, r in results.items():
        best, final = r["result"]["best"], final_scores(r["result"])
        teacher = f"{final['teacher']:.2f}" if "teacher" in final else "–"
        print(
            f"| {name} | {r['cfg'].data.split} | {best['miou']:.2f} | {best['model']}, {best['step']} | "
            f"{final.get('student', float('nan')):.2f} | {teacher} | {r['minutes']:.1f} |"
        )
    sup, rc2l = results["supervised"]["result"], results["rc2l"]["result"]
    gain = rc2l["best"]["miou"] - sup["best"]["miou"]
    student_gain = final_scores(rc2l).get("student", float("nan")) - final_scores(sup).get("student", float("nan"))
    mode = results["rc2l"]["cfg"].eval.mode
    print(
        f"\nRC²L vs supervised-only with the same labels and budget: {gain:+.2f} mIoU "
        f"(best of run; final student vs final student {student_gain:+.2f}; synthetic val, {mode} eval). "
        f"Read it against the 3-seed table in README.md."
    )


def val_examples(cfg, n: int) -> list[tuple]:
    """``n`` val scenes of the demo's synthetic data, evenly spaced: [(image uint8 (H, W, 3), mask (H, W))]."""
    import numpy as np

    from rc2l.data.synthetic import generate

    s = cfg.data.synthetic
    idx = sorted({int(i) for i in np.linspace(0, s.num_val - 1, min(n, s.num_val)).round()})
    return [generate(s.seed, "val", i, s.size) for i in idx]


def write_picture(out: Path, results: dict) -> Path:
    """out/demo.png: one row per val image, columns input / ground truth / supervised / rc2l,
    each run predicted with its best weights (best.safetensors) through the Python API
    (``rc2l.load``); the column titles give each run's best val mIoU and which model it is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    import rc2l
    from rc2l.infer.report import colourise

    models = {name: rc2l.load(out / name, device="cpu") for name in ROWS}
    palette = models["rc2l"].palette
    examples = val_examples(results["rc2l"]["cfg"], PICTURE_IMAGES)
    best = {name: results[name]["result"]["best"] for name in models}
    cols = ["input", "ground truth", *(f"{n}\n{best[n]['miou']:.1f} mIoU ({best[n]['model']})" for n in models)]
    fig, axes = plt.subplots(len(examples), len(cols), figsize=(2.2 * len(cols), 2.2 * len(examples)), squeeze=False)
    for row, (image, mask) in enumerate(examples):
        panels = [image, colourise(mask, palette)]
        panels += [colourise(m.predict(image), palette) for m in models.values()]
        for col, (ax, panel) in enumerate(zip(axes[row], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[col], fontsize=10)
    handles = [Patch(color=np.array(c) / 255, label=n) for n, c in zip(models["rc2l"].classes, palette)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = out / "demo.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path) -> Path:
    """run_dir/report.html (what `rc2l report RUN_DIR` writes)."""
    from rc2l.infer.report import build_report

    return build_report(run_dir, device="cpu")
