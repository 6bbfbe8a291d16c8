"""Training speed per lever as a user gets it: every (method, lever) is its own `rc2l train`
process on the CamVid recipe (configs/camvid.yaml, data.split=1_8), and its steps/s are read
from the run's metrics.jsonl, the numbers a full run logs.

    python benchmarks/train_speed_fresh.py [--steps 50] [--rounds 2] [--data-root PATH] [--quick]
        [--methods supervised rc2l unimatch] [--arch maskformer|deeplabv3plus] [--levers ...]

Why beside train_speed.py, which times all variants' steps interleaved inside one process:
that is not how anyone trains, and a lever that pays there could still lose in a real run (the
trainer loop, data loading, one model per process). Here the variants run one after the other,
in rounds (A, B, C, A, B, C, …) so slow drift of the machine hits all of them; a run is stopped
once it has logged its last step (its final evaluation is not waited for). The first logged interval (start-up, first batches) is dropped; the median of the others is
a run's steps/s, and a variant's is the median over rounds. The semi-supervised methods run
with semi.start_iter=0 so every step has its unlabeled branch. Data as train_speed.py: real CamVid when present, else
random 480×360 images in its layout; data.cache=true (the config's) fills during the run, so the
first epoch's decoding is in every variant's steps alike.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as cm
from benchmarks.train_speed import CONFIG, LEVERS, base_overrides, data_overrides

NAME = "train_speed_fresh"
# malloc_default changes a process-wide allocator setting: only fresh processes can compare it
LEVERS = {
    **LEVERS,
    "malloc_default": (
        ["train.keep_freed_memory=false"],
        "glibc's default: freed large blocks unmapped, faulted in again (train.keep_freed_memory=false)",
    ),
}
DEFAULT_METHODS = ["supervised", "rc2l"]
FRESH_LEVERS = ["fp32", "channels_last", "bf16", "kept_bf16", "malloc_default"]  # teacher_inference_mode is a patch


def logged_rates(metrics: Path) -> list[tuple[int, float]]:
    """(step, it_s) of every "train" record written so far."""
    if not metrics.is_file():
        return []
    out = []
    for line in metrics.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if r.get("type") == "train" and r.get("it_s"):
            out.append((int(r["step"]), float(r["it_s"])))
    return out


def run_variant(overrides: list[str], out_dir: Path, steps: int, timeout_s: float) -> list[float]:
    """One `rc2l train` process until it has logged step ``steps``; its intervals' steps/s."""
    cmd = [sys.executable, "-m", "rc2l", "train", str(CONFIG), *overrides, f"out_dir={out_dir}"]
    log_path = out_dir.parent / f"{out_dir.name}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cm.REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = out_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            rates = logged_rates(metrics)
            if rates and rates[-1][0] >= steps:
                return [r for _, r in rates]
            if proc.poll() is not None:
                tail = log_path.read_text()[-2000:]
                raise RuntimeError(f"rc2l train exited with {proc.returncode} before step {steps}:\n{tail}")
            time.sleep(0.5)
        raise RuntimeError(f"rc2l train did not reach step {steps} in {timeout_s:.0f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the run is kept: no checkpoint wanted
        proc.wait()
        log.close()


def kernel_share(before) -> float:
    """Share of the CPU time that the children reaped since ``before`` spent in the kernel."""
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys_s, user_s = now.ru_stime - before.ru_stime, now.ru_utime - before.ru_utime
    return sys_s / max(sys_s + user_s, 1e-9)


def parse(argv):
    p = cm.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50, help="steps per run (the first logged interval is dropped)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="runs per variant, alternating with the others")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=["supervised", "rc2l", "unimatch"])
    p.add_argument("--arch", default="maskformer", choices=["maskformer", "deeplabv3plus"])
    p.add_argument("--levers", nargs="+", default=FRESH_LEVERS, choices=FRESH_LEVERS)
    p.add_argument("--data-root", default="", help="CamVid root (as train_speed.py)")
    p.add_argument("--run-timeout", type=float, default=900.0, help="seconds one run may take")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.log_every, args.rounds = 4, 2, 1
    if args.steps < 2 * args.log_every:
        raise SystemExit("error: --steps must be at least 2 × --log-every (the first interval is dropped)")
    args.mem = "off"
    # another set of runs goes into a block of its own: train_speed_fresh/cpu:unimatch-fp32-malloc_default-deeplabv3plus
    picked = [*args.methods, *args.levers] + ([args.arch] if args.arch != "maskformer" else [])
    args.block = "" if picked == [*DEFAULT_METHODS, *FRESH_LEVERS] else ":" + "-".join(picked)
    return cm.finish_args(args, NAME)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    meta = cm.run_meta(NAME, args, argv, __file__)
    tmp = Path(tempfile.mkdtemp(prefix="rc2l_train_speed_fresh_"))
    try:
        data, data_desc = data_overrides(args, tmp)
        threads = args.threads or os.cpu_count() or 1
        base = [
            *base_overrides(args, data, threads),
            "semi.rampup_iters=0",
            f"train.iters={args.steps + args.log_every}",
            f"train.log_every={args.log_every}",
            f"train.eval_every={10**9}",
            f"train.save_every={10**9}",
            f"model.arch={args.arch}",
        ]
        rates: dict[tuple[str, str], list[float]] = {}
        kernel: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for method in args.methods:
                for lever in args.levers:
                    out = tmp / f"{method}_{lever}_{rnd}"
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    got = run_variant(base + LEVERS[lever][0] + [f"method={method}"], out, args.steps, args.run_timeout)
                    rates.setdefault((method, lever), []).append(cm.med(got[1:]))
                    kernel.setdefault((method, lever), []).append(kernel_share(before))
                    print(f"round {rnd}: {method} / {lever}: {rates[method, lever][-1]:.3f} steps/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for (method, lever), per_round in rates.items():
        sps = cm.med(per_round)
        ref = cm.med(rates[method, "fp32"]) if (method, "fp32") in rates else None
        rows.append(
            {
                "method": method,
                "lever": lever,
                "what": LEVERS[lever][1],
                "steps_per_s": sps,
                "steps_per_s_rounds": per_round,
                "kernel_share": cm.med(kernel[method, lever]),  # of the run's CPU time: page faults, mostly
                "reference": "fp32" if ref else None,
                "speedup": sps / ref if ref else None,
                "ratio_vs_reference": ref / sps if ref else None,  # time ratio, as the other benchmarks
            }
        )
    meta.update(data=data_desc, threads=threads, steps=args.steps, rounds=args.rounds, arch=args.arch)
    cm.publish(NAME, args, meta, rows, render(rows, meta, args))
    return 0


def render(rows: list[dict], meta: dict, args) -> str:
    table = [
        [
            r["method"],
            r["lever"],
            r["what"],
            f"{r['steps_per_s']:.3f}",
            ", ".join(f"{x:.3f}" for x in r["steps_per_s_rounds"]),
            f"{100 * r['kernel_share']:.0f} %",
            f"**{r['speedup']:.2f}×**" if r["speedup"] else "–",
        ]
        for r in rows
    ]
    return "\n".join(
        [
            f"Data: {meta['data']}. Model: {meta['arch']}. Each variant a fresh `rc2l train` process, "
            f"{meta['threads']} torch thread(s), "
            f"{args.steps} steps logged every {args.log_every} (first interval dropped), {args.rounds} round(s) "
            "alternating the variants; semi.start_iter=0 (every step has its unlabeled branch).",
            "",
            cm.markdown_table(
                [
                    "method",
                    "lever",
                    "what",
                    "steps/s (median)",
                    "per round",
                    "CPU time in the kernel",
                    "speed-up vs fp32",
                ],
                table,
            ),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
