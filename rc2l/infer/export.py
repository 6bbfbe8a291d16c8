"""`rc2l export`: the segmenter as ONNX, images (B,3,H,W) float [0,1] → scores (B,K,H,W).

Exporter: the TorchScript-based one (``dynamo=False``) with dynamic batch/height/width. Measured
with torch 2.14 on this project's models: it exports in ~1 s and matches PyTorch to ~1e-6 at any
size, including sizes that are not multiples of 32 (timm's TF "same" padding of EfficientNet-Lite0
is traced as shape arithmetic, not constants). The torch.export-based exporter (``dynamo=True``)
took over 10 minutes on EfficientNet-Lite0 and, at opset 17, wrote a Split node ONNX Runtime
rejects. Class names, palette, crop and resize go into the model's ``metadata_props`` so that
``rc2l predict --weights model.onnx`` needs no other file. Every export is checked against
PyTorch with ONNX Runtime (a random 2×3×72×104 batch, plus ``--check IMAGE``). The same verb
writes a shareable model folder (``--model-dir``, see rc2l/engine/model_dir.py).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rc2l.data.imageio import read_image
from rc2l.errors import RC2LError
from rc2l.infer.loading import ONNX_FORMAT, InferInfo, load_torch_model, onnx_session, resolve_source
from rc2l.infer.scores import to_uint8_tensor

DEFAULT_TOL = 1e-3


class SemanticScores(nn.Module):
    """The graph that is exported: images (B,3,H,W) float [0,1] → S upsampled, (B,K,H,W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.semantic_scores(images)


def onnx_metadata(info: InferInfo, weights: str | Path) -> dict[str, str]:
    return {
        "format": ONNX_FORMAT,
        "num_classes": str(info.num_classes),
        "class_names": json.dumps(info.class_names),
        "palette": json.dumps([list(p) for p in info.palette]),
        "crop_size": json.dumps(list(info.window or [])),
        "resize": json.dumps(list(info.resize or [])),
        "model": json.dumps(info.model_cfg, sort_keys=True),
        "source_weights": Path(weights).name,
        "input": "images: float32 (B, 3, H, W) RGB in [0, 1], any B/H/W",
        "output": "scores: float32 (B, K, H, W) semantic scores S; prediction = argmax over K",
    }


def export_onnx(
    model: nn.Module,
    path: str | Path,
    opset: int = 17,
    metadata: dict[str, str] | None = None,
    sample_hw: tuple[int, int] = (64, 64),
) -> None:
    """Trace ``SemanticScores(model)`` on a (1,3,*sample_hw) input and write ``path`` atomically,
    with dynamic batch, height and width and ``metadata`` in metadata_props."""
    import onnx

    from rc2l.engine.checkpoint import atomic_write

    wrapper = SemanticScores(model).eval().cpu()
    x = torch.rand(1, 3, *sample_hw, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.trace.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter" notice (choice explained above)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape->int casts; parity is checked after
            torch.onnx.export(
                wrapper,
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=["images"],
                output_names=["scores"],
                dynamic_axes={
                    "images": {0: "batch", 2: "height", 3: "width"},
                    "scores": {0: "batch", 2: "height", 3: "width"},
                },
            )
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    del proto.metadata_props[:]
    for k, v in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    atomic_write(path, lambda t: onnx.save(proto, t))


def compare(torch_scores: np.ndarray, ort_scores: np.ndarray, tol: float = DEFAULT_TOL) -> dict:
    """Parity of two (B,K,H,W) score arrays: max |Δ|, pixels whose argmax differs, and how
    many of those are real (torch's top-2 margin larger than 2·tol, so not a near-tie that
    rounding may flip)."""
    diff = float(np.abs(torch_scores - ort_scores).max())
    a, b = torch_scores.argmax(1), ort_scores.argmax(1)
    differ = a != b
    top2 = np.sort(torch_scores, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    real = int((differ & (margin > 2 * tol)).sum())
    return {
        "max_abs_diff": diff,
        "argmax_differ": int(differ.sum()),
        "argmax_real_differ": real,
        "pixels": int(a.size),
        "ok": diff <= tol and real == 0,
    }


def check_parity(model: nn.Module, onnx_path: str | Path, images: Tensor, tol: float = DEFAULT_TOL) -> dict:
    """images (B,3,H,W) float [0,1]: run PyTorch and ONNX Runtime (CPU) and :func:`compare`."""
    with torch.no_grad():
        ref = SemanticScores(model).eval()(images).float().numpy()
    sess = onnx_session(onnx_path, torch.device("cpu"))
    got = sess.run(None, {sess.get_inputs()[0].name: images.numpy().astype(np.float32)})[0]
    if got.shape != ref.shape:
        return {
            "max_abs_diff": float("inf"),
            "argmax_differ": -1,
            "argmax_real_differ": -1,
            "pixels": int(np.prod(ref.shape)) // ref.shape[1],
            "ok": False,
            "shape": f"ONNX output {got.shape} != PyTorch {ref.shape}",
        }
    return compare(ref, got, tol)


def _report_line(what: str, r: dict) -> str:
    if "shape" in r:
        return f"check {what}: FAILED, {r['shape']}"
    same = (
        "identical"
        if r["argmax_differ"] == 0
        else (f"{r['argmax_differ']} of {r['pixels']} pixels differ ({r['argmax_real_differ']} beyond ties)")
    )
    return (
        f"check {what}: max |scores(onnx) - scores(torch)| = {r['max_abs_diff']:.3g}; argmax {same}"
        f" -> {'ok' if r['ok'] else 'FAILED'}"
    )


def export_and_check(
    weights: str | Path,
    onnx_path: str | Path,
    config: str | Path | None = None,
    opset: int = 17,
    check: str | Path | None = None,
    tol: float = DEFAULT_TOL,
    int8: dict | None = None,
) -> int:
    """Export ``weights`` (file or model/run folder) to ONNX, check parity on a random batch
    (and ``check``, an image at its own size), print one line each → exit status. ``int8``:
    {"calibrate": [inputs], "count": n, "min_agreement": a, "form": f} also writes <onnx>.int8.onnx."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise RC2LError("rc2l export needs onnx and onnxruntime (pip install 'rc2l[export]')") from None
    model, info, _ = load_torch_model(weights, config, "cpu")
    checks = [("random 2x3x72x104", torch.rand(2, 3, 72, 104, generator=torch.Generator().manual_seed(0)))]
    if check:
        img = to_uint8_tensor(read_image(Path(check)))[None].float() / 255.0
        checks.append((f"{check} (1x3x{img.shape[2]}x{img.shape[3]})", img))
    export_onnx(model, onnx_path, opset, onnx_metadata(info, info.source))
    size = Path(onnx_path).stat().st_size / 2**20
    print(f"wrote {onnx_path} ({size:.1f} MiB, opset {opset}, {info.num_classes} classes, dynamic batch/height/width)")
    ok = True
    for what, x in checks:
        r = check_parity(model, onnx_path, x, tol)
        print(_report_line(what, r))
        ok &= r["ok"]
    if not ok:
        print(f"error: the ONNX model does not match PyTorch within {tol:g}", file=sys.stderr)
        return 1
    if int8:
        write_int8(Path(onnx_path), info, int8)
    return 0


def int8_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + ".int8.onnx")


def write_int8(onnx_path: Path, info: InferInfo, opts: dict) -> Path:
    """The int8 sibling of an exported fp32 model (rc2l/infer/quantize.py), calibrated on
    ``opts["calibrate"]`` images at the model's training resize."""
    from rc2l.infer.quantize import DEFAULT_MIN_AGREEMENT, calibration_images, quantize_int8

    images = calibration_images(opts["calibrate"], opts.get("count", 32), list(info.resize or []))
    out = int8_path(onnx_path)
    r = quantize_int8(
        onnx_path, out, images, opts.get("min_agreement", DEFAULT_MIN_AGREEMENT), opts.get("form", "portable")
    )
    where = "every x86 CPU" if r["form"] == "portable" else "CPUs with VNNI or not x86"
    print(
        f"wrote {out} ({r['mib']:.1f} MiB, int8 static QDQ, {r['form']} form for {where}; argmax agrees with fp32 on {r['agreement']:.2%} of "
        f"{r['images']} calibration images' pixels)"
    )
    return out


def export_model_dir(weights: str | Path, out_dir: str | Path, config: str | Path | None = None) -> Path:
    """Any weights (file, run folder, model folder, hf://) → a shareable model folder; the
    training config is ``config``, else the run folder's config.yaml, else the weights' model."""
    from rc2l.config import load_config, to_dict
    from rc2l.engine.model_dir import write_model_dir

    src = resolve_source(weights)
    if src.kind != "torch":
        raise RC2LError(f"{src.file}: a model folder is written from PyTorch weights, not ONNX")
    _, info, cfg = load_torch_model(src.file, config, "cpu", source=src)
    yaml_path = src.sibling_yaml
    if cfg is None and yaml_path is not None and yaml_path.is_file():
        cfg = load_config(yaml_path)
    cfg_dict = to_dict(cfg) if cfg is not None else {"model": info.model_cfg}
    extra = {"class_names": info.class_names, "palette": [list(p) for p in info.palette]}
    if src.folder_json is not None:  # re-exporting a model folder keeps its provenance
        old = json.loads(src.folder_json.read_text())
        extra.update({k: old[k] for k in ("command", "labeled", "commit", "dataset") if old.get(k) not in (None, "")})
    out = write_model_dir(out_dir, src.file, cfg_dict, extra)
    print(f"wrote model folder {out} (model.safetensors, config.json, config.yaml, README.md) from {src.file}")
    return out
