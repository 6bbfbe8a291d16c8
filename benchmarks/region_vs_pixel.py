"""Region vs pixel cost: time and peak memory of the four RC²L region losses against the
pixel-level contrastive loss, on the same tensors, for inputs from 128² to 1024², plus the
region losses' share of one full rc2l training step.

Every method is forward + backward to its inputs (B images, N queries, C channels of F,
K classes, F at stride 4: (B, C, S/4, S/4) for an S×S input):
- match: Hungarian matching of the N queries to the teacher regions (no grad; part of region_all)
- rmc / rfc / rcc / smc: one region loss each, matching precomputed
- region_all: ``RegionLosses`` — matching + all four, what an rc2l step runs
- pixel_sampled_<n>: ``pixel_contrast_loss`` on n pixels sampled from the batch (ReCo/U²PL style)
- pixel_exact: every pixel of the batch, P×P similarity at once (P = B·h·w)
- pixel_exact_chunked: the same loss built 4096 rows at a time (as rc2l's semi step calls it)

"ops/call" counts the tensor operations one call dispatches (forward + backward, at the first
size; the count does not depend on the size): on a GPU every one is a kernel launch, which is
what small region losses are bound by.

Exact rows whose extrapolated peak memory exceeds --mem-budget-gib (or time per call exceeds
--max-call-s) are not run and say why. Slopes are least-squares fits of log time against
log pixels: ≈1 linear, ≈2 quadratic.

    .venv/bin/python benchmarks/region_vs_pixel.py            # CPU, writes docs/
    .venv/bin/python benchmarks/region_vs_pixel.py --device cuda --amp
"""

from __future__ import annotations

import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common as cm

NAME = "region_vs_pixel"
REGION_METHODS = ["match", "rmc", "rfc", "rcc", "smc", "region_all"]
EXACT = ("pixel_exact", "pixel_exact_chunked")
EXACT_CHUNK = 4096
DESCR = {
    "match": "Hungarian matching (no grad)",
    "rmc": "RMC fwd+bwd",
    "rfc": "RFC fwd+bwd (with projection head g)",
    "rcc": "RCC fwd+bwd",
    "smc": "SMC fwd+bwd",
    "region_all": "RegionLosses: matching + RMC+RFC+RCC+SMC fwd+bwd",
    "pixel_exact": "pixel contrast, exact (all pixels, P×P at once)",
    "pixel_exact_chunked": f"pixel contrast, exact, chunk={EXACT_CHUNK} rows",
}


def methods_for(samples: list[int]) -> list[str]:
    return REGION_METHODS + [f"pixel_sampled_{n}" for n in samples] + list(EXACT)


def describe(m: str) -> str:
    if m.startswith("pixel_sampled_"):
        return f"pixel contrast, {m.rsplit('_', 1)[1]} sampled pixels"
    return DESCR[m]


