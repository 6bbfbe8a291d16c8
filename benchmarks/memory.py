"""Peak memory and time of one training step for every config in configs/*.yaml, supervised
and rc2l, for the docs' memory table.

Each (config, method) runs in a fresh process: build the Trainer, run one warm-up step (the
optimizer state gets allocated), then reset the RSS high-water mark and run --steps more
steps. Reported: the process' peak RSS during those steps (absolute: model, teacher, optimizer
state, activations, the Python/torch runtime — what the machine must have) and the increase
over the RSS before them (what the step itself needs); on CUDA the allocator's peak instead.

Images are synthetic at each config's crop size (the memory and time of a step do not depend
on the image content; K is the synthetic set's instead of the dataset's, which only changes
the class head). GPU configs (train.device: cuda) measured on CPU are reduced to
--cpu-gpu-side pixels and batch --cpu-gpu-batch, and say so.

    .venv/bin/python benchmarks/memory.py
    .venv/bin/python benchmarks/memory.py --device cuda --amp
    .venv/bin/python benchmarks/memory.py --check-method 96   # peaks of a known 96 MiB allocation
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common as cm

NAME = "memory"
TINY = [
    "model.num_queries=8",
    "model.hidden_dim=32",
    "model.mask_dim=32",
    "model.dec_layers=2",
    "model.nheads=4",
    "model.dim_feedforward=64",
    "model.backbone=resnet18",
    "loss.num_points=256",
]


def plan(config: Path, method: str, args) -> dict:
    """Overrides for one (config, method) run and what was changed from the file."""
    from rc2l.config import load_config

    cfg = load_config(config, [])
    gpu_cfg = cfg.train.device == "cuda"
    crop = list(cfg.data.crop_size)
    bl, bu = cfg.data.batch_size, cfg.data.unlabeled_batch_size
    notes = []
    if args.device == "cpu" and gpu_cfg:
        side = args.cpu_gpu_side
        if max(crop) > side:
            notes.append(f"crop {crop[0]}×{crop[1]} → {side}×{side}")
            crop = [side, side]
        if bl > args.cpu_gpu_batch or bu > args.cpu_gpu_batch:
            notes.append(f"batch {bl}+{bu} → {args.cpu_gpu_batch}+{args.cpu_gpu_batch}")
            bl = bu = args.cpu_gpu_batch
    if args.quick:
        crop, bl, bu = [64, 64], 2, 2
        notes.append("QUICK: tiny resnet18 model, 64², batch 2")
    resize = list(cfg.data.resize)
    if resize and args.quick:
        resize = []
    side = max(crop + resize)
    amp = "bf16" if args.amp else "'off'"  # quoted: YAML reads a bare off as False
    ov = [
        f"method={method}",
        "model.pretrained=none",
        "data.name=synthetic",
        "data.root=",
        "data.splits_dir=",
        "data.split=1_2",
        f"data.crop_size=[{crop[0]},{crop[1]}]",
        f"data.resize=[{','.join(map(str, resize))}]",
        f"data.synthetic.size={side}",
        "data.synthetic.num_train=4",
        "data.synthetic.num_val=1",
        f"data.batch_size={bl}",
        f"data.unlabeled_batch_size={bu}",
        "data.workers=0",
        "train.progress=false",
        f"train.device={args.device}",
        f"train.amp={amp}",
        f"train.threads={args.threads}",
        "semi.tau_cls=0.0",
    ]
    if args.quick:
        ov += TINY
    return {
        "config": f"configs/{config.name}",
        "method": method,
        "overrides": ov,
        "gpu_config": gpu_cfg,
        "backbone": "resnet18" if args.quick else cfg.model.backbone,
        "input": f"{crop[0]}×{crop[1]}",
        "batch": f"{bl}+{bu}" if method != "supervised" else f"{bl}",
        "notes": "; ".join(notes),
        "num_points": 256 if args.quick else cfg.loss.num_points,
        "iters": None if notes else cfg.train.iters,
    }


def step_worker(config: str, overrides: list[str], device: str, steps: int, threads: int = 0) -> dict:
    """Fresh-process body: Trainer → 1 warm-up step → reset peak → ``steps`` measured steps."""
    if threads > 0:
        torch.set_num_threads(threads)
    from rc2l.config import load_config
    from rc2l.engine.train import Trainer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(cm.REPO / config, overrides + [f"out_dir={tmp}"])
        tr = Trainer(cfg)
        tr.model.train()
        its = tr.streams.iterators()
        fixed = {k: itertools.repeat(next(it)) for k, it in its.items()}
        del its
        if tr.train_step(fixed) is None:
            raise RuntimeError("warm-up step skipped (non-finite loss)")
        times = []
        with cm.PeakMeter(device) as m:
            for _ in range(steps):
                times.append(cm.time_once(lambda: tr.train_step(fixed), device))
        params = sum(p.numel() for p in tr.model.parameters())
        return {
            "peak_abs": m.absolute,
            "peak_step": m.peak,
            "times": times,
            "params": params,
            "rss_before": m.before,
            "num_classes": tr.info.num_classes,
        }


def check_method(mib: int) -> int:
    """Allocate and touch ``mib`` MiB inside ``PeakMeter``, in this process and in a fresh one
    (``FreshRunner``), and print {"bytes", "inproc", "fresh"} as JSON: each peak should be about
    the allocation, and ``reset_ok`` says the kernel's high-water mark could be reset."""
    n = mib * cm.MiB
    fresh = cm.FreshRunner(["benchmarks.common"])("benchmarks.common:alloc_probe", nbytes=n)
    print(json.dumps({"bytes": n, "inproc": cm.alloc_probe(n), "fresh": fresh}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = cm.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=None, help="config files (default configs/*.yaml)")
    p.add_argument(
        "--methods", nargs="+", default=["supervised", "rc2l"], choices=["supervised", "fixmatch", "unimatch", "rc2l"]
    )
    p.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up")
    p.add_argument("--cpu-gpu-side", type=int, default=256, help="crop side for GPU configs measured on CPU")
    p.add_argument("--cpu-gpu-batch", type=int, default=2, help="batch for GPU configs measured on CPU")
    p.add_argument(
        "--check-method",
        type=int,
        default=0,
        metavar="MIB",
        help="measure a known allocation of MIB MiB in this process and in a fresh one, print both as JSON "
        "and exit: a check of the CPU memory method on this machine",
    )
    args = p.parse_args(argv)
    if args.check_method:
        return check_method(args.check_method)
    if args.mem == "off":
        raise SystemExit("error: benchmarks/memory.py measures memory; --mem off makes no sense here")
    configs = [Path(c) for c in args.configs] if args.configs else sorted((cm.REPO / "configs").glob("*.yaml"))
    if args.quick:
        args.steps = 1
    cm.finish_args(args, NAME)
    meta = cm.run_meta(NAME, args, argv, __file__)
    runner = (
        cm.FreshRunner(["torch", "rc2l.engine.train", "rc2l.engine.methods", "benchmarks.memory"])
        if args.mem == "fresh"
        else None
    )
    rows = []
    t0 = time.time()
    for config in configs:
        config = config if config.is_absolute() else (Path.cwd() / config)
        rel = config.resolve().relative_to(cm.REPO) if config.resolve().is_relative_to(cm.REPO) else config
        for method in args.methods:
            pl = plan(config, method, args)
            kw = dict(
                config=str(rel), overrides=pl["overrides"], device=args.device, steps=args.steps, threads=args.threads
            )
            try:
                r = runner("benchmarks.memory:step_worker", **kw) if runner else step_worker(**kw)
                status = "ok"
            except RuntimeError as e:
                r, status = {}, f"failed: {e}"
            row = {k: v for k, v in pl.items() if k != "overrides"}
            step_s = cm.med(r["times"]) if r.get("times") else None
            row.update(
                status=status,
                peak_mem_bytes=r.get("peak_abs"),
                step_mem_bytes=r.get("peak_step"),
                step_s=step_s,
                schedule_hours=pl["iters"] * step_s / 3600 if pl["iters"] and step_s else None,
                step_times=r.get("times"),
                params=r.get("params"),
                num_classes=r.get("num_classes"),
                device_measured=args.device,
                amp="bf16" if args.amp else "off",
            )
            rows.append(cm.clean_json(row))
            print(
                f"[{time.time() - t0:5.0f} s] {row['config']} {method}: peak {cm.fmt_bytes(row['peak_mem_bytes'])}, "
                f"step {cm.fmt_time(row['step_s'])} {status if status != 'ok' else ''}",
                flush=True,
            )
    sup = {r["config"]: r for r in rows if r["method"] == "supervised"}
    for r in rows:
        ref = sup.get(r["config"])
        if r["method"] != "supervised" and ref and ref.get("peak_mem_bytes") and r.get("peak_mem_bytes"):
            r["reference"] = "supervised step, same config"
            r["ratio_vs_reference"] = r["peak_mem_bytes"] / ref["peak_mem_bytes"]
            if ref.get("step_s") and r.get("step_s"):
                r["time_ratio_vs_reference"] = r["step_s"] / ref["step_s"]
    md = render(rows, args)
    cm.publish(NAME, args, meta, rows, md)
    return 0


def render(rows, args) -> str:
    mem_col = "peak GPU memory (allocated)" if args.device == "cuda" else "peak RSS (process)"
    table = []
    for r in rows:
        ratio = f" ({r['ratio_vs_reference']:.2f}× sup.)" if r.get("ratio_vs_reference") else ""
        table.append(
            [
                r["config"],
                r["backbone"],
                r["input"],
                r["batch"],
                r["method"],
                cm.fmt_bytes(r["peak_mem_bytes"]) + ratio,
                cm.fmt_bytes(r["step_mem_bytes"]),
                cm.fmt_time(r["step_s"]),
                f"{r['schedule_hours']:.1f} h" if r.get("schedule_hours") else "–",
                r["notes"] or ("" if r["status"] == "ok" else r["status"]),
            ]
        )
    head = [
        "config",
        "backbone",
        "input",
        "batch (lab.+unlab.)",
        "method",
        mem_col,
        "increase during the step",
        "step time",
        "train.iters × step time",
        "changed from the config",
    ]
    return "\n".join(
        [
            f"One warm-up step, then {args.steps} measured step(s) in a fresh process per row; data workers 0 (no loader "
            "processes); synthetic images; random-init model (`model.pretrained=none`); τ_cls = 0 for rc2l so a random teacher "
            "keeps its regions (upper bound on region cost). Step time: median of the measured steps (not interleaved). "
            "train.iters × step time: the config's whole schedule at that step time on one device, without evaluation "
            "(only where the config ran at its own crop and batch).",
            "",
            cm.markdown_table(head, table),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
