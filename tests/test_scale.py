"""Mixed precision and gradient accumulation on CPU.

What is mathematically true for accumulation: accum_steps=2 × batch 2 gives the gradient of
batch 4 when (a) nothing in the forward pass depends on which images share it: BatchNorm in
*training* mode normalises with the statistics of its own forward pass, so it is put in eval
mode here; and (b) the loss is a sum over images divided by a count taken over the whole
global batch: the mask/dice terms are divided by the target count summed over all
micro-batches (and ranks), the class term is a weighted mean per forward pass, which is the
global mean only when every query has the same weight, hence loss.no_object_weight=1."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from rc2l.engine.checkpoint import load_state

from reliability_helpers import TorchSettings, tiny_config, train_inprocess, train_records, weights


def _first_step_grads(tmp_path, *extra: str) -> dict[str, torch.Tensor]:
    """Gradients the optimizer receives at step 1 (after accumulation and clipping), BatchNorm
    in eval mode. Gradients, not weights: AdamW's first update is ~lr·sign(g), which turns
    float round-off in near-zero gradients into lr-sized weight differences."""
    from rc2l.engine.train import Trainer

    tr = Trainer(tiny_config(tmp_path, "loss.no_object_weight=1.0", "train.iters=10", *extra))
    tr.model.train()
    for m in tr.model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    grads = {}
    tr.optimizer.register_step_pre_hook(
        lambda *_: grads.update(
            {k: p.grad.detach().clone() for k, p in tr.model.named_parameters() if p.grad is not None}
        )
    )
    assert tr.train_step(tr.streams.iterators()) is not None
    return grads


def _rel_diff(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖a‖ over all parameters."""
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in a)
    den = sum((a[k].double() ** 2).sum() for k in a)
    return float((num / den).sqrt())


def test_accumulation_2x2_equals_batch_4(tmp_path):
    with TorchSettings():
        big = _first_step_grads(tmp_path / "a", "data.batch_size=4")
        acc = _first_step_grads(tmp_path / "b", "data.batch_size=2", "train.accum_steps=2")
        plain = _first_step_grads(tmp_path / "c", "data.batch_size=2")
    assert big.keys() == acc.keys() and len(big) > 100
    assert _rel_diff(big, acc) < 1e-5, _rel_diff(big, acc)
    # the comparison is sensitive: batch 2 without accumulation sees half the data
    assert _rel_diff(big, plain) > 1e-2


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # fp16: scaler skips step 1
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_trains_finite(tmp_path, amp):
    """bf16 autocast; fp16 autocast with a GradScaler (PyTorch supports both on CPU). The
    scaler's state is part of the training state."""
    train_inprocess(tmp_path, f"train.amp={amp}", "train.iters=3", "train.eval_every=3", "train.save_every=3")
    recs = train_records(tmp_path)
    assert len(recs) == 3 and all(math.isfinite(r["loss"]) for r in recs)
    w = weights(tmp_path / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
    st = load_state(tmp_path / "state.pt")
    if amp == "fp16":
        assert st["scaler"]["scale"] > 0  # an enabled scaler saves its scale (resume restores it)
    else:
        assert st["scaler"] == {}  # disabled scaler: empty state
