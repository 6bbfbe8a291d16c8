"""`rc2l export --int8`: static int8 quantisation of the exported ONNX graph with ONNX Runtime's
tools (QDQ format, per-channel int8 weights, uint8 activations), calibrated on training images.

A quantised model that disagrees with the fp32 one is worse than none, so the file is written
only when the argmax of the int8 model agrees with the fp32 model's on at least
``min_agreement`` of the calibration pixels; otherwise nothing is written and the error says
by how much it missed.

Two kinds of convolution stay fp32, chosen by measurement (docs/benchmarks.md, "int8 ONNX"):
the stem, whose 3 input channels carry the whole image, and the depthwise (grouped) convolutions,
whose few weights per output channel quantise badly. On a trained CamVid checkpoint quantising
them cost 5.6-7.6 mIoU; keeping them fp32 costs nothing measurable in accuracy and little in
speed, since together they are a small share of the FLOPs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from rc2l.errors import RC2LError
from rc2l.infer.images import expand_inputs, read_image

DEFAULT_MIN_AGREEMENT = 0.98


def calibration_images(inputs: list[str], count: int, resize: list[int] | None) -> list[np.ndarray]:
    """Up to ``count`` images from paths, folders or globs → (1, 3, H, W) float32 in [0, 1],
    resized to the model's training ``resize`` (h, w) when it has one."""
    import torch
    import torch.nn.functional as Fn

    found, errors, _ = expand_inputs(inputs, Path(tempfile.gettempdir()) / "rc2l-no-outputs")
    if errors or not found:
        raise RC2LError(errors[0] if errors else f"--calibrate {' '.join(inputs)}: no images found")
    out = []
    for path, _ in found[:count]:
        x = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float() / 255.0
        if resize:
            x = Fn.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.numpy().astype(np.float32))
    return out


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of input arrays."""

    def __init__(self, name: str, images: list[np.ndarray]):
        self.name, self.it = name, iter(images)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x}


def fp32_nodes(graph) -> list[str]:
    """Names of the convolutions kept in fp32: the first Conv in graph order (the stem) and every
    grouped (depthwise) Conv."""
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return [n.name for i, n in enumerate(convs) if i == 0 or any(a.name == "group" and a.i > 1 for a in n.attribute)]


def argmax_agreement(fp32: Path, int8: Path, images: list[np.ndarray]) -> float:
    """Share of pixels where the two models' argmax over classes agree, over ``images``."""
    import onnxruntime as ort

    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8))
    name = a.get_inputs()[0].name
    same = total = 0
    for x in images:
        pa, pb = (s.run(None, {name: x})[0].argmax(1) for s in (a, b))
        same += int((pa == pb).sum())
        total += pa.size
    return same / max(total, 1)


def quantize_int8(
    fp32_path: str | Path, out_path: str | Path, images: list[np.ndarray], min_agreement: float = DEFAULT_MIN_AGREEMENT
) -> dict:
    """fp32 ONNX → int8 ONNX at ``out_path``, calibrated on ``images``; refuses (writes
    nothing, raises) when the argmax agreement on them is below ``min_agreement``."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from rc2l.engine.checkpoint import atomic_write

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        keep = fp32_nodes(onnx.load(str(pre)).graph)
        quantize_static(
            str(pre),
            str(q),
            _Reader(name, images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            nodes_to_exclude=keep,
        )  # the compute; norms stay fp32
        agreement = argmax_agreement(fp32_path, q, images)
        if agreement < min_agreement:
            raise RC2LError(
                f"int8 model agrees with the fp32 one on {agreement:.2%} of the calibration pixels, below "
                f"--min-agreement {min_agreement:.2%}: not writing {out_path} (calibrate on more or more "
                f"typical images, or keep the fp32 model)"
            )
        model = onnx.load(str(q))
        meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        meta["quantization"] = json.dumps(
            {
                "type": "int8 static QDQ, per-channel weights",
                "fp32_convs": len(keep),
                "calibration_images": len(images),
                "argmax_agreement": round(agreement, 6),
            }
        )
        del model.metadata_props[:]
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        atomic_write(out_path, lambda t: onnx.save(model, t))
    return {"agreement": agreement, "images": len(images), "mib": out_path.stat().st_size / 2**20}