# ----------------------------------------------------------------------------- inputs
class Inputs:
    """Student outputs as leaf tensors (so backward stops at them) and teacher targets.

    pred_logits (B, N, K+1), pred_masks (B, N, h, w), pixel_feats F (B, C, h, w), sem_masks
    S (B, K, h, w) = semantic_masks(c, p) (a leaf); teacher Ŷ: blocky maps with ``regions``
    classes per image drawn on a 4×4 grid, every pixel valid (τ_pix = 0), regions = one per
    class present (``classes`` mode), r^t = MAP(F^t, m^t)."""

    def __init__(
        self, side: int, batch: int, queries: int, channels: int, classes: int, regions: int, device: str, seed: int = 0
    ):
        from rc2l.config import LossConfig, SemiConfig
        from rc2l.engine.teacher import teacher_targets
        from rc2l.losses.region import RegionLosses
        from rc2l.models.segmenter import semantic_masks

        g = torch.Generator().manual_seed(seed)
        h = w = -(-side // 4)
        B, N, C, K = batch, queries, channels, classes
        self.size = (h, w)
        self.pixels = h * w
        self.P = B * h * w
        self.pred_logits = torch.randn(B, N, K + 1, generator=g).to(device).requires_grad_()
        self.pred_masks = (2 * torch.randn(B, N, h, w, generator=g)).to(device).requires_grad_()
        self.pixel_feats = torch.randn(B, C, h, w, generator=g).to(device).requires_grad_()
        with torch.no_grad():
            sem = semantic_masks(self.pred_logits, self.pred_masks)
        self.sem_masks = sem.clone().requires_grad_()
        # teacher: Ŷ from a 4×4 grid of classes, each image using `regions` classes
        grid = torch.stack(
            [torch.randperm(K, generator=g)[:regions][torch.randint(0, regions, (4, 4), generator=g)] for _ in range(B)]
        )
        label = torch.nn.functional.interpolate(grid[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        sem_t = torch.nn.functional.one_hot(label, K).permute(0, 3, 1, 2).float() * 4 + torch.rand(
            B, K, h, w, generator=g
        )
        t_out = {"sem_masks": sem_t.to(device), "pixel_feats": torch.randn(B, C, h, w, generator=g).to(device)}
        self.targets = teacher_targets(t_out, mode="classes")
        self.regions = self.targets["regions"]
        self.label, self.valid = self.targets["label"], self.targets["valid"]
        self.semi = SemiConfig()
        self.rl = RegionLosses(self.semi, feat_dim=C, loss_cfg=LossConfig()).to(device)
        self.student = {
            "pred_logits": self.pred_logits,
            "pred_masks": self.pred_masks,
            "pixel_feats": self.pixel_feats,
            "sem_masks": self.sem_masks,
        }
        self.indices = self.rl.match(self.student, self.regions)
        self.leaves = [self.pred_logits, self.pred_masks, self.pixel_feats, self.sem_masks]
        self.num_regions = sum(len(r["labels"]) for r in self.regions)

    def zero(self):
        for t in self.leaves:
            t.grad = None
        self.rl.zero_grad(set_to_none=True)


def make_fn(method: str, x: Inputs, device: str, amp: bool):
    """A callable running ``method`` once (forward + backward; the gradients it made are freed)."""
    from rc2l.losses.pixel import pixel_contrast_loss
    from rc2l.losses.region import rcc_loss, rfc_loss, rmc_loss, smc_loss

    s = x.semi

    def run(loss_fn):
        def f():  # frees its own gradients at the end, so the next method does not pay for that
            with cm.amp_context(device, amp):
                loss = loss_fn()
            loss.backward()
            x.zero()

        return f

    if method == "match":
        return lambda: x.rl.match(x.student, x.regions)
    if method == "rmc":
        return run(lambda: rmc_loss(x.pred_masks, x.regions, x.indices, s.tau_m))
    if method == "rfc":
        return run(
            lambda: rfc_loss(x.pred_masks, x.pixel_feats, x.regions, x.indices, x.rl.rfc_head, s.tau_f, s.rfc_scope)
        )
    if method == "rcc":
        return run(lambda: rcc_loss(x.pred_logits, x.regions, x.indices, 0.1, s.rcc_soft))
    if method == "smc":
        return run(lambda: smc_loss(x.sem_masks, x.label, x.valid, s.smc_dice_only))
    if method == "region_all":
        return run(lambda: sum(x.rl(x.student, x.targets).values()))
    if method.startswith("pixel_sampled_"):
        n = int(method.rsplit("_", 1)[1])
        g = torch.Generator().manual_seed(0)
        return run(lambda: pixel_contrast_loss(x.pixel_feats, x.label, x.valid, 0.1, "sampled", n, generator=g))
    if method == "pixel_exact":
        return run(lambda: pixel_contrast_loss(x.pixel_feats, x.label, x.valid, 0.1, "exact"))
    if method == "pixel_exact_chunked":
        return run(lambda: pixel_contrast_loss(x.pixel_feats, x.label, x.valid, 0.1, "exact", chunk=EXACT_CHUNK))
    raise ValueError(method)


def mem_worker(method: str, side: int, shape: dict, device: str, amp: bool, threads: int = 0) -> dict:
    """Fresh-process body: warm the code path at a tiny size, build inputs, measure one call."""
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    make_fn(method, Inputs(32, **{**shape, "regions": min(shape["regions"], 2)}, device=device), device, amp)()
    x = Inputs(side, **shape, device=device)
    fn = make_fn(method, x, device, amp)
    t0 = time.perf_counter()
    with cm.PeakMeter(device) as m:
        fn()
    return {"peak": m.peak, "absolute": m.absolute, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- region losses' share of a step
def step_config(args, tmp: str):
    """voc_classic.yaml (the 513² GPU config) with a ResNet-50 at args.step_size, synthetic
    images, batch 2 + 2, no pretrained weights. τ_cls = 0 so a random-init teacher keeps every
    query with a non-empty mask (up to N regions per image: an upper bound on region-loss cost)."""
    from rc2l.config import load_config

    s = args.step_size
    ov = [
        "method=rc2l",
        f"model.backbone={args.step_backbone}",
        "model.pretrained=none",
        "data.name=synthetic",
        "data.root=",
        "data.splits_dir=",
        "data.split=1_2",
        f"data.crop_size=[{s},{s}]",
        f"data.synthetic.size={s}",
        "data.synthetic.num_train=4",
        "data.synthetic.num_val=1",
        "data.scale_range=[1.0,1.0]",
        "data.batch_size=2",
        "data.unlabeled_batch_size=2",
        "data.workers=0",
        "train.progress=false",
        f"train.device={args.device}",
        "train.amp=" + ("bf16" if args.amp else "'off'"),
        "semi.tau_cls=0.0",
        f"out_dir={tmp}",
    ]
    if args.quick:
        ov += [
            "model.num_queries=8",
            "model.hidden_dim=32",
            "model.mask_dim=32",
            "model.dec_layers=2",
            "model.nheads=4",
            "model.dim_feedforward=64",
            "loss.num_points=256",
        ]
    return load_config(cm.REPO / "configs" / "voc_classic.yaml", ov)


def step_share(args) -> dict:
    """Time full rc2l training steps (Trainer.train_step: forward, losses, backward, clip,
    AdamW, EMA) alternating with RegionLosses fwd+bwd on the tensors captured from that step."""
    from rc2l.engine.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = step_config(args, tmp)
        tr = Trainer(cfg)
        tr.model.train()
        its = tr.streams.iterators()
        b_l, b_u = next(its["labeled"]), next(its["unlabeled"])
        fixed = {"labeled": itertools.repeat(b_l), "unlabeled": itertools.repeat(b_u)}
        rl = tr.method.region_losses
        orig = rl.forward
        captured: dict = {}

        def spy(student, targets, indices=None, return_stats=False):
            t = time.perf_counter()
            out = orig(student, targets, indices, return_stats)
            captured["fwd_in_step"] = time.perf_counter() - t
            captured["student"] = {
                k: student[k].detach().clone().requires_grad_()
                for k in ("pred_logits", "pred_masks", "pixel_feats", "sem_masks")
            }
            captured["targets"] = targets
            return out

        rl.forward = spy
        stats = {}

        def step():
            logs = tr.train_step(fixed)
            if logs is None:
                raise RuntimeError("training step skipped (non-finite loss)")
            stats.update(logs)

        def region():
            st = captured["student"]
            for t in st.values():
                t.grad = None
            rl.zero_grad(set_to_none=True)
            with cm.amp_context(args.device, args.amp):
                loss = sum(orig(st, captured["targets"]).values())
            loss.backward()

        step()  # warm-up and first capture
        times = cm.interleaved({"step": step, "region_losses": region}, args.device, reps=args.step_reps, warmup=0)
        regions_per_image = sum(len(r["labels"]) for r in captured["targets"]["regions"]) / len(
            captured["targets"]["regions"]
        )
        t_step, t_reg = cm.med(times["step"]), cm.med(times["region_losses"])
        return {
            "config": "configs/voc_classic.yaml + overrides",
            "backbone": cfg.model.backbone,
            "input": s2(cfg.data.crop_size),
            "batch": f"{cfg.data.batch_size}+{cfg.data.unlabeled_batch_size}",
            "queries": cfg.model.num_queries,
            "num_points": cfg.loss.num_points,
            "step_s": t_step,
            "step_iqr": cm.iqr(times["step"]),
            "step_min_s": min(times["step"]),
            "region_losses_s": t_reg,
            "region_losses_min_s": min(times["region_losses"]),
            "region_losses_iqr": cm.iqr(times["region_losses"]),
            "region_fwd_in_step_s": captured["fwd_in_step"],
            "share": t_reg / t_step,
            "regions_per_image": regions_per_image,
            "reps": args.step_reps,
            "step_times": times["step"],
            "region_times": times["region_losses"],
            "regions_matched": stats.get("regions_matched"),
        }


def s2(v) -> str:
    return f"{v[0]}×{v[1]}"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = cm.base_parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[128, 192, 256, 384, 512, 768, 1024], help="input sides S (F is S/4)"
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--regions", type=int, default=8, help="teacher regions (classes present) per image")
    p.add_argument("--samples", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--mem-budget-gib", type=float, default=8.0)
    p.add_argument(
        "--max-call-s", type=float, default=8.0, help="skip an exact row whose extrapolated time per call exceeds this"
    )
    p.add_argument(
        "--size-budget-s", type=float, default=15.0, help="timing seconds per size; sets the repetitions (3..9)"
    )
    p.add_argument("--step-size", type=int, default=512)
    p.add_argument("--step-backbone", default="resnet50")
    p.add_argument("--step-reps", type=int, default=3)
    p.add_argument("--no-step", action="store_true", help="skip the training-step share")
    args = p.parse_args(argv)
    if args.quick:
        if "--sizes" not in (argv or sys.argv):
            args.sizes = [64, 128]
        args.queries, args.channels, args.classes, args.regions = 8, 16, 5, 3
        args.samples = [64]
        args.step_size, args.step_backbone, args.step_reps = 64, "resnet18", 1
    cm.finish_args(args, NAME)
    meta = cm.run_meta(NAME, args, argv, __file__)
    shape = dict(
        batch=args.batch, queries=args.queries, channels=args.channels, classes=args.classes, regions=args.regions
    )
    methods = methods_for(args.samples)
    runner = None
    if args.device == "cpu" and args.mem == "fresh":
        runner = cm.FreshRunner(
            ["torch", "rc2l.losses.region", "rc2l.losses.pixel", "rc2l.engine.teacher", "benchmarks.region_vs_pixel"]
        )
    res: dict[tuple[str, int], dict] = {}
    t_start = time.time()
    for side in args.sizes:
        x = Inputs(side, **shape, device=args.device)
        P = x.P
        # decide which exact rows can run, from the largest smaller size measured
        skip: dict[str, str] = {}
        sim_gb = 4 * P * P / 1e9
        for m in EXACT:
            prev = [(s, r) for (mm, s), r in res.items() if mm == m and r.get("time_s")]
            if not prev:
                continue
            s0, r0 = max(prev, key=lambda t: t[0])
            f = (P / r0["P"]) ** 2
            mem_pred = (r0.get("mem_bytes") or 0) * f
            t_pred = r0["time_s"] * f
            if mem_pred > args.mem_budget_gib * cm.GiB:
                skip[m] = (
                    f"not run (would need ≈{mem_pred / cm.GiB:.0f} GiB; the P×P similarity alone is {sim_gb:.1f} GB)"
                )
            elif t_pred > args.max_call_s:
                skip[m] = f"not run (≈{t_pred:.0f} s per call extrapolated; > --max-call-s {args.max_call_s:g})"
        todo = [m for m in methods if m not in skip]
        # memory: one fresh process per (method, size)
        mem: dict[str, dict] = {}
        for m in todo:
            if args.mem == "off" and args.device == "cpu":
                break
            if runner is not None:
                mem[m] = runner(
                    "benchmarks.region_vs_pixel:mem_worker",
                    method=m,
                    side=side,
                    shape=shape,
                    device=args.device,
                    amp=args.amp,
                    threads=args.threads,
                )
            else:
                fn = make_fn(m, x, args.device, args.amp)
                fn()
                with cm.PeakMeter(args.device) as pm:
                    fn()
                mem[m] = {"peak": pm.peak, "absolute": pm.absolute}
        # time: warm-up each, then round-robin
        fns = {m: make_fn(m, x, args.device, args.amp) for m in todo}
        warm = {m: cm.time_once(fn, args.device) for m, fn in fns.items()}
        reps = 1 if args.quick else max(3, min(9, int(args.size_budget_s / max(sum(warm.values()), 1e-3))))
        times = cm.interleaved(fns, args.device, reps=reps, warmup=0)
        if side == args.sizes[0]:
            ops = {m: cm.count_ops(fn) for m, fn in fns.items()}
        for m in methods:
            row = {"method": m, "side": side, "pixels": x.pixels, "P": P, "regions": x.num_regions, "ops": ops.get(m)}
            if m in skip:
                row["status"] = skip[m]
            else:
                row.update(
                    status="ok",
                    time_s=cm.med(times[m]),
                    time_iqr=cm.iqr(times[m]),
                    time_min=min(times[m]),
                    reps=reps,
                    times=times[m],
                    mem_bytes=mem.get(m, {}).get("peak"),
                )
            res[(m, side)] = row
        print(
            f"[{time.time() - t_start:6.0f} s] {side}²: "
            + ", ".join(f"{m} {cm.fmt_time(res[(m, side)].get('time_s'))}" for m in methods),
            flush=True,
        )
        del x, fns
    # slopes
    slopes = {}
    for m in methods:
        pts = sorted((r["pixels"], r["time_s"]) for (mm, _), r in res.items() if mm == m and r.get("time_s"))
        mpts = sorted(
            (r["pixels"], r["mem_bytes"])
            for (mm, _), r in res.items()
            if mm == m and (r.get("mem_bytes") or 0) >= cm.MiB
        )  # below 1 MiB: heap noise
        slopes[m] = {
            "time_all": cm.loglog_slope([a for a, _ in pts], [b for _, b in pts]),
            "time_top2": cm.loglog_slope([a for a, _ in pts[-2:]], [b for _, b in pts[-2:]]),
            "mem_top2": cm.loglog_slope([a for a, _ in mpts[-2:]], [b for _, b in mpts[-2:]]),
        }
    step = None if args.no_step else step_share(args)
    rows = build_rows(res, slopes, step, args)
    md = render(res, slopes, step, methods, args)
    fig = plot(
        res,
        slopes,
        methods,
        Path(args.out) / "figures" / f"{NAME}{'' if args.device == 'cpu' else '_' + args.device}.png",
    )
    if fig:
        md += f"\n\n![time and memory vs pixels]({fig.relative_to(Path(args.out)).as_posix()})\n"
    cm.publish(NAME, args, meta, rows, md)
    return 0


def build_rows(res, slopes, step, args) -> list[dict]:
    rows = []
    for (m, side), r in sorted(res.items(), key=lambda t: (t[0][1], t[0][0])):
        ref = res.get(("pixel_exact", side), {}).get("time_s") or res.get(("pixel_exact_chunked", side), {}).get(
            "time_s"
        )
        row = {
            "kind": "loss",
            "method": m,
            "description": describe(m),
            "input": f"{side}×{side}",
            "pixels_per_image": r["pixels"],
            "pixels_per_batch": r["P"],
            "batch": args.batch,
            "queries": args.queries,
            "channels": args.channels,
            "classes": args.classes,
            "regions": r["regions"],
            "status": r["status"],
            "time_s": r.get("time_s"),
            "time_iqr_s": r.get("time_iqr"),
            "time_min_s": r.get("time_min"),
            "reps": r.get("reps"),
            "peak_mem_bytes": r.get("mem_bytes"),
            "ops_per_call": r.get("ops"),
            "slope_time_all": slopes[m]["time_all"],
            "slope_time_top2": slopes[m]["time_top2"],
        }
        if ref and r.get("time_s"):
            row["reference"] = "pixel_exact (time)"
            row["ratio_vs_reference"] = r["time_s"] / ref
        rows.append(cm.clean_json(row))
    if step:
        row = {
            "kind": "step_share",
            "method": "region_all in an rc2l step",
            **{k: v for k, v in step.items() if k not in ("step_times", "region_times")},
            "reference": "full rc2l training step",
            "ratio_vs_reference": step["share"],
            "goal": "< 0.05",
            "goal_met": step["share"] < 0.05,
        }
        rows.append(cm.clean_json(row))
    return rows


def render(res, slopes, step, methods, args) -> str:
    sides = sorted({s for _, s in res})
    out = [
        f"Inputs: batch {args.batch}, N={args.queries} queries, C={args.channels}, K={args.classes}, "
        f"{args.regions} teacher regions (classes) per image, every pixel valid; F at stride 4. "
        "Times: median of interleaved repetitions (forward + backward); memory: peak extra memory of one call.",
        "",
    ]
    header = (
        ["method", "ops/call"]
        + [f"{s}² ({(-(-s // 4)) ** 2:,} px)" for s in sides]
        + ["slope (all)", "slope (2 largest)"]
    )
    trows = []
    for m in methods:
        ops = res[(m, sides[0])].get("ops")
        cells = [describe(m), f"{ops:,}" if ops is not None else "–"]
        for s in sides:
            r = res[(m, s)]
            cells.append(
                cm.fmt_time(r["time_s"])
                if r.get("time_s")
                else ("not run" if r["status"].startswith("not run") else "–")
            )
        cells += [f"{slopes[m]['time_all']:.2f}", f"{slopes[m]['time_top2']:.2f}"]
        trows.append(cells)
    out += ["**Time** (forward + backward):", "", cm.markdown_table(header, trows), ""]
    mrows = []
    for m in methods:
        cells = [describe(m)]
        for s in sides:
            r = res[(m, s)]
            cells.append(
                cm.fmt_bytes(r.get("mem_bytes"))
                if r.get("mem_bytes") is not None
                else ("not run" if r["status"].startswith("not run") else "–")
            )
        cells += [f"{slopes[m]['mem_top2']:.2f}" if math.isfinite(slopes[m]["mem_top2"]) else "–"]
        mrows.append(cells)
    out += [
        "**Peak memory**:",
        "",
        cm.markdown_table(["method"] + [f"{s}²" for s in sides] + ["slope (2 largest)"], mrows),
        "",
    ]
    notes = sorted(
        {f"- {describe(m)} at {s}²: {r['status']}" for (m, s), r in res.items() if r["status"] != "ok"},
        key=lambda t: (len(t), t),
    )
    if notes:
        out += ["Rows not run:", ""] + notes + [""]
    ra = slopes["region_all"]
    quad = [
        f"{m} {slopes[m]['time_all']:.2f} (all) / {slopes[m]['time_top2']:.2f} (2 largest run)"
        for m in EXACT
        if math.isfinite(slopes[m]["time_all"])
    ]
    out.append(
        f"Growth (log-log slope of time vs pixels): region_all {ra['time_all']:.2f} over all sizes, "
        f"{ra['time_top2']:.2f} over the two largest (≈ 1 = linear); exact pixel contrast: "
        + ("; ".join(quad) + " (≈ 2 = quadratic)" if quad else "not enough sizes run")
        + "."
    )
    if step:
        out += [
            "",
            "**Region losses' share of one rc2l training step** "
            f"({step['config']}: {step['backbone']}, input {step['input']}, batch {step['batch']} labeled+unlabeled, "
            f"N={step['queries']}, point sampling {step['num_points']}, {step['regions_per_image']:.0f} teacher regions/image kept with τ_cls=0):",
            "",
            cm.markdown_table(
                ["full step (median)", "region losses fwd+bwd (median)", "share", "goal", "met"],
                [
                    [
                        cm.fmt_time(step["step_s"]),
                        cm.fmt_time(step["region_losses_s"]),
                        f"{100 * step['share']:.2f} %",
                        "< 5 %",
                        "yes" if step["share"] < 0.05 else "NO",
                    ]
                ],
            ),
            "",
            f"Steps: {step['reps']} measured after 1 warm-up, alternating with the region-loss calls "
            f"(forward alone inside the step took {cm.fmt_time(step['region_fwd_in_step_s'])}).",
        ]
    return "\n".join(out)


def plot(res, slopes, methods, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    palette = {
        "match": "C1",
        "rmc": "C2",
        "rfc": "C8",
        "rcc": "C4",
        "smc": "C5",
        "region_all": "C0",
        "pixel_exact": "C3",
        "pixel_exact_chunked": "C3",
    }
    extra = iter(["C7", "C9", "C6", "k"])
    for m in methods:
        if m not in palette:
            palette[m] = next(extra, "k")
    for ax, key, label in ((axes[0], "time_s", "time per call (s)"), (axes[1], "mem_bytes", "peak extra memory (MiB)")):
        for m in methods:
            pts = sorted((r["pixels"], r[key]) for (mm, _), r in res.items() if mm == m and r.get(key))
            if not pts:
                continue
            xs = [a for a, _ in pts]
            ys = [b if key == "time_s" else b / cm.MiB for _, b in pts]
            lab = m + (
                f" (slope {slopes[m]['time_all']:.2f})"
                if key == "time_s" and math.isfinite(slopes[m]["time_all"])
                else ""
            )
            thick = m in ("region_all", "pixel_exact", "pixel_exact_chunked")
            ax.plot(
                xs,
                ys,
                marker="o",
                label=lab,
                color=palette[m],
                lw=2.5 if thick else 1,
                ls="--" if m == "pixel_exact_chunked" else ("-" if not m.startswith("pixel_sampled") else "-."),
            )
            if key == "time_s" and m in ("region_all", "pixel_exact") and len(xs) > 1:  # guides ∝ pixels, ∝ pixels²
                k = 1 if m == "region_all" else 2
                gx = [xs[0], max(r["pixels"] for r in res.values())]
                ax.plot(
                    gx,
                    [ys[0] * (g / xs[0]) ** k for g in gx],
                    color="grey",
                    lw=0.8,
                    ls=":",
                    label=f"∝ pixels{'²' if k == 2 else ''} (guide)",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels of F per image (input side / 4)²")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(
        fontsize=7, loc="upper left", ncol=2, title="slope = log-log fit over all sizes run", title_fontsize=7
    )
    axes[1].set_ylim(bottom=1)
    axes[0].set_title("forward + backward time")
    axes[1].set_title("peak memory of one call")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
