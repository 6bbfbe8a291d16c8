"""Tensor operations per call (forward + backward, views excluded) of the matching, each region
loss, ``RegionLosses`` and the supervised criterion, at several batch sizes.

    python benchmarks/op_counts.py [--batches 2 8] [--layers 9]

On a GPU each counted operation is at least one kernel launch, which is what small losses are
bound by; a call whose count grows with the batch still loops over images. The count does not
depend on the machine, its load or the input size, so one small input (region_vs_pixel.py's at
128², N=100, C=256, K=21, 8 regions per image) is enough. "criterion" is ``SetCriterion`` on
``--layers`` decoder layers (final + deep supervision), labels = the teacher's Ŷ at input size."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as cm
from benchmarks.region_vs_pixel import Inputs, make_fn

NAME = "op_counts"
CALLS = {
    "match": "Hungarian matching",
    "rmc": "RMC",
    "rfc": "RFC",
    "rcc": "RCC",
    "smc": "SMC",
    "region_all": "`RegionLosses`: matching + all four",
}


def criterion_fn(x: Inputs, layers: int):
    """SetCriterion fwd+bwd on ``layers`` decoder layers (the same student tensors each layer)."""
    from rc2l.config import LossConfig
    from rc2l.losses.criterion import SetCriterion

    crit = SetCriterion(x.pred_logits.shape[-1] - 1, LossConfig())
    labels = torch.nn.functional.interpolate(x.label[:, None].float(), scale_factor=4, mode="nearest")[:, 0].long()
    layer = {"pred_logits": x.pred_logits, "pred_masks": x.pred_masks}
    outputs = {**layer, "aux_outputs": [layer] * (layers - 1)}

    def f():
        crit(outputs, labels)["loss"].backward()
        x.zero()

    return f


def counts(batch: int, layers: int, side: int = 128) -> dict[str, int]:
    x = Inputs(side, batch, queries=100, channels=256, classes=21, regions=8, device="cpu")
    fns = {k: make_fn(k, x, "cpu", False) for k in CALLS}
    fns["criterion"] = criterion_fn(x, layers)
    return {k: cm.count_ops(fn) for k, fn in fns.items()}


def main(argv: list[str] | None = None) -> int:
    p = cm.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    p.add_argument("--layers", type=int, default=9, help="decoder layers the criterion is summed over")
    args = p.parse_args(argv)
    if args.quick:
        args.layers = min(args.layers, 2)
    args.mem = "off"
    cm.finish_args(args, NAME)
    meta = cm.run_meta(NAME, args, argv, __file__)
    by_batch = {b: counts(b, args.layers) for b in args.batches}
    names = {**CALLS, "criterion": f"supervised criterion, {args.layers} layers"}
    rows = [{"call": k, **{f"ops_batch_{b}": by_batch[b][k] for b in args.batches}} for k in names]
    table = [[names[r["call"]], *(f"{r[f'ops_batch_{b}']:,}" for b in args.batches)] for r in rows]
    md = (
        "Inputs: region_vs_pixel.py's at 128² (N=100, C=256, K=21, 8 regions per image); forward + backward, "
        "views excluded.\n\n" + cm.markdown_table(["call", *(f"ops, batch {b}" for b in args.batches)], table)
    )
    cm.publish(NAME, args, meta, rows, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
