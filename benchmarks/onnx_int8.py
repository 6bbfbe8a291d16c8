"""Inference on the CPU: eager PyTorch fp32 against ONNX Runtime fp32 and both int8 forms of
rc2l export --int8 (portable: 7-bit weights; vnni: 8-bit), on CamVid val frames at the recipe's
240×320, interleaved in one process; with ``--weights`` of a trained CamVid checkpoint also the
val mIoU of each (goal: portable int8 ≥ 2× eager fp32 with ≤ 0.5 mIoU lost). The block is named
by the CPU's int8 kind (``onnx_int8/cpu:vnni`` or ``…:no-vnni``) and lists its flags, so rows
from different kinds of CPU stand side by side.

    python benchmarks/onnx_int8.py --weights runs/camvid_rc2l_1_8 [--threads 2]
    python benchmarks/onnx_int8.py --quick      # untrained tiny model, synthetic images: a smoke test
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from rc2l.infer.quantize import FORMS

from benchmarks import common as cm

NAME = "onnx_int8"
CAMVID = cm.REPO.parent / "shared" / "data" / "camvid"


def val_images(args) -> tuple[list[np.ndarray], list[np.ndarray] | None, list[int]]:
    """(images (1,3,H,W) float32 at the model's input size, native-size labels or None, resize)."""
    from rc2l.config import load_config
    from rc2l.data.build import build_datasets

    if args.quick:
        g = torch.Generator().manual_seed(0)
        return [torch.rand(1, 3, 64, 96, generator=g).numpy() for _ in range(3)], None, [64, 96]
    cfg = load_config(cm.REPO / "configs" / "camvid.yaml", [f"data.root={args.data_root}", "eval.labels=native"])
    ds = build_datasets(cfg, only_val=True)["val"]
    n = len(ds) if args.images <= 0 else min(args.images, len(ds))
    items = [ds[i] for i in range(n)]
    return (
        [it["image"][None].numpy().astype(np.float32) for it in items],
        [it["mask"].numpy() for it in items],
        list(cfg.data.resize),
    )


def calibration_set(args, images: list[np.ndarray], resize: list[int]) -> list[np.ndarray]:
    """The first ``--calib`` CamVid training frames (as `rc2l export --int8 --calibrate` would
    read them), or the test images themselves for the untrained ``--quick`` smoke test."""
    from rc2l.infer.quantize import calibration_images

    if args.quick:
        return images[: args.calib]
    return calibration_images([str(Path(args.data_root) / "images" / "train")], args.calib, resize)


def int8_flags() -> str:
    """The CPU flags that decide int8 speed and exactness, as read from /proc/cpuinfo."""
    from rc2l.provenance import read_cpuinfo

    line = next((ln for ln in read_cpuinfo().splitlines() if ln.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    return " ".join(f for f in wanted if f in line.partition(":")[2].split()) or "unknown"


def build_models(args, tmp: Path, images: list[np.ndarray], calib: list[np.ndarray]):
    """(eager fp32 model, fp32 ONNX path, {form: int8 ONNX path}, num_classes)."""
    from rc2l.config import ModelConfig
    from rc2l.infer.export import export_onnx
    from rc2l.infer.loading import load_torch_model
    from rc2l.infer.quantize import quantize_int8
    from rc2l.models.segmenter import build_model

    if args.weights:
        model, info, _ = load_torch_model(args.weights, None, "cpu")
        k = info.num_classes
    else:
        small = dict(num_queries=8, hidden_dim=32, mask_dim=32, dec_layers=2, nheads=4, dim_feedforward=64)
        mc = (
            ModelConfig(backbone="resnet18", pretrained="none", **small)
            if args.quick
            else ModelConfig(
                backbone="efficientnet_lite0",
                num_queries=32,
                hidden_dim=128,
                mask_dim=128,
                dec_layers=3,
                dim_feedforward=512,
            )
        )
        k = 11
        model = build_model(k, mc)
    model.eval()
    fp32 = tmp / "m.onnx"
    export_onnx(model, fp32, sample_hw=tuple(images[0].shape[-2:]))
    int8 = {form: tmp / f"m.{form}.int8.onnx" for form in FORMS}
    for form, path in int8.items():
        quantize_int8(fp32, path, calib, min_agreement=0.0, form=form)
    return model, fp32, int8, k


def miou_of(predict, images, labels, k: int) -> float:
    from rc2l.engine.evaluate import confusion_matrix, iou_from_confusion

    cm_ = torch.zeros(k, k, dtype=torch.int64)
    for x, y in zip(images, labels):
        s = torch.from_numpy(predict(x))
        s = torch.nn.functional.interpolate(s, size=y.shape[-2:], mode="bilinear", align_corners=False)
        cm_ += confusion_matrix(s.argmax(1)[0], torch.from_numpy(y), k)
    return iou_from_confusion(cm_)[0] * 100


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    from rc2l.infer.quantize import cpu_has_vnni

    p = cm.base_parser(__doc__.splitlines()[0])
    p.add_argument("--weights", help="a trained CamVid checkpoint (file or run/model folder) for the mIoU rows")
    p.add_argument("--data-root", default=str(CAMVID))
    p.add_argument("--images", type=int, default=0, help="val images used (0 = all 101)")
    p.add_argument("--calib", type=int, default=32, help="calibration images (the first CamVid training frames)")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    args.block = ":vnni" if cpu_has_vnni() else ":no-vnni"
    cm.finish_args(args, NAME)
    threads = args.threads or torch.get_num_threads()
    images, labels, resize = val_images(args)
    calib = calibration_set(args, images, resize)
    with tempfile.TemporaryDirectory() as tmp:
        model, fp32, int8, k = build_models(args, Path(tmp), images, calib)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = {
            n: ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
            for n, f in (("onnx fp32", fp32), *((f"onnx int8 {form}", path) for form, path in int8.items()))
        }
        name = sess["onnx fp32"].get_inputs()[0].name

        def eager(x):
            with torch.inference_mode():
                return model.semantic_scores(torch.from_numpy(x)).numpy()

        predict = {"eager fp32": eager, **{n: (lambda x, s=s: s.run(None, {name: x})[0]) for n, s in sess.items()}}
        times = cm.interleaved({n: (lambda f=f: [f(x) for x in images]) for n, f in predict.items()}, "cpu", args.reps)
        mious = {n: miou_of(f, images, labels, k) for n, f in predict.items()} if args.weights and labels else {}
    ref = cm.med(times["eager fp32"]) / len(images)
    rows = []
    for n, ts in times.items():
        per = cm.med(ts) / len(images)
        rows.append(
            {
                "backend": n,
                "ms_per_image": per * 1e3,
                "speedup_vs_eager_fp32": ref / per,
                "miou": mious.get(n),
                "miou_delta": (mious[n] - mious["eager fp32"]) if mious else None,
            }
        )
    table = cm.markdown_table(
        ["backend", "ms / image", "× eager fp32", "val mIoU", "Δ mIoU"],
        [
            [
                r["backend"],
                f"{r['ms_per_image']:.1f}",
                f"{r['speedup_vs_eager_fp32']:.2f}",
                "–" if r["miou"] is None else f"{r['miou']:.2f}",
                "–" if r["miou_delta"] is None else f"{r['miou_delta']:+.2f}",
            ]
            for r in rows
        ],
    )
    shape = "×".join(str(s) for s in images[0].shape)
    note = (
        f"CPU flags: {int8_flags()}. {len(images)} images of {shape}, {threads} threads, median of {args.reps} "
        "interleaved passes; "
        f"int8 calibrated on {len(calib)} "
        + ("of them" if args.quick else "CamVid training frames")
        + ("" if args.weights else "; untrained weights: speed only, no mIoU")
    )
    cm.publish(NAME, args, cm.run_meta(NAME, args, argv), rows, f"{table}\n\n{note}")


if __name__ == "__main__":
    main()
