"""Training speed of the real CamVid recipe (configs/camvid.yaml, data.split=1_8) per speed lever,
against the config's fp32 default measured in the same process, plus how close a step comes to the
machine's measured matmul peak, and where a step's time goes (torch.profiler).

    python benchmarks/train_speed.py --threads 1 [--reps 5] [--data-root PATH] [--quick]

Trainers are built with ``rc2l.engine.train.Trainer(cfg)``; each variant's ``train_step`` runs
in round-robin with the others (A, B, C, A, B, C, ...) and the median is reported, so the load
of a shared machine hits all variants alike. ``semi.start_iter=0`` so every rc2l step runs its
unlabeled branch (the supervised warm-up steps would be supervised steps). Data: real CamVid
(--data-root, else $RC2L_SHARED_DATA/camvid, else ../shared/data/camvid next to the repository)
or, when absent, random images of CamVid's 480×360 in its layout. Variants with data.cache=true
are timed with a full cache (the steady state after the first epoch). Unless a variant says
otherwise it uses data.workers=0, so decoding is part of the step it slows down and loader
processes of one variant cannot run during another's step. Evaluation: seconds per
``eval_every`` (student and teacher over the 101 val images), extrapolated from
``--eval-images`` images per variant.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as cm

NAME = "train_speed"
CONFIG = cm.REPO / "configs" / "camvid.yaml"
SHARED_DATA_ENV = "RC2L_SHARED_DATA"  # the folder holding camvid/, as the tests read it
VAL_IMAGES = 101  # CamVid val
QUICK = [
    "model.pretrained=none",
    "model.backbone=resnet18",
    "model.hidden_dim=32",
    "model.mask_dim=32",
    "model.num_queries=8",
    "model.dec_layers=2",
    "model.nheads=4",
    "model.dim_feedforward=64",
    "data.resize=[48,64]",
    "data.crop_size=[32,48]",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "semi.tau_cls=0.0",
]
# name → (config overrides, what it is); "fp32" is the reference: the config's defaults
LEVERS = {
    "fp32": ([], "the config's defaults: fp32, NCHW (data.cache as configs/camvid.yaml sets it)"),
    "bf16": (["train.amp=bf16"], "bf16 autocast (train.amp=bf16)"),
    "channels_last": (["train.channels_last=true"], "model and batches NHWC (train.channels_last=true)"),
    "cache": (["data.cache=true"], "decoded images in RAM (data.cache=true)"),
    "teacher_inference_mode": ([], "EMA teacher forward under torch.inference_mode (benchmark-only patch)"),
    "compile": ([], "torch.compile (inductor) of backbone + pixel decoder, student and teacher (benchmark-only patch)"),
    "points": (["loss.num_points=12544"], "mask losses on 112² sampled points, as Mask2Former (changes the loss)"),
    "cache_workers2": (["data.cache=true", "data.workers=2"], "cache + 2 loader workers per stream"),
    "kept": (["train.channels_last=true", "data.cache=true"], "the accuracy-neutral levers together"),
    "kept_bf16": (["train.channels_last=true", "data.cache=true", "train.amp=bf16"], "kept + bf16 (not a default)"),
}
LEVERS["kept_bf16_compile"] = (LEVERS["kept_bf16"][0], "kept + bf16 + compile (benchmark-only patch)")
COMPILED = ("compile", "kept_bf16_compile")

# asked for by name (--levers fp32 compile points): compile's first step compiles for minutes,
# points changes the loss, so it would need a full run's accuracy before it could be kept
DEFAULT_LEVERS = [lv for lv in LEVERS if lv not in (*COMPILED, "points")]


# ----------------------------------------------------------------------------- data
def write_fake_camvid(root: Path, n_lab: int, n_unl: int, n_val: int, h: int, w: int) -> Path:
    """CamVid's layout with random images (values 0..11 in the labels) and a 1_8 split folder:
    the same decode and transform work as the real data, where it is absent."""
    rng = np.random.default_rng(0)
    from PIL import Image

    stems = {
        "train": [f"0001TP_{i:06d}" for i in range(n_lab + n_unl)],
        "val": [f"0016E5_{i:06d}" for i in range(n_val)],
    }
    for split, names in stems.items():
        for d in ("images", "labels"):
            (root / d / split).mkdir(parents=True, exist_ok=True)
        for s in names:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            image.save(root / "images" / split / f"{s}.png", compress_level=1)
            label = Image.fromarray(rng.integers(0, 12, (h, w), dtype=np.uint8), mode="L")
            label.save(root / "labels" / split / f"{s}.png")
    (root / "splits").mkdir(exist_ok=True)
    for split, names in stems.items():
        (root / "splits" / f"{split}.txt").write_text("".join(s + "\n" for s in names))
    sdir = root / "rc2l_splits"
    (sdir / "1_8").mkdir(parents=True, exist_ok=True)
    row = lambda s: f"images/train/{s}.png labels/train/{s}.png\n"  # noqa: E731
    (sdir / "1_8" / "labeled.txt").write_text("".join(row(s) for s in stems["train"][:n_lab]))
    (sdir / "1_8" / "unlabeled.txt").write_text("".join(f"images/train/{s}.png\n" for s in stems["train"][n_lab:]))
    (sdir / "val.txt").write_text("".join(f"images/val/{s}.png labels/val/{s}.png\n" for s in stems["val"]))
    return root


def data_overrides(args, tmp: Path) -> tuple[list[str], str]:
    """Overrides naming the data and a sentence saying which data it is."""
    if not args.quick:
        shared = os.environ.get(SHARED_DATA_ENV, "").strip() or str(cm.REPO.parent / "shared" / "data")
        root = Path(args.data_root) if args.data_root else Path(shared) / "camvid"
        if (root / "splits" / "train.txt").is_file():
            return [f"data.root={root}"], f"real CamVid ({root})"
    if args.quick:
        root = write_fake_camvid(tmp / "camvid", 6, 6, 3, 48, 64)
    else:
        root = write_fake_camvid(tmp / "camvid", 46, 64, 16, 360, 480)
    return (
        [f"data.root={root}", f"data.splits_dir={root / 'rc2l_splits'}"],
        f"CamVid not found: random {'48×64' if args.quick else '360×480'} images in its layout",
    )


# ----------------------------------------------------------------------------- trainers
def build(method: str, lever: str, base: list[str], tmp: Path):
    """A Trainer for (method, lever), its iterators and its step callable."""
    from rc2l.config import load_config
    from rc2l.engine.train import Trainer

    over = base + LEVERS[lever][0] + [f"method={method}", f"out_dir={tmp / f'run_{method}_{lever}'}"]
    tr = Trainer(load_config(CONFIG, over))
    if lever == "teacher_inference_mode":
        patch_teacher_inference_mode(tr.method.teacher)
    if lever in COMPILED:
        patch_compile(tr.model, tr.method.teacher)
    if tr.cfg.data.cache:  # steady state: every image decoded once already (before workers fork)
        for ds in tr.datasets.values():
            if ds is not None and hasattr(ds, "_read"):
                for i in range(len(ds)):
                    ds._read(i)
    tr.model.train()
    its = tr.streams.iterators()
    threads = torch.get_num_threads()

    def step():
        torch.set_num_threads(threads)
        if tr.train_step(its) is None:
            raise RuntimeError(f"{method}/{lever}: step skipped (non-finite)")
        tr.step += 1

    return tr, step


def patch_teacher_inference_mode(teacher) -> None:
    """Run the EMA teacher's forward under inference_mode (the methods call it under no_grad):
    what the lever would cost or save, without editing the methods."""
    forward = teacher.forward

    def fwd(*a, **k):
        with torch.inference_mode():
            return forward(*a, **k)

    teacher.forward = fwd


def patch_compile(*nets) -> None:
    """Compile the convolutional parts (backbone, pixel decoder) of each net in place, after the
    teacher was copied from the student: a deep copy of a compiled module would call the
    original's forward. The transformer decoder and the losses stay eager (their shapes change
    with the matched regions). The first, untimed step pays the compilation."""
    for net in nets:
        if net is not None:
            net.backbone.compile()
            net.pixel_decoder.compile()


def grouped_conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """torch's convolution_backward formula counts the weight gradient of a grouped conv as if
    it were dense, ``groups`` times too many (128× for a depthwise conv of 128 channels: a
    supervised CamVid step read 306 GFLOP instead of ~72). Its two terms, that one divided by
    ``groups`` (non-transposed convs, all this model has)."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    n = 0
    if output_mask[0]:  # grad_input = conv_transpose(grad_out, weight): weight shape already per group
        n += conv_flop_count(grad_out_shape, w_shape, list(out_shape[0]), not transposed)
    if output_mask[1]:  # grad_weight = conv(input, grad_out), per group
        g = t(list(out_shape[1])) if not transposed else None
        dense = (
            conv_flop_count(t(x_shape), t(grad_out_shape), g, transposed=False)
            if not transposed
            else conv_flop_count(t(grad_out_shape), t(x_shape), t(list(out_shape[1])), transposed=False)
        )
        n += dense // max(int(groups), 1)
    return n


