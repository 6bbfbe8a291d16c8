"""`rc2l report RUN_DIR`: one HTML page to judge a training run without TensorBoard.

Plots (matplotlib, Agg, PNG files in RUN_DIR/report/): loss terms against step, val mIoU
against step (student and teacher), per-class IoU bars, the row-normalised confusion matrix of
the best evaluation, and a gallery of val predictions beside the ground truth made with
best.safetensors and the run's config.yaml. A part whose inputs are missing says why instead
of failing the whole page.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from rc2l.errors import RC2LError

log = logging.getLogger("rc2l.report")

MODEL_COLOURS = {"student": "tab:blue", "teacher": "tab:orange"}


# ----------------------------------------------------------------------------- metrics


def read_run_log(path: Path) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """metrics.jsonl → (train records, eval records, run records (each start and the end), warnings)."""
    from rc2l.engine.metrics_log import read_records

    recs, warns = read_records(path)
    train = [r for r in recs if r.get("type") == "train"]
    evals = [r for r in recs if "miou" in r]
    starts = [r for r in recs if r.get("type") in ("start", "end")]
    return train, evals, starts, warns


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def method_terms() -> set[str]:
    """The loss terms the registered methods log besides the "loss*" ones."""
    from rc2l.engine.methods import METHODS

    return {t for cls in METHODS.values() for t in cls.loss_terms}


def loss_keys(train: list[dict]) -> list[str]:
    """Numeric keys that are loss terms ("loss*" or a method's term), in first-seen order."""
    terms = method_terms()
    keys: list[str] = []
    for r in train:
        for k, v in r.items():
            if k not in keys and _num(v) and (k.startswith("loss") or k in terms):
                keys.append(k)
    return keys


def best_record(evals: list[dict]) -> dict | None:
    """The evaluation the trainer saved as best.safetensors: the first with the highest mIoU."""
    best = None
    for r in evals:
        if _num(r.get("miou")) and not math.isnan(r["miou"]) and (best is None or r["miou"] > best["miou"]):
            best = r
    return best


def last_records(evals: list[dict]) -> list[dict]:
    """The records of the last evaluation step (one per model)."""
    if not evals:
        return []
    step = max(r["step"] for r in evals)
    return [r for r in evals if r["step"] == step]


# ----------------------------------------------------------------------------- plots


def _figure(w: float = 7.5, h: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on savefig

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig


def plot_losses(train: list[dict], path: Path) -> list[str]:
    """Total loss (left) and every other term (right) against step. → the keys drawn."""
    keys = loss_keys(train)
    if not keys:
        return []
    total = [k for k in keys if k == "loss"]
    terms = [k for k in keys if k != "loss"]
    panels = [p for p in (total, terms) if p]
    fig = _figure(7.5 if len(panels) == 1 else 11, 4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ks in zip(axes, panels):
        lo, hi = math.inf, -math.inf
        for k in ks:
            pts = [(r["step"], r[k]) for r in train if _num(r.get(k)) and math.isfinite(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=k, marker="." if len(xs) < 30 else None)
                lo, hi = min(lo, min(ys)), max(hi, max(ys))
        if ax.lines and lo > 0 and hi / lo > 20:  # log only where values span orders of magnitude
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title("total loss" if ks is total else "loss terms")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.savefig(path)
    return keys


def plot_miou(evals: list[dict], path: Path) -> list[str]:
    """Val mIoU against step, one line per model (student / teacher). → the models drawn."""
    fig = _figure()
    ax = fig.subplots()
    models = []
    for r in evals:
        if r.get("model", "student") not in models:
            models.append(r.get("model", "student"))
    for m in models:
        pts = sorted((r["step"], r["miou"]) for r in evals if r.get("model", "student") == m and _num(r["miou"]))
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=m, color=MODEL_COLOURS.get(m))
    ax.set_xlabel("step")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)
    return models


def plot_per_class(series: list[tuple[str, list[float]]], class_names: list[str], path: Path) -> None:
    """Grouped bars: one group per class, one bar per (label, per-class IoU) series; NaN
    (class absent from ground truth and prediction) is drawn as a gap."""
    k = len(class_names)
    fig = _figure(max(7.5, 0.45 * k * max(1, len(series)) + 2), 4.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(k)
    for i, (label, values) in enumerate(series):
        v = np.array([np.nan if not _num(a) else a for a in values[:k]], dtype=float)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(v, nan=0.0), width, label=label)
    ax.set_xticks(x, class_names, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    """Confusion counts (K, K), rows = ground truth → each row divided by its sum (0 if empty)."""
    cm = np.asarray(cm, dtype=np.float64)
    s = cm.sum(1, keepdims=True)
    return np.divide(cm, s, out=np.zeros_like(cm), where=s > 0)


def plot_confusion(cm: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    norm = normalise_rows(np.asarray(cm))
    k = norm.shape[0]
    side = min(12.0, max(4.5, 0.5 * k + 2))
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(k), class_names[:k], rotation=90, fontsize=7)
    ax.set_yticks(range(k), class_names[:k], fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path)


# ----------------------------------------------------------------------------- gallery


def colourise(labels: np.ndarray, palette: list[tuple[int, int, int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices → uint8 (H, W, 3); ignore / out-of-range pixels are white."""
    lut = np.full((256, 3), 255, np.uint8)
    for i, c in enumerate(palette[:256]):
        lut[i] = c
    lut[ignore_index] = (255, 255, 255)
    return lut[labels.astype(np.int64).clip(0, 255)]


def make_gallery(run_dir: Path, n: int, out_dir: Path, device: str = "cpu") -> tuple[list[tuple[Path, str]], list]:
    """Predict ``n`` val images (evenly spaced) with best.safetensors in the run's eval mode.
    → ([(png path, caption)], class palette). Each PNG is image | ground truth | prediction."""
    import torch
    from PIL import Image

    from rc2l.config import load_config
    from rc2l.data.build import build_datasets
    from rc2l.engine.evaluate import center_crop, predict_scores
    from rc2l.infer.loading import load_torch_model, torch_score_fn

    weights, cfg_path = run_dir / "best.safetensors", run_dir / "config.yaml"
    for p in (weights, cfg_path):
        if not p.is_file():
            raise RC2LError(f"{p.name} not found in {run_dir}")
    cfg = load_config(cfg_path, ["model.pretrained=none"])
    dev = torch.device(device)
    model, info, _ = load_torch_model(weights, cfg_path, dev)
    ds = build_datasets(cfg, only_val=True)["val"]
    if len(ds) == 0:
        raise RC2LError("the val split is empty")
    idx = sorted({int(round(i)) for i in np.linspace(0, len(ds) - 1, min(n, len(ds)))})
    crop = tuple(cfg.eval.crop_size or cfg.data.crop_size)
    score_fn = torch_score_fn(model, dev)
    out = []
    for j, i in enumerate(idx):
        s = ds[i]
        if s is None:
            continue
        img, mask = s["image"][None].to(dev), s["mask"]
        with torch.no_grad():
            scores = predict_scores(score_fn, img, cfg.eval.mode, crop, cfg.eval.stride_ratio, info.num_classes)
        if cfg.eval.mode == "center_crop":
            img, mask = center_crop(img, crop), center_crop(mask, crop)
        pred = scores.argmax(1)[0].cpu().numpy()
        rgb = (img[0].cpu().permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        gt = colourise(mask.numpy(), info.palette)
        pr = colourise(pred, info.palette)
        h, w = rgb.shape[:2]
        gap = np.full((h, 4, 3), 255, np.uint8)
        strip = np.concatenate([rgb, gap, gt, gap, pr], axis=1)
        path = out_dir / f"gallery_{j:03d}.png"
        Image.fromarray(strip).save(path)
        valid = mask.numpy() != 255
        acc = float((pred[valid] == mask.numpy()[valid]).mean() * 100) if valid.any() else float("nan")
        out.append((path, f"{s['id']} ({w}x{h}), pixel accuracy {acc:.1f}%"))
    return out, list(zip(info.class_names, info.palette))


# ----------------------------------------------------------------------------- page


def _class_names(run_dir: Path, k: int) -> list[str]:
    """From best/last weights' metadata, else the config's dataset, else class_i."""
    for name in ("best.safetensors", "last.safetensors"):
        try:
            from rc2l.engine.checkpoint import read_meta

            meta = read_meta(run_dir / name)
            names = json.loads(meta.get("class_names", "null"))
            if isinstance(names, list) and len(names) == k:
                return [str(x) for x in names]
        except (RC2LError, ValueError):
            continue
    try:
        from rc2l.config import load_config
        from rc2l.infer.loading import classes_from_config

        names, _ = classes_from_config(load_config(run_dir / "config.yaml"))
        if len(names) == k:
            return names
    except Exception:  # a best-effort label source; the numbers do not depend on it
        pass
    return [f"class_{i}" for i in range(k)]


def _fmt(v) -> str:
    return f"{v:.2f}" if _num(v) and math.isfinite(v) else "n/a"


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
img.plot{max-width:100%} img.gal{height:170px;image-rendering:pixelated;margin:.2em 0}
.swatch{display:inline-block;width:1em;height:1em;border:1px solid #888;vertical-align:middle;margin-right:.3em}
.note{color:#a33} figure{margin:.5em 0} figcaption{font-size:.85em;color:#555}
"""


class Page:
    """HTML pieces whose image paths are relative to the page file ``out``."""

    def __init__(self, out: Path):
        self.out, self.parts = out, []

    def src(self, p: Path) -> str:
        return html.escape(Path(os.path.relpath(p.resolve(), self.out.resolve().parent)).as_posix())

    def img(self, p: Path, alt: str, cls: str = "plot") -> str:
        return f'<img class="{cls}" src="{self.src(p)}" alt="{html.escape(alt)}">'

    def note(self, msg: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(msg)}</p>')

    def add(self, text: str) -> None:
        self.parts.append(text)

    def html(self, title: str) -> str:
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
            + "\n".join(self.parts)
            + "\n</body></html>\n"
        )


def _method_dataset(cfg_text: str) -> tuple[str, str]:
    """(method, dataset name) from config.yaml's text; blanks if it does not parse."""
    try:
        from rc2l.config import yaml_load

        c = yaml_load(cfg_text) or {}
        return str(c.get("method", "")), str((c.get("data") or {}).get("name", ""))
    except Exception:  # the summary line is optional
        return "", ""


def summary_section(page: Page, run_dir: Path, run_log: tuple, cfg_text: str) -> None:
    """The table at the top: run folder, method, dataset, steps, best/last mIoU, who ran which steps."""
    train, evals, starts, warns = run_log
    method, dataset = _method_dataset(cfg_text) if cfg_text else ("", "")
    best = best_record(evals)
    rows = [
        ("run folder", str(run_dir.resolve())),
        ("method", method or "?"),
        ("dataset", dataset or "?"),
        ("train steps logged", str(int(max((r["step"] for r in train), default=0)))),
    ]
    if best:
        rows.append(
            (
                "best val mIoU",
                f"{_fmt(best['miou'])} ({best.get('model', 'student')}, step {best['step']}, "
                f"{best.get('mode', '?')} mode, crop {best.get('crop', '?')}, split {best.get('split', '?')})",
            )
        )
    for r in last_records(evals):
        rows.append((f"last val mIoU ({r.get('model', 'student')})", f"{_fmt(r['miou'])} (step {r['step']})"))
    for r in starts:  # one per start or resume: which code ran which steps, where; then the end
        if r["type"] == "end":
            took = f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") is not None else "unknown (an earlier part's is)"
            rows.append((f"finished at step {r['step']}", f"wall time {took}, every part of the run counted"))
            continue
        rows.append(
            (
                "resumed at step " + str(r["step"]) if r["step"] else "started",
                f"commit {r.get('commit', '?')}, torch {r.get('torch', '?')}, {r.get('device', '?')}",
            )
        )
    page.add(
        "<table>"
        + "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>" for a, b in rows)
        + "</table>"
    )
    for w in warns:
        page.note(w)


def curves_section(page: Page, train: list[dict], evals: list[dict], img_dir: Path) -> None:
    """Loss terms and val mIoU against step."""
    page.add("<h2>Training losses</h2>")
    p = img_dir / "losses.png"
    keys = plot_losses(train, p) if train else []
    if keys:
        page.add(page.img(p, "loss terms against step") + f"<p>terms: {html.escape(', '.join(keys))}</p>")
    else:
        page.note("no loss terms in the train records")
    page.add("<h2>Validation mIoU</h2>")
    if evals:
        p = img_dir / "miou.png"
        plot_miou(evals, p)
        page.add(page.img(p, "val mIoU against step"))
    else:
        page.note("no evaluation records yet")


def classes_section(page: Page, run_dir: Path, evals: list[dict], img_dir: Path) -> None:
    """Per-class IoU of the best and last evaluations, and the best one's confusion matrix."""
    best, last = best_record(evals), last_records(evals)
    k = len(best["per_class"]) if best and isinstance(best.get("per_class"), list) else 0
    names = _class_names(run_dir, k) if k else []
    page.add("<h2>Per-class IoU</h2>")
    if best and k:
        series = [(f"best: {best.get('model', 'student')} @ step {best['step']}", best["per_class"])]
        series += [
            (f"last: {r.get('model', 'student')} @ step {r['step']}", r["per_class"])
            for r in last
            if r is not best and isinstance(r.get("per_class"), list)
        ]
        p = img_dir / "per_class.png"
        plot_per_class(series, names, p)
        page.add(page.img(p, "per-class IoU"))
        head = "".join(f"<th>{html.escape(lbl)}</th>" for lbl, _ in series)
        body = "".join(
            f"<tr><td>{html.escape(n)}</td>"
            + "".join(f"<td>{_fmt(v[i] if i < len(v) else None)}</td>" for _, v in series)
            + "</tr>"
            for i, n in enumerate(names)
        )
        page.add(f"<details><summary>table</summary><table><tr><th>class</th>{head}</tr>{body}</table></details>")
    else:
        page.note("no evaluation with per-class IoU")
    page.add("<h2>Confusion matrix</h2>")
    if best and isinstance(best.get("confusion"), list) and len(best["confusion"]) == k:
        p = img_dir / "confusion.png"
        title = f"best eval ({best.get('model', 'student')}, step {best['step']}), rows normalised to 1"
        plot_confusion(best["confusion"], names, p, title)
        page.add(page.img(p, "row-normalised confusion matrix"))
    else:
        page.note("the best evaluation record has no confusion matrix" if best else "no evaluation records yet")


def gallery_section(page: Page, run_dir: Path, gallery: int, img_dir: Path, device: str) -> None:
    """Val predictions beside the ground truth, or why there are none."""
    page.add("<h2>Val predictions (image | ground truth | prediction)</h2>")
    if gallery <= 0:
        page.note("gallery disabled (--gallery 0)")
        return
    try:
        items, legend = make_gallery(run_dir, gallery, img_dir, device)
    except Exception as e:  # data not on this machine, no best weights yet, ...
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        log.warning("gallery skipped: %s", msg)
        page.note(f"gallery not available: {msg}")
        return
    page.add(
        "<p>"
        + " ".join(
            f'<span><span class="swatch" style="background:rgb{tuple(int(c) for c in rgb)}"></span>'
            f"{html.escape(n)}</span>&nbsp;"
            for n, rgb in legend
        )
        + "(white: ignored)</p>"
    )
    page.add("<p>model: best.safetensors; predicted in the eval mode of the run's config.yaml</p>")
    for p, cap in items:
        page.add(f"<figure>{page.img(p, cap, 'gal')}<figcaption>{html.escape(cap)}</figcaption></figure>")


def build_report(run_dir: str | Path, out: str | Path | None = None, gallery: int = 6, device: str = "cpu") -> Path:
    """Write the plots to RUN_DIR/report/ and the page to ``out`` (default RUN_DIR/report.html)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RC2LError(f"run folder not found: {run_dir}")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise RC2LError(f"{metrics} not found (is {run_dir} a training run folder?)")
    out = Path(out) if out else run_dir / "report.html"
    img_dir = run_dir / "report"
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in img_dir.glob("gallery_*.png"):  # a smaller --gallery must not leave stale strips
        old.unlink()
    run_log = read_run_log(metrics)
    train, evals = run_log[0], run_log[1]
    cfg_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    page = Page(out)
    summary_section(page, run_dir, run_log, cfg_text)
    curves_section(page, train, evals, img_dir)
    classes_section(page, run_dir, evals, img_dir)
    gallery_section(page, run_dir, gallery, img_dir, device)
    if cfg_text:
        page.add(f"<h2>Config</h2><details><summary>config.yaml</summary><pre>{html.escape(cfg_text)}</pre></details>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page.html(f"rc2l run report: {run_dir.resolve().name}"), encoding="utf-8")
    return out
