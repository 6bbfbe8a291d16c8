"""Batched Hungarian matching vs the per-image matcher of an earlier commit, in the same run.

    python benchmarks/matcher_vs_reference.py [--ref 0be67a3] [--batches 2 8] [--sizes 128 256 512 1024]

The reference is ``rc2l/losses/matcher.py`` read from git at ``--ref`` (the last commit that
matched image by image) and imported beside the current one; both get region_vs_pixel.py's
inputs (N=100 queries, K=21 classes, 8 teacher regions per image) and must return the same
matches.
Per batch and input side: median time of interleaved calls, the ratio current / reference, and
the tensor operations each call dispatches (``count_ops``: on a GPU, kernel launches)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rc2l.losses import matcher as current

from benchmarks import common as cm
from benchmarks.region_vs_pixel import Inputs

NAME = "matcher_vs_reference"


def load_reference(ref: str):
    """The matcher module as it was at commit ``ref``."""
    try:
        src = subprocess.run(
            ["git", "show", f"{ref}:rc2l/losses/matcher.py"], cwd=cm.REPO, check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(
            f"error: cannot read rc2l/losses/matcher.py at commit {ref!r} (a shallow clone?): "
            f"{getattr(e, 'stderr', '') or e}".strip()
        )
    path = Path(tempfile.mkdtemp()) / f"matcher_{ref}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"matcher_{ref}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    p = cm.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="0be67a3", help="git commit of the reference (per-image) matcher")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024], help="input sides S (masks are S/4)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.sizes, args.reps = args.batches[:1], [min(args.sizes)], 1
    cm.finish_args(args)
    ref = load_reference(args.ref)
    meta = cm.run_meta(NAME, args, argv, __file__)
    rows, table = [], []
    for batch in args.batches:
        for side in args.sizes:
            x = Inputs(side, batch, queries=100, channels=256, classes=21, regions=8, device=args.device)
            call = (x.pred_logits, x.pred_masks, x.regions, *x.rl.match_weights)
            fns = {"reference": lambda: ref.match(*call), "current": lambda: current.match(*call)}
            a, b = fns["reference"](), fns["current"]()
            same = all(torch.equal(p.cpu(), q.cpu()) for u, v in zip(a, b) for p, q in zip(u, v))
            if not same:
                raise SystemExit(f"error: batch {batch}, side {side}: the current matcher disagrees with {args.ref}")
            times = cm.interleaved(fns, args.device, args.reps)
            ops = {k: cm.count_ops(fn) for k, fn in fns.items()}
            t_ref, t_cur = cm.med(times["reference"]), cm.med(times["current"])
            rows.append(
                {
                    "batch": batch,
                    "side": side,
                    "time_ref_s": t_ref,
                    "time_s": t_cur,
                    "ratio": t_cur / t_ref,
                    "ops_ref": ops["reference"],
                    "ops": ops["current"],
                }
            )
            table.append(
                [
                    batch,
                    f"{side}²",
                    cm.fmt_time(t_ref),
                    cm.fmt_time(t_cur),
                    f"{t_cur / t_ref:.2f}",
                    ops["reference"],
                    ops["current"],
                ]
            )
            print(f"batch {batch}, {side}²: reference {cm.fmt_time(t_ref)}, current {cm.fmt_time(t_cur)}", flush=True)
    md = (
        f"Reference: `rc2l/losses/matcher.py` at `{args.ref}` (per image), same inputs and matches; "
        f"region_vs_pixel.py's inputs (N=100, K=21, 8 regions per image); median of {args.reps} interleaved calls.\n\n"
        + cm.markdown_table(
            ["batch", "input", "reference", "current", "current / reference", "ops/call reference", "ops/call current"],
            table,
        )
    )
    cm.publish(NAME, args, meta, rows, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
