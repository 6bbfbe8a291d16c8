"""Property-based tests (hypothesis) where hand-made cases are thin: the batched Hungarian
matcher against brute force, CutMix against the stride-4 downsampling, and mIoU from the
confusion matrix against a direct per-class count."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rc2l.engine.evaluate import confusion_matrix, iou_from_confusion
from rc2l.engine.teacher import mix_with_partner, stride_boxes
from rc2l.losses.matcher import hungarian_padded

from helpers import downsample_box

PROPS = settings(max_examples=50, deadline=None)


# ----------------------------------------------------------------------------- matcher
def brute_force_min(c: np.ndarray) -> float:
    """Least total cost of a one-to-one assignment of min(N, M) pairs, over all of them."""
    n, m = c.shape
    if n == 0 or m == 0:
        return 0.0
    if n >= m:  # every target gets a distinct query
        return min(sum(float(c[p, j]) for j, p in enumerate(perm)) for perm in itertools.permutations(range(n), m))
    return min(sum(float(c[i, t]) for i, t in enumerate(perm)) for perm in itertools.permutations(range(m), n))


@st.composite
def padded_costs(draw):
    """(B, N, max M) float32 costs, the counts M_b (uneven, zero allowed) and the padding
    columns filled with a very attractive cost: a matcher that looked at them would use them."""
    b = draw(st.integers(1, 3))
    n = draw(st.integers(1, 5))
    counts = draw(st.lists(st.integers(0, 5), min_size=b, max_size=b))
    width = max(counts)
    cost = draw(arrays(np.float32, (b, n, width), elements=st.floats(-4, 4, width=32)))
    for i, m in enumerate(counts):
        cost[i, :, m:] = -1e4
    return torch.from_numpy(cost), counts


@PROPS
@given(padded_costs())
def test_hungarian_padded_equals_brute_force(case):
    cost, counts = case
    out = hungarian_padded(cost, counts)
    assert len(out) == len(counts)
    for b, ((pred, tgt), m) in enumerate(zip(out, counts)):
        n = cost.shape[1]
        c = cost[b, :, :m].numpy()
        k = min(n, m)
        assert pred.dtype == tgt.dtype == torch.int64 and pred.shape == tgt.shape == (k,)
        # a one-to-one assignment inside image b's real columns, sorted by target
        assert len(set(pred.tolist())) == k and len(set(tgt.tolist())) == k
        assert all(0 <= p < n for p in pred.tolist()) and all(0 <= t < m for t in tgt.tolist())
        assert tgt.tolist() == sorted(tgt.tolist())
        if m <= n:
            assert tgt.tolist() == list(range(m))  # every target is matched
        total = sum(float(c[p, t]) for p, t in zip(pred.tolist(), tgt.tolist()))
        assert total == pytest.approx(brute_force_min(c), abs=1e-4)


# ----------------------------------------------------------------------------- CutMix vs stride 4
S = 4  # the stride of pred_masks / F


def area_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 4h, 4w) → (B, C, h, w): the mean of each 4×4 block."""
    return Fn.interpolate(x, scale_factor=1 / S, mode="area")


def blow_up(small: torch.Tensor) -> torch.Tensor:
    """(B, h, w) grid → (B, 4h, 4w) pixels, each cell a 4×4 block."""
    return small.repeat_interleave(S, -2).repeat_interleave(S, -1)


@st.composite
def grid_boxes(draw):
    """A batch of rectangles on the stride-4 grid, one per image (empty allowed), as (B, h, w) bool."""
    b, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    box = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        y0, y1 = sorted(draw(st.lists(st.integers(0, h), min_size=2, max_size=2)))
        x0, x1 = sorted(draw(st.lists(st.integers(0, w), min_size=2, max_size=2)))
        box[i, y0:y1, x0:x1] = True
    return box


@PROPS
@given(grid_boxes())
def test_grid_box_blown_up_then_area_downsampled_is_the_grid_box(small):
    big = blow_up(small)
    assert torch.equal(downsample_box(big, small.shape[-2:]), small)


