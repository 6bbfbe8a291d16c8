"""`rc2l predict`: segment image files with a trained model, in PyTorch or ONNX Runtime.

Everything the model needs besides pixels (class count, architecture, class names, palette,
training crop and resize) travels in the weights file's metadata, so ``--weights`` alone is
enough; ``--config`` overrides classes, palette, window and resize with its dataset's.
Large images go through the field's sliding window (window = training crop, stride 2/3).
"""
from __future__ import annotations

import glob
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image
from torch import Tensor

from rc2l.config import Config, ConfigError, ModelConfig, _merge, load_config
from rc2l.errors import CheckpointError, DataError, RC2LError

log = logging.getLogger("rc2l.predict")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ONNX_FORMAT = "rc2l-onnx-v1"
OVERLAY_ALPHA = 0.5

NAMING_HELP = (
    "Output names: <out>/<name>.png (class indices, palette PNG), <name>_overlay.png (colours over the "
    "image, alpha 0.5) and with --confidence <name>_conf.png (max of the class-normalised scores S, "
    "0..255). <name> is the image's stem; images found inside a FOLDER keep their path relative to "
    "that folder (a/x.jpg -> <out>/a/x.png). If two inputs still map to the same name (e.g. x.jpg in "
    "two folders given separately, or x.jpg and x.png), the later one gets a suffix: x_2, x_3, ... and "
    "a note says so. Exit status: 0 if every image was written, 1 if any failed, 2 on a usage error."
)


# ----------------------------------------------------------------------------- model + metadata


@dataclass
class InferInfo:
    """What inference needs to know besides the network."""

    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    window: tuple[int, int] | None = None  # sliding-window size (training crop), None = whole image
    resize: tuple[int, int] | None = None  # images are resized to this before the model (data.resize)
    model_cfg: dict = field(default_factory=dict)
    source: str = ""


def default_palette(n: int) -> list[tuple[int, int, int]]:
    from rc2l.data.datasets import _voc_palette

    return _voc_palette(max(n, 1))[:n]


def _json_meta(meta: dict, key: str, where: str):
    if key not in meta or meta[key] in ("", None):
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{where}: metadata key '{key}' is not valid JSON") from None


def _pair(v) -> tuple[int, int] | None:
    if not v:
        return None
    if len(v) != 2:
        raise ConfigError(f"expected [height, width], got {v!r}")
    return int(v[0]), int(v[1])


