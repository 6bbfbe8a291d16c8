"""`rc2l export`: the segmenter as ONNX, images (B,3,H,W) float [0,1] → scores (B,K,H,W).

Exporter: the TorchScript-based one (``dynamo=False``) with dynamic batch/height/width. Measured
with torch 2.14 on this project's models: it exports in ~1 s and matches PyTorch to ~1e-6 at any
size, including sizes that are not multiples of 32 (timm's TF "same" padding of EfficientNet-Lite0
is traced as shape arithmetic, not constants). The torch.export-based exporter (``dynamo=True``)
took over 10 minutes on EfficientNet-Lite0 and, at opset 17, wrote a Split node ONNX Runtime
rejects. Class names, palette, crop and resize go into the model's ``metadata_props`` so that
``rc2l predict --weights model.onnx`` needs no other file. Every export is checked against
PyTorch with ONNX Runtime (a random 2×3×72×104 batch, plus ``--check IMAGE``).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rc2l.errors import RC2LError
from rc2l.infer.predict import ONNX_FORMAT, InferInfo, load_torch_model, onnx_session

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


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17, metadata: dict[str, str] | None = None,
                sample_hw: tuple[int, int] = (64, 64)) -> None:
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
                wrapper, (x,), str(tmp), dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=["images"], output_names=["scores"],
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                              "scores": {0: "batch", 2: "height", 3: "width"}},
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
    return {"max_abs_diff": diff, "argmax_differ": int(differ.sum()), "argmax_real_differ": real,
            "pixels": int(a.size), "ok": diff <= tol and real == 0}


def check_parity(model: nn.Module, onnx_path: str | Path, images: Tensor, tol: float = DEFAULT_TOL) -> dict:
    """images (B,3,H,W) float [0,1]: run PyTorch and ONNX Runtime (CPU) and :func:`compare`."""
    with torch.no_grad():
        ref = SemanticScores(model).eval()(images).float().numpy()
    sess = onnx_session(onnx_path, torch.device("cpu"))
    got = sess.run(None, {sess.get_inputs()[0].name: images.numpy().astype(np.float32)})[0]
    if got.shape != ref.shape:
        return {"max_abs_diff": float("inf"), "argmax_differ": -1, "argmax_real_differ": -1,
                "pixels": int(np.prod(ref.shape)) // ref.shape[1], "ok": False,
                "shape": f"ONNX output {got.shape} != PyTorch {ref.shape}"}
    return compare(ref, got, tol)


def _report_line(what: str, r: dict) -> str:
    if "shape" in r:
        return f"check {what}: FAILED, {r['shape']}"
    same = "identical" if r["argmax_differ"] == 0 else (
        f"{r['argmax_differ']} of {r['pixels']} pixels differ ({r['argmax_real_differ']} beyond ties)")
    return (f"check {what}: max |scores(onnx) - scores(torch)| = {r['max_abs_diff']:.3g}; argmax {same}"
            f" -> {'ok' if r['ok'] else 'FAILED'}")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export trained weights to ONNX (images [0,1] -> semantic scores, dynamic batch/height/width)",
        description="Write an ONNX model: input 'images' float32 (B,3,H,W) RGB in [0,1], output 'scores' "
                    "(B,K,H,W); argmax over K is the prediction. Parity with PyTorch is checked with ONNX Runtime.",
    )
    p.add_argument("--weights", required=True, help="a .safetensors file written by rc2l train")
    p.add_argument("--config", help="training config (its dataset's classes/palette/crop override the metadata)")
    p.add_argument("--onnx", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--check", metavar="IMAGE", help="also check parity on this image (at its own size)")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help=f"max allowed |Δscores| (default {DEFAULT_TOL:g})")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise RC2LError("rc2l export needs onnx and onnxruntime (pip install 'rc2l[export]')") from None
    from rc2l.data.datasets import read_image
    from rc2l.infer.predict import to_uint8_tensor

    model, info, _ = load_torch_model(args.weights, args.config, "cpu")
    check_image = None
    if args.check:
        check_image = to_uint8_tensor(read_image(Path(args.check)))[None].float() / 255.0
    export_onnx(model, args.onnx, args.opset, onnx_metadata(info, args.weights))
    size = Path(args.onnx).stat().st_size / 2**20
    print(f"wrote {args.onnx} ({size:.1f} MiB, opset {args.opset}, {info.num_classes} classes, "
          f"dynamic batch/height/width)")
    ok = True
    rand = torch.rand(2, 3, 72, 104, generator=torch.Generator().manual_seed(0))
    checks = [("random 2x3x72x104", rand)]
    if check_image is not None:
        checks.append((f"{args.check} (1x3x{check_image.shape[2]}x{check_image.shape[3]})", check_image))
    for what, x in checks:
        r = check_parity(model, args.onnx, x, args.tol)
        print(_report_line(what, r))
        ok &= r["ok"]
    if not ok:
        print(f"error: the ONNX model does not match PyTorch within {args.tol:g}", file=sys.stderr)
        return 1
    return 0