@PROPS
@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(1, 6),
    st.floats(0, 1),
    st.integers(0, 2**31 - 1),
    st.integers(0, 10_000),
)
def test_stride_boxes_downsample_to_their_grid_box(b, h, w, p, seed, step):
    """stride_boxes' image-resolution box, area-downsampled to the feature grid, is its grid box."""
    small, big = stride_boxes(b, (S * h, S * w), (h, w), p, seed=seed, step=step, device="cpu")
    assert big.shape == (b, S * h, S * w) and small.shape == (b, h, w)
    assert torch.equal(downsample_box(big, (h, w)), small)


@PROPS
@given(grid_boxes(), st.integers(0, 2**31 - 1))
def test_cutmix_commutes_with_stride_4_downsampling(small, seed):
    """For a stride-aligned box: mixing the images then area-downsampling = downsampling then
    mixing with the grid box; the same for per-pixel targets (stride-4 subsampling of a label
    map, as the targets of the 4×4 cells) and for the box itself."""
    b, h, w = small.shape
    g = torch.Generator().manual_seed(seed)
    big = blow_up(small)
    images = torch.rand(b, 3, S * h, S * w, generator=g)
    mixed_then_down = area_down(mix_with_partner(images, big))
    down_then_mixed = mix_with_partner(area_down(images), small)
    assert torch.allclose(mixed_then_down, down_then_mixed, atol=1e-6, rtol=0)
    labels = torch.randint(0, 5, (b, S * h, S * w), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
    sub = (slice(None), slice(0, None, S), slice(0, None, S))
    assert torch.equal(mix_with_partner(labels, big)[sub], mix_with_partner(labels[sub], small))
    assert torch.equal(downsample_box(mix_with_partner(big, big), (h, w)), mix_with_partner(small, small))
    # the partner rule: image i takes image (i + 1) % B where its box is set
    j = (torch.arange(b) + 1) % b
    assert torch.equal(down_then_mixed, torch.where(small[:, None], area_down(images)[j], area_down(images)))


# ----------------------------------------------------------------------------- mIoU
def direct_iou(pred: np.ndarray, target: np.ndarray, k: int, ignore: int = 255) -> tuple[float, list[float]]:
    """Per-class TP / (TP + FP + FN) counted pixel by pixel over the non-ignored pixels; mIoU over
    the classes present in the ground truth or the prediction."""
    valid = target != ignore
    per_class, present = [], []
    for c in range(k):
        tp = int(np.sum((pred == c) & (target == c) & valid))
        fp = int(np.sum((pred == c) & (target != c) & valid))
        fn = int(np.sum((pred != c) & (target == c) & valid))
        union = tp + fp + fn
        per_class.append(tp / union if union else math.nan)
        if union:
            present.append(tp / union)
    return (sum(present) / len(present) if present else math.nan), per_class


@st.composite
def label_maps(draw):
    k = draw(st.integers(1, 6))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    pred = draw(arrays(np.int64, shape, elements=st.integers(0, k - 1)))
    target = draw(arrays(np.int64, shape, elements=st.sampled_from(list(range(k)) + [255])))
    return k, pred, target


@PROPS
@given(label_maps())
def test_miou_from_confusion_equals_direct_count(case):
    k, pred, target = case
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), k)
    assert cm.shape == (k, k) and int(cm.sum()) == int((target != 255).sum())
    miou, per_class = iou_from_confusion(cm)
    want_miou, want = direct_iou(pred, target, k)
    assert len(per_class) == k
    for got, exp in zip(per_class, want):
        assert (math.isnan(got) and math.isnan(exp)) or got == pytest.approx(exp, abs=1e-12)
    assert (math.isnan(miou) and math.isnan(want_miou)) or miou == pytest.approx(want_miou, abs=1e-12)
    # the evaluation loop sums per-image matrices: that is the matrix of all pixels at once
    per_image = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), k) for p, t in zip(pred, target))
    assert torch.equal(per_image, cm)