def _classes_from_config(cfg: Config) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The config dataset's class names and palette; a built-in dataset whose files are not
    on this machine still has them (only the user's 'folder' dataset needs its classes.txt)."""
    from rc2l.data.build import dataset_info
    from rc2l.data.datasets import READERS

    try:
        info = dataset_info(cfg)
        return list(info.class_names), [tuple(p) for p in info.palette]
    except DataError:
        reader = READERS.get(cfg.data.name)
        if reader is None or not reader.class_names:
            raise
        return list(reader.class_names), [tuple(p) for p in reader.palette]


def resolve_info(meta: dict, num_classes: int, where: str, config: str | Path | None,
                 sibling_config: Path | None = None) -> tuple[InferInfo, Config | None]:
    """Combine weights/ONNX metadata with an optional config (which wins) into InferInfo.

    ``sibling_config`` (the run folder's config.yaml) fills the window/resize only when the
    metadata lacks them (weights written before those keys existed)."""
    cfg = load_config(config) if config else None
    names = _json_meta(meta, "class_names", where)
    palette = _json_meta(meta, "palette", where)
    window = _pair(_json_meta(meta, "crop_size", where))
    resize = _pair(_json_meta(meta, "resize", where))
    if cfg is None and sibling_config is not None and sibling_config.is_file() and window is None:
        try:
            sib = load_config(sibling_config)
            window, resize = _pair(sib.data.crop_size), _pair(sib.data.resize)
        except ConfigError as e:
            log.warning("ignoring %s (%s)", sibling_config, e)
    if cfg is not None:
        names, palette = _classes_from_config(cfg)
        if len(names) != num_classes:
            raise ConfigError(f"{config}: dataset '{cfg.data.name}' has {len(names)} classes but {where} "
                              f"predicts {num_classes}")
        window, resize = _pair(cfg.data.crop_size), _pair(cfg.data.resize)
    if not names or len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    palette = [tuple(int(c) for c in p) for p in (palette or [])]
    if len(palette) < num_classes:
        palette = palette + default_palette(num_classes)[len(palette):]
    model_cfg = _json_meta(meta, "model", where) or {}
    return InferInfo(num_classes, names, palette[:num_classes], window, resize, model_cfg, where), cfg


def model_config(model_dict: dict | None, cfg: Config | None, where: str) -> ModelConfig:
    """The architecture from the weights' metadata (else the config); backbone weights are not
    loaded (the file holds them)."""
    if model_dict:
        mc = ModelConfig()
        _merge(mc, model_dict, "model.", f"{where} (model metadata)")
    elif cfg is not None:
        mc = cfg.model
    else:
        raise CheckpointError(f"{where}: no model architecture in the metadata; pass --config with the training config")
    mc.pretrained = "none"
    return mc


def load_torch_model(weights: str | Path, config: str | Path | None = None, device: str | torch.device = "cpu"):
    """→ (Segmenter in eval mode on ``device``, InferInfo, Config or None)."""
    from rc2l.engine.checkpoint import load_weights, model_config_from_weights, read_meta
    from rc2l.models.segmenter import build_model

    weights = Path(weights)
    num_classes, model_dict = model_config_from_weights(weights)
    meta = read_meta(weights)
    info, cfg = resolve_info(meta, num_classes, str(weights), config, weights.parent / "config.yaml")
    model = build_model(num_classes, model_config(model_dict, cfg, str(weights)))
    load_weights(model, weights)
    return model.to(device).eval(), info, cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RC2LError("--device cuda: no CUDA device is available")
    return torch.device(name)


def torch_score_fn(model: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    """images (B,3,h,w) float [0,1] → S upsampled (B,K,h,w) float32 on ``device``."""

    @torch.no_grad()
    def fn(x: Tensor) -> Tensor:
        return model.semantic_scores(x.to(device)).float()

    return fn


def onnx_session(path: str | Path, device: torch.device):
    """ONNX Runtime session: CUDA provider when asked for and available, else CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RC2LError("--backend onnx needs onnxruntime (pip install 'rc2l[export]')") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # ort raises its own exception types for unreadable/invalid models
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load ONNX model ({first[:300]})") from None


def load_onnx(path: str | Path, config: str | Path | None, device: torch.device):
    """→ (score_fn, InferInfo) for a model written by ``rc2l export``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    sess = onnx_session(path, device)
    meta = dict(sess.get_modelmeta().custom_metadata_map or {})
    if meta.get("format") != ONNX_FORMAT:
        raise CheckpointError(f"{path}: not written by rc2l export (no '{ONNX_FORMAT}' metadata)")
    info, _ = resolve_info(meta, int(meta["num_classes"]), str(path), config)
    name = sess.get_inputs()[0].name

    def fn(x: Tensor) -> Tensor:
        out = sess.run(None, {name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    return fn, info


# ----------------------------------------------------------------------------- inference core


def to_uint8_tensor(rgb: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) → uint8 (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def predict_batch(score_fn: Callable[[Tensor], Tensor], images: Tensor, info: InferInfo,
                  stride_ratio: float = 2 / 3, device: torch.device | str = "cpu") -> Tensor:
    """images: uint8 (B, 3, H, W), all the same size → scores (B, K, H, W) float32 on the CPU.

    Resized to ``info.resize`` first if set (as in training), scores bilinearly back to H×W.
    An image larger than the window in either side goes through ``sliding_window``, one image
    at a time; otherwise the batch is one forward pass."""
    from torchvision.transforms.v2 import functional as TF
    from torchvision.transforms.v2.functional import InterpolationMode

    from rc2l.engine.evaluate import sliding_window

    h0, w0 = images.shape[-2:]
    x = images
    if info.resize and tuple(x.shape[-2:]) != tuple(info.resize):
        x = TF.resize(x, list(info.resize), interpolation=InterpolationMode.BILINEAR, antialias=True)
    x = x.to(device).float().div_(255.0)
    h, w = x.shape[-2:]
    win = info.window
    if win and (h > win[0] or w > win[1]):
        scores = torch.cat([sliding_window(score_fn, x[i : i + 1], win, stride_ratio, info.num_classes)
                            for i in range(x.shape[0])])
    else:
        scores = score_fn(x).float()
    if (h, w) != (h0, w0):
        scores = Fn.interpolate(scores, size=(h0, w0), mode="bilinear", align_corners=False)
    return scores.cpu()


def confidence(scores: Tensor) -> Tensor:
    """scores S (…, K, H, W) ≥ 0 → max_k S_k / Σ_k S_k in [0, 1], (…, H, W)."""
    s = scores.clamp_min(0)
    return s.max(-3).values / s.sum(-3).clamp_min(1e-12)


def palette_png(pred: np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    """(H, W) class indices → 'P' PNG image whose indices are the classes."""
    im = Image.fromarray(np.ascontiguousarray(pred, dtype=np.uint8))  # "L"; putpalette makes it "P"
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def overlay(rgb: np.ndarray, pred: np.ndarray, palette: list[tuple[int, int, int]], alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (H, W, 3) image, (H, W) classes → uint8 (H, W, 3) blend."""
    colours = np.asarray(palette, np.float32)[pred]
    return np.clip(rgb.astype(np.float32) * (1 - alpha) + colours * alpha + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- inputs / names


@dataclass
class Job:
    path: Path
    name: str  # output name without extension, may contain "/"
    size: tuple[int, int] | None = None  # (H, W) from the header


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def expand_inputs(inputs: list[str], out_dir: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """INPUTs (files, folders, globs) → ([(path, base name)], [error lines]).

    Folders are searched recursively and keep relative subpaths; files under ``out_dir`` are
    skipped (a previous run's outputs); a file given twice is predicted once."""
    found: list[tuple[Path, str]] = []
    errors: list[str] = []
    seen: set[Path] = set()
    out_res = out_dir.resolve()

    def add(p: Path, name: str) -> None:
        r = p.resolve()
        if r in seen or out_res in r.parents:
            return
        seen.add(r)
        found.append((p, name))

    def add_folder(d: Path) -> int:
        n = 0
        for p in sorted(d.rglob("*")):
            if _is_image(p):
                add(p, p.relative_to(d).with_suffix("").as_posix())
                n += 1
        return n

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            if add_folder(p) == 0:
                errors.append(f"{item}: no images in this folder ({', '.join(IMAGE_EXTS)})")
        elif p.is_file():
            add(p, p.stem)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(str(p), recursive=True))
            n = 0
            for m in map(Path, matches):
                if m.is_dir():
                    n += add_folder(m)
                elif _is_image(m):
                    add(m, m.stem)
                    n += 1
            if n == 0:
                errors.append(f"{item}: no image matches this pattern")
        else:
            errors.append(f"{item}: no such file or folder")
    return found, errors


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


# ----------------------------------------------------------------------------- CLI


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images (files, folders, globs) with trained weights or an exported ONNX model",
        description="Write a class-index PNG, a colour overlay and optionally a confidence map per image. "
                    "Images larger than the window are predicted with a sliding window (stride 2/3).",
        epilog=NAMING_HELP,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    p.add_argument("--weights", required=True, help="a .safetensors file written by rc2l train, or a .onnx from rc2l export")
    p.add_argument("--config", help="training config: its dataset's class names/palette, crop and resize override the metadata")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=["torch", "onnx"], help="default: onnx for a .onnx file, else torch")
    p.add_argument("--confidence", action="store_true", help="also write <name>_conf.png")
    p.add_argument("--batch-size", type=int, default=4, help="images of the same size per forward pass (default 4)")
    p.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                   help="sliding-window size (default: the training crop); 0 0 = always the whole image")
    p.add_argument("--stride-ratio", type=float, default=2 / 3, help="window stride / window size (default 2/3)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _err(msg: str, bar=None) -> None:
    if bar is not None:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr)


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the header (cheap; the full decode happens later and may still fail)."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def run(args) -> int:
    from tqdm import tqdm

    from rc2l.data.datasets import read_image

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if not 0 < args.stride_ratio <= 1:
        raise ConfigError("--stride-ratio must be in (0, 1]")
    device = resolve_device(args.device)
    weights = Path(args.weights)
    backend = args.backend or ("onnx" if weights.suffix.lower() == ".onnx" else "torch")
    if backend == "onnx":
        score_fn, info = load_onnx(weights, args.config, device)
    else:
        if weights.suffix.lower() == ".onnx":
            raise ConfigError(f"{weights} is an ONNX model: use --backend onnx")
        model, info, _ = load_torch_model(weights, args.config, device)
        score_fn = torch_score_fn(model, device)
    if args.window is not None:
        info.window = None if args.window[0] <= 0 or args.window[1] <= 0 else tuple(args.window)
    if info.num_classes > 256:
        raise ConfigError(f"{weights}: {info.num_classes} classes do not fit an 8-bit class PNG (at most 256)")
    # ONNX Runtime takes and returns host arrays (its CUDA provider copies by itself)
    compute_device = device if backend == "torch" else torch.device("cpu")

    out = Path(args.out)
    found, failures = expand_inputs(args.inputs, out)
    for msg in failures:
        _err(f"error: {msg}")
    jobs, notes = assign_names(found, args.confidence)
    for n in notes:
        print(n, file=sys.stderr)
    if not jobs:
        print(f"0 written, {len(failures)} failed")
        return 1

    failed = len(failures)
    written = 0
    ok_jobs = []
    for j in jobs:
        try:
            j.size = _header_size(j.path)
            ok_jobs.append(j)
        except DataError as e:
            failed += 1
            _err(f"error: {e}")
    win = f"{info.window[0]}x{info.window[1]} (stride {args.stride_ratio:.3g})" if info.window else "none (whole images)"
    rs = f", resized to {info.resize[0]}x{info.resize[1]} first" if info.resize else ""
    print(f"predict: {len(jobs)} images, backend {backend} on {device}, window {win}{rs} -> {out}", file=sys.stderr)

    order = sorted(range(len(ok_jobs)), key=lambda i: (ok_jobs[i].size, i))  # same sizes together
    groups: list[list[Job]] = []
    for i in order:
        j = ok_jobs[i]
        if groups and groups[-1][0].size == j.size and len(groups[-1]) < args.batch_size:
            groups[-1].append(j)
        else:
            groups.append([j])

    bar = tqdm(total=len(jobs), desc="predict", unit="img", dynamic_ncols=True, disable=args.no_progress or None,
               file=sys.stderr)
    bar.update(len(jobs) - len(ok_jobs))
    for group in groups:
        arrays, members = [], []
        for j in group:
            try:
                rgb = read_image(j.path)
                if rgb.shape[:2] != j.size:
                    raise DataError(f"cannot read image {j.path}: decoded size {rgb.shape[:2]} differs from its header")
                arrays.append(rgb)
                members.append(j)
            except DataError as e:
                failed += 1
                _err(f"error: {e}", bar)
                bar.update(1)
        if not members:
            continue
        batch = torch.stack([to_uint8_tensor(a) for a in arrays])
        try:
            scores = predict_batch(score_fn, batch, info, args.stride_ratio, compute_device)
        except Exception as e:  # e.g. out of memory on one huge image: report it, go on with the rest
            first = (str(e).strip().splitlines() or [""])[0][:200]
            for j in members:
                failed += 1
                _err(f"error: {j.path}: inference failed ({type(e).__name__}: {first})", bar)
            bar.update(len(members))
            continue
        preds = scores.argmax(1).numpy().astype(np.uint8)
        confs = confidence(scores).numpy() if args.confidence else None
        for b, (j, rgb) in enumerate(zip(members, arrays)):
            try:
                base = out / j.name
                base.parent.mkdir(parents=True, exist_ok=True)
                palette_png(preds[b], info.palette).save(base.with_name(base.name + ".png"))
                Image.fromarray(overlay(rgb, preds[b], info.palette)).save(base.with_name(base.name + "_overlay.png"))
                if confs is not None:
                    c8 = np.clip(np.rint(confs[b] * 255), 0, 255).astype(np.uint8)
                    Image.fromarray(c8).save(base.with_name(base.name + "_conf.png"))
                written += 1
            except OSError as e:
                failed += 1
                _err(f"error: {j.path}: cannot write output under {out} ({e})", bar)
            bar.update(1)
    bar.close()
    print(f"{written} written, {failed} failed")
    return 0 if failed == 0 else 1
