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
speed, since together they are a small share of the FLOPs.

Two forms (``FORMS``). x86 CPUs without VNNI (AVX2 only, and AVX-512 without VNNI) multiply
uint8 activations by int8 weights with an instruction that adds pairs of products in 16 bits;
with 8-bit weights a pair can reach 2·255·128 and saturates, and the masks come out wrong with
no error. The default ``portable`` form quantises weights to 7 bits (ONNX Runtime's
``reduce_range``), whose pair sums stay below 2^15 on every x86 CPU; ``vnni`` keeps 8-bit
weights, exact only where the CPU has VNNI (AVX512-VNNI, AVX-VNNI, AMX) or is not x86.

An int8 file carries a probe: one small calibration image with the fp32 model's classes on it.
Loading runs the probe on the machine that loads (``check_int8``) and refuses the model when it
disagrees, so a file exported on one CPU never gives silent garbage on another."""

from __future__ import annotations

import base64
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

from rc2l.data.imageio import read_image
from rc2l.errors import RC2LError
from rc2l.infer.images import expand_inputs

DEFAULT_MIN_AGREEMENT = 0.98
FORMS = ("portable", "vnni")
PROBE_PIXELS = 128 * 160  # the probe image's size cap: a few ms to run, ~27 KB of metadata
PROBE_MARGIN = 0.05  # a loading CPU may lose this much probe agreement against the exporting one
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


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


def cpu_has_vnni(cpuinfo: str | None = None) -> bool | None:
    """Whether uint8×int8 dot products on this CPU are exact with 8-bit weights: True on non-x86
    machines and on x86 with a VNNI flag, False on x86 without one, None where the flags cannot
    be read (then only the probe decides)."""
    from rc2l.provenance import read_cpuinfo

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = next((ln.partition(":")[2].split() for ln in text.splitlines() if ln.startswith("flags")), None)
    if flags is None:
        return None
    return any(f in flags for f in VNNI_FLAGS)


def _sessions(*paths: Path):
    import onnxruntime as ort

    return [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]


def argmax_agreement(a, b, images: list[np.ndarray]) -> float:
    """Share of pixels where the argmax over classes of sessions ``a`` and ``b`` agree, over ``images``."""
    name = a.get_inputs()[0].name
    same = total = 0
    for x in images:
        pa, pb = (s.run(None, {name: x})[0].argmax(1) for s in (a, b))
        same += int((pa == pb).sum())
        total += pa.size
    return same / max(total, 1)


def probe_image(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] → uint8 (3, h, w), h·w ≤ PROBE_PIXELS with h and w multiples
    of 32 (every output stride divides them), stored exactly as the loading machine will read it."""
    import torch
    import torch.nn.functional as Fn

    _, _, h, w = image.shape
    s = min(1.0, (PROBE_PIXELS / (h * w)) ** 0.5)
    size = (max(32, int(h * s) // 32 * 32), max(32, int(w * s) // 32 * 32))
    x = Fn.interpolate(torch.from_numpy(image), size=size, mode="bilinear", align_corners=False, antialias=True)
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def make_probe(a, b, image: np.ndarray) -> dict:
    """The probe stored in an int8 file: a uint8 image, the fp32 model's classes on it (session
    ``a``), and the int8 model's (``b``) agreement with them on the exporting machine."""
    img = probe_image(image)
    x = img[None].astype(np.float32) / 255.0
    name = a.get_inputs()[0].name
    labels = a.run(None, {name: x})[0].argmax(1)[0].astype(np.int32)
    agreement = float((b.run(None, {name: x})[0].argmax(1)[0] == labels).mean())
    return {
        "shape": list(img.shape),
        "image_u8": _b64(img),
        "labels_i32": _b64(labels),
        "agreement_at_export": round(agreement, 6),
        "min_agreement": round(max(0.0, agreement - PROBE_MARGIN), 6),
    }


def run_probe(sess, probe: dict, where: str) -> tuple[float, float]:
    """Run an int8 file's probe in ``sess`` → (agreement with the stored fp32 classes, the
    minimum the file asks for)."""
    try:
        c, h, w = (int(v) for v in probe["shape"])
        img = np.frombuffer(base64.b64decode(probe["image_u8"]), np.uint8).reshape(c, h, w)
        labels = np.frombuffer(base64.b64decode(probe["labels_i32"]), np.int32).reshape(h, w)
        floor = float(probe["min_agreement"])
    except (KeyError, TypeError, ValueError) as e:
        raise RC2LError(f"{where}: the int8 probe in its metadata is malformed ({e})") from None
    x = (img[None].astype(np.float32) / 255.0).copy()
    pred = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)[0]
    return float((pred == labels).mean()), floor


def check_int8(sess, meta: dict[str, str], where: str, has_vnni: bool | None = None) -> str | None:
    """Refuse (RC2LError, one line) an int8 model that is not exact on this CPU: the VNNI-only
    form on an x86 CPU without VNNI, or any int8 file whose probe disagrees with its stored fp32
    classes here. → the form, or None for an fp32 model."""
    if "quantization" not in meta:
        return None
    try:
        q = json.loads(meta["quantization"])
    except ValueError:
        raise RC2LError(f"{where}: 'quantization' metadata is not JSON") from None
    form = q.get("form", "vnni") if isinstance(q, dict) else "vnni"  # files from before the forms: 8-bit
    fix = "re-export it with `rc2l export --int8` (the portable form, the default) or use the fp32 model"
    if form == "vnni" and (cpu_has_vnni() if has_vnni is None else has_vnni) is False:
        raise RC2LError(
            f"{where}: int8 model in the VNNI-only form (8-bit weights), whose products saturate on this CPU "
            f"(x86 without {'/'.join(VNNI_FLAGS)}): {fix}"
        )
    if isinstance(q, dict) and isinstance(q.get("probe"), dict):
        agreement, floor = run_probe(sess, q["probe"], where)
        if agreement < floor:
            raise RC2LError(
                f"{where}: int8 model ({form} form) agrees with its fp32 classes on {agreement:.1%} of its probe "
                f"image on this CPU, below the {floor:.1%} it gave where it was exported: its int8 kernels are "
                f"not exact here; {fix}"
            )
    return form


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    images: list[np.ndarray],
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    form: str = "portable",
) -> dict:
    """fp32 ONNX → int8 ONNX at ``out_path`` in ``form`` (``FORMS``), calibrated on ``images``,
    with a probe in its metadata; refuses (writes nothing, raises) when the argmax agreement on
    the images is below ``min_agreement``."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from rc2l.engine.checkpoint import atomic_write

    if form not in FORMS:
        raise RC2LError(f"--int8-form {form!r}: choose one of {', '.join(FORMS)}")
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
            reduce_range=form == "portable",  # 7-bit weights: no 16-bit saturation without VNNI
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            nodes_to_exclude=keep,
        )  # the compute; norms stay fp32
        fp32_sess, int8_sess = _sessions(fp32_path, q)
        agreement = argmax_agreement(fp32_sess, int8_sess, images)
        if agreement < min_agreement:
            hint = " (this CPU has no VNNI: use the portable form)" if form == "vnni" and not cpu_has_vnni() else ""
            raise RC2LError(
                f"int8 model ({form} form) agrees with the fp32 one on {agreement:.2%} of the calibration pixels, "
                f"below --min-agreement {min_agreement:.2%}: not writing {out_path} (calibrate on more or more "
                f"typical images, or keep the fp32 model){hint}"
            )
        probe = make_probe(fp32_sess, int8_sess, images[0])
        model = onnx.load(str(q))
        meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        meta["quantization"] = json.dumps(
            {
                "type": "int8 static QDQ, per-channel weights",
                "form": form,
                "weight_bits": 7 if form == "portable" else 8,
                "fp32_convs": len(keep),
                "calibration_images": len(images),
                "argmax_agreement": round(agreement, 6),
                "probe": probe,
            }
        )
        del model.metadata_props[:]
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        atomic_write(out_path, lambda t: onnx.save(model, t))
    return {"agreement": agreement, "images": len(images), "mib": out_path.stat().st_size / 2**20, "form": form}
