"""`rc2l predict`: segment image files with a loaded model (rc2l.load) and write, per image, a
class-index palette PNG, a colour overlay and optionally a confidence map.

Steps: expand the inputs (files, folders, globs; what a folder skips is named) → unique output
names → read headers → groups of same-size images → model scores → the output files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rc2l.data.imageio import header_size, read_image
from rc2l.errors import DataError
from rc2l.infer.images import expand_inputs
from rc2l.infer.model import Model, same_size_groups
from rc2l.infer.scores import confidence

OVERLAY_ALPHA = 0.5


def palette_png(pred: np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    """(H, W) class indices → 'P' PNG image whose indices are the classes."""
    im = Image.fromarray(np.ascontiguousarray(pred, dtype=np.uint8))  # "L"; putpalette makes it "P"
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def overlay(
    rgb: np.ndarray, pred: np.ndarray, palette: list[tuple[int, int, int]], alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """uint8 (H, W, 3) image, (H, W) classes → uint8 (H, W, 3) blend."""
    colours = np.asarray(palette, np.float32)[pred]
    return np.clip(rgb.astype(np.float32) * (1 - alpha) + colours * alpha + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Job:
    path: Path
    name: str  # output name without extension, may contain "/"
    size: tuple[int, int] | None = None  # (H, W) from the header, upright


def assign_names(found: list[tuple[Path, str]], confidence_maps: bool) -> tuple[list[Job], list[str]]:
    """Unique output names: the later of two inputs with the same name gets _2, _3, ...
    (checked against every file an image writes, so x_overlay.jpg cannot clobber x's overlay)."""
    suffixes = ["", "_overlay"] + (["_conf"] if confidence_maps else [])
    taken: set[str] = set()
    jobs, notes = [], []
    for path, base in found:
        name, k = base, 1
        while any((name + s).lower() in taken for s in suffixes):
            k += 1
            name = f"{base}_{k}"
        if name != base:
            notes.append(f"note: {path}: output name '{base}' is taken, writing '{name}.png' instead")
        taken.update((name + s).lower() for s in suffixes)
        jobs.append(Job(path, name))
    return jobs, notes


class Counts:
    """Written / failed images, and where messages go (above the progress bar when there is one)."""

    def __init__(self, failed: int = 0):
        self.written, self.failed, self.bar = 0, failed, None

    def error(self, msg: str) -> None:
        self.failed += 1
        if self.bar is not None:
            self.bar.write(f"error: {msg}", file=sys.stderr)
        else:
            print(f"error: {msg}", file=sys.stderr)

    def done(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


def collect_jobs(inputs: list[str], out: Path, confidence_maps: bool, counts: Counts) -> tuple[list[Job], int]:
    """INPUTs → (jobs with unique names and header sizes, images found); failures are counted
    and named."""
    found, failures, notes = expand_inputs(inputs, out)
    for msg in failures:
        counts.error(msg)
    jobs, name_notes = assign_names(found, confidence_maps)
    for n in notes + name_notes:
        print(n, file=sys.stderr)
    ok = []
    for j in jobs:
        try:
            j.size = header_size(j.path)
            ok.append(j)
        except DataError as e:
            counts.error(str(e))
    return ok, len(jobs)


def describe(model: Model, n: int, out: Path, stride_ratio: float) -> str:
    info = model.info
    win = f"{info.window[0]}x{info.window[1]} (stride {stride_ratio:.3g})" if info.window else "none (whole images)"
    rs = f", resized to {info.resize[0]}x{info.resize[1]} first" if info.resize else ""
    return f"predict: {n} images, backend {model.backend} on {model.device}, window {win}{rs} -> {out}"


def read_group(group: list[Job], counts: Counts) -> tuple[list[Job], list[np.ndarray]]:
    """Decode a group's images; one that fails (or decodes to another size) is counted and dropped."""
    members, arrays = [], []
    for j in group:
        try:
            rgb = read_image(j.path)
            if rgb.shape[:2] != j.size:
                raise DataError(f"cannot read image {j.path}: decoded size {rgb.shape[:2]} differs from its header")
            members.append(j)
            arrays.append(rgb)
        except DataError as e:
            counts.error(str(e))
            counts.done()
    return members, arrays


def write_outputs(job: Job, rgb: np.ndarray, pred: np.ndarray, conf: np.ndarray | None, palette, out: Path) -> None:
    """<out>/<name>.png, <name>_overlay.png and optionally <name>_conf.png (0..255)."""
    base = out / job.name
    base.parent.mkdir(parents=True, exist_ok=True)
    palette_png(pred, palette).save(base.with_name(base.name + ".png"))
    Image.fromarray(overlay(rgb, pred, palette)).save(base.with_name(base.name + "_overlay.png"))
    if conf is not None:
        c8 = np.clip(np.rint(conf * 255), 0, 255).astype(np.uint8)
        Image.fromarray(c8).save(base.with_name(base.name + "_conf.png"))


def predict_group(
    model: Model, group: list[Job], out: Path, confidence_maps: bool, stride_ratio: float, counts: Counts
) -> None:
    """One forward pass (or sliding windows) for a group of same-size images, then their files."""
    members, arrays = read_group(group, counts)
    if not members:
        return
    try:
        scores = model.scores(arrays, stride_ratio=stride_ratio, name=str(members[0].path))
    except Exception as e:  # e.g. out of memory on one huge image: report it, go on with the rest
        first = (str(e).strip().splitlines() or [""])[0][:200]
        for j in members:
            counts.error(f"{j.path}: inference failed ({type(e).__name__}: {first})")
        counts.done(len(members))
        return
    preds = model.labels(scores)
    confs = confidence(scores).numpy() if confidence_maps else None
    for b, (j, rgb) in enumerate(zip(members, arrays)):
        try:
            write_outputs(j, rgb, preds[b], None if confs is None else confs[b], model.palette, out)
            counts.written += 1
        except OSError as e:
            counts.error(f"{j.path}: cannot write output under {out} ({e})")
        counts.done()


def predict_files(
    model: Model,
    inputs: list[str],
    out: str | Path,
    confidence_maps: bool = False,
    batch_size: int = 4,
    stride_ratio: float = 2 / 3,
    progress: bool = True,
) -> int:
    """The `rc2l predict` verb on a loaded model → exit status (0 all written, 1 any failed)."""
    from tqdm import tqdm

    out = Path(out)
    counts = Counts()
    jobs, found = collect_jobs(inputs, out, confidence_maps, counts)
    if not found:
        print(f"0 written, {counts.failed} failed")
        return 1
    print(describe(model, found, out, stride_ratio), file=sys.stderr)
    counts.bar = tqdm(
        total=found,
        desc="predict",
        unit="img",
        dynamic_ncols=True,
        disable=not progress or None,
        file=sys.stderr,
        initial=found - len(jobs),
    )
    for idx in same_size_groups([j.size for j in jobs], batch_size):
        predict_group(model, [jobs[i] for i in idx], out, confidence_maps, stride_ratio, counts)
    counts.bar.close()
    print(f"{counts.written} written, {counts.failed} failed")
    return 0 if counts.failed == 0 else 1