def step_flops(tr, step) -> int:
    """FLOPs of one training step (forward + backward) by torch.utils.flop_counter, grouped
    convolutions' backward corrected (``grouped_conv_backward_flop``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: grouped_conv_backward_flop}
    )
    with counter:
        step()
    return int(counter.get_total_flops())


def matmul_peak(n: int, reps: int) -> dict[str, float]:
    """FLOP/s of an n×n @ n×n matmul in fp32 and bf16, interleaved: the machine's practical peak."""
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    t = cm.interleaved({"fp32": lambda: a32 @ b32, "bf16": lambda: a16 @ b16}, "cpu", reps)
    return {k: 2 * n**3 / min(v) for k, v in t.items()}


def top_ops(step, k: int) -> list[dict]:
    """The ``k`` ops with the most self CPU time in one step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    ev.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in ev[:k]
    ]


# ----------------------------------------------------------------------------- evaluation
def eval_variants(tr, n_images: int, reps: int) -> dict[str, list[float]]:
    """Seconds to evaluate one model on ``n_images`` val images: fp32 / bf16, one image per
    forward / 8 at once; also the bf16 argmax agreement with fp32 (pixel share)."""
    from rc2l.engine.evaluate import evaluate

    ds = tr.datasets["val"]
    samples = (ds[i] for i in range(min(n_images, len(ds))))
    batches = [{"image": s["image"][None], "mask": s["mask"][None]} for s in samples]
    k, model = tr.info.num_classes, tr.model
    fns = {}
    for amp in ("fp32", "bf16"):
        for bs in (1, 8):
            dt = torch.bfloat16 if amp == "bf16" else None
            fns[f"{amp}_bs{bs}"] = lambda dt=dt, bs=bs: evaluate(
                model, batches, k, "original", (1, 1), 2 / 3, "cpu", dt, batch_size=bs
            )
    times = cm.interleaved(fns, "cpu", reps)
    ref, b16 = fns["fp32_bs1"](), fns["bf16_bs1"]()
    c32, c16 = np.array(ref["confusion"]), np.array(b16["confusion"])
    times["_bf16_miou_delta"] = [b16["miou"] - ref["miou"]]
    times["_images"] = [len(batches)]
    times["_confusion_l1"] = [float(np.abs(c32 - c16).sum() / max(c32.sum(), 1))]
    return times


# ----------------------------------------------------------------------------- main
def parse(argv):
    p = cm.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed steps per variant (after one warm-up)")
    p.add_argument("--methods", nargs="+", default=["supervised", "rc2l"], choices=["supervised", "rc2l"])
    p.add_argument("--levers", nargs="+", default=DEFAULT_LEVERS, choices=list(LEVERS))
    p.add_argument(
        "--data-root",
        default="",
        help="CamVid root (default $RC2L_SHARED_DATA/camvid, else ../shared/data/camvid by the repository)",
    )
    p.add_argument("--eval-images", type=int, default=12, help="val images per timed evaluation")
    p.add_argument("--matmul", type=int, default=2048, help="side of the peak-FLOP/s matmul")
    p.add_argument("--top", type=int, default=8, help="profiler rows per table")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.eval_images, args.matmul, args.top = 1, 2, 128, 5
    args.mem = "off"
    if "fp32" not in args.levers:
        p.error("--levers must include fp32, the reference")
    # a subset of levers goes into a block of its own: train_speed/cpu:fp32-compile
    args.block = "" if args.levers == DEFAULT_LEVERS else ":" + "-".join(args.levers)
    return cm.finish_args(args, NAME)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    meta = cm.run_meta(NAME, args, argv, __file__)
    tmp = Path(tempfile.mkdtemp(prefix="rc2l_train_speed_"))
    try:
        rows, extra = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta.update(extra)
    cm.publish(NAME, args, meta, rows, render(rows, extra, args))
    return 0


def base_overrides(args, data: list[str], threads: int) -> list[str]:
    """The recipe as every lever runs it: 1/8 split, unlabeled losses from step 0, no progress bar."""
    return [
        "data.split=1_8",
        "semi.start_iter=0",
        "train.progress=false",
        f"train.threads={threads}",
        *data,
        *(QUICK if args.quick else []),
    ]


def run(args, tmp: Path) -> tuple[list[dict], dict]:
    data, data_desc = data_overrides(args, tmp)
    threads = args.threads or torch.get_num_threads()
    base = [*base_overrides(args, data, threads), "data.workers=0"]
    rows, extra = [], {"data": data_desc, "threads": threads, "reps": args.reps}
    peak = matmul_peak(args.matmul, max(args.reps, 3))
    extra["peak_flops"] = peak
    for method in args.methods:
        levers = [lv for lv in args.levers if method == "rc2l" or lv != "teacher_inference_mode"]
        trainers = {lv: build(method, lv, base, tmp) for lv in levers}
        times = cm.interleaved({lv: s for lv, (_, s) in trainers.items()}, "cpu", args.reps)
        ref = cm.med(times["fp32"])
        # a compiled graph runs no aten ops the counter can see: it does the fp32 step's arithmetic
        counted = {lv: step_flops(*trainers[lv]) for lv in levers if lv not in COMPILED}
        for lv in levers:
            tr, step = trainers[lv]
            flops = counted.get(lv, counted["fp32"])
            t = cm.med(times[lv])
            dtype = "bf16" if tr.amp_dtype is torch.bfloat16 else "fp32"
            lo, hi = cm.iqr(times[lv])
            rows.append(
                {
                    "kind": "step",
                    "method": method,
                    "lever": lv,
                    "what": LEVERS[lv][1],
                    "step_s": t,
                    "step_min_s": min(times[lv]),
                    "step_iqr_s": [lo, hi],
                    "steps_per_s": 1 / t,
                    "reference": "fp32",
                    "ratio_vs_reference": t / ref,
                    "speedup": ref / t,
                    "flops_per_step": flops,
                    "achieved_flops": flops / t,
                    "peak_dtype": dtype,
                    "share_of_peak": flops / t / peak[dtype],
                }
            )
        best = "kept" if "kept" in trainers else "fp32"
        for lv in dict.fromkeys(["fp32", best]):
            ops = top_ops(trainers[lv][1], args.top)
            rows.append({"kind": "profile", "method": method, "lever": lv, "top_ops": ops})
        if method == args.methods[-1]:
            ev = eval_variants(trainers["fp32"][0], args.eval_images, max(1, args.reps // 2))
            n = ev.pop("_images")[0]
            per_eval = 2 * VAL_IMAGES / n  # student + teacher, whole val set
            info = {k: ev.pop(k)[0] for k in ("_bf16_miou_delta", "_confusion_l1")}
            ref_e = cm.med(ev["fp32_bs1"])
            for k, v in ev.items():
                rows.append(
                    {
                        "kind": "eval",
                        "variant": k,
                        "images_timed": n,
                        "eval_s": cm.med(v) * per_eval,
                        "reference": "fp32_bs1",
                        "ratio_vs_reference": cm.med(v) / ref_e,
                        "bf16_miou_delta": info["_bf16_miou_delta"],
                        "bf16_confusion_l1": info["_confusion_l1"],
                    }
                )
        del trainers
    return cm.clean_json(rows), extra


# ----------------------------------------------------------------------------- output
def render(rows: list[dict], extra: dict, args) -> str:
    peak = extra["peak_flops"]
    out = [
        f"Data: {extra['data']}. Recipe: configs/camvid.yaml, data.split=1_8, semi.start_iter=0, "
        f"{extra['threads']} torch thread(s), data.workers=0 unless the lever says otherwise; median of "
        f"{extra['reps']} interleaved steps per variant after one warm-up. Peak (matmul {args.matmul}², best of "
        f"the repetitions): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s.",
        "",
    ]
    steps = [r for r in rows if r["kind"] == "step"]
    table = [
        [
            r["method"],
            r["lever"],
            r["what"],
            cm.fmt_time(r["step_s"]),
            f"{r['steps_per_s']:.3f}",
            f"**{r['speedup']:.2f}×**",
            f"{r['flops_per_step'] / 1e9:.1f}",
            f"{r['achieved_flops'] / 1e9:.1f} ({100 * r['share_of_peak']:.0f} % of {r['peak_dtype']} peak)",
        ]
        for r in steps
    ]
    out += [
        "**Training step** (speed-up = fp32 step time / this step time, same method, same run):",
        "",
        cm.markdown_table(
            ["method", "lever", "what", "step", "steps/s", "speed-up vs fp32", "GFLOP/step", "achieved GFLOP/s"], table
        ),
        "",
    ]
    ev = [r for r in rows if r["kind"] == "eval"]
    if ev:
        out += [
            f"**Evaluation** per `eval_every` (student + teacher × {VAL_IMAGES} val images, extrapolated from "
            f"{ev[0]['images_timed']} images; bf16 vs fp32 on those images: mIoU {ev[0]['bf16_miou_delta']:+.2f}, "
            f"{100 * ev[0]['bf16_confusion_l1']:.2f} % of pixels change cell in the confusion matrix):",
            "",
            cm.markdown_table(
                ["variant", "seconds per evaluation", "ratio vs fp32, 1 image/forward"],
                [[r["variant"], f"{r['eval_s']:.1f}", f"{r['ratio_vs_reference']:.2f}"] for r in ev],
            ),
            "",
        ]
    for r in (r for r in rows if r["kind"] == "profile"):
        out += [
            f"**Top ops, {r['method']} / {r['lever']}** (self CPU time of one step, torch.profiler):",
            "",
            cm.markdown_table(
                ["op", "self ms", "share", "calls"],
                [
                    [f"`{o['op']}`", f"{o['self_ms']:.0f}", f"{100 * o['share']:.1f} %", o["calls"]]
                    for o in r["top_ops"]
                ],
            ),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
