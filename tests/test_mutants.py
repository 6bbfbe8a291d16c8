"""Tests written to kill the mutants ``tools/mutation.py`` found alive (docs/reliability.md,
"Mutation score"): each asserts a documented behaviour on a small hand-made case, grouped by
the file whose mutants it kills."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

from rc2l.losses.functional import (
    connected_zero,
    dice,
    log_normalized_semantic,
    mask_average_pool,
    normalize_semantic,
    pixel_log_probs,
    pixel_probs,
    targets_from_labels,
)
from rc2l.losses.matcher import (
    batch_bce_cost,
    hungarian,
    match,
    match_cost,
    match_padded,
    pack_matches,
    pad_targets,
)


# ----------------------------------------------------------------------------- losses/functional.py
def test_dice_eps_is_added_to_the_denominator_and_an_empty_pair_is_zero():
    a = torch.tensor([[1.0, 0.5, 0.0]])
    b = torch.tensor([[1.0, 1.0, 0.0]])
    # 2·1.5 / (1.5 + 2 + 0.5)
    assert dice(a, b, smooth=0.0, eps=0.5).item() == pytest.approx(3.0 / 4.0)
    assert dice(a, b, smooth=1.0, eps=0.5).item() == pytest.approx(4.0 / 5.0)
    z = torch.zeros(1, 3)
    assert dice(z, z, smooth=0.0, eps=1e-6).item() == 0.0  # no positive, and not 0/0
    assert dice(z, z).item() == 1.0  # smooth = 1: an empty pair agrees


def test_mask_average_pool_casts_the_masks_to_the_features_dtype():
    F = torch.arange(8, dtype=torch.float64).reshape(2, 2, 2)  # (C, h, w)
    m = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float32)  # (N, h, w)
    r = mask_average_pool(F, m, eps=0.0)
    assert r.dtype == torch.float64
    assert r.tolist() == [[0.5, 4.5]]
    r = mask_average_pool(F, m.bool(), eps=0.0)
    assert r.tolist() == [[0.5, 4.5]]


def test_normalize_semantic_clamps_negatives_and_normalizes():
    S = torch.tensor([2.0, -1.0, 6.0]).reshape(1, 3, 1, 1)
    sbar = normalize_semantic(S)
    assert sbar.flatten().tolist() == pytest.approx([0.25, 0.0, 0.75])
    assert normalize_semantic(S.bfloat16()).dtype == torch.float32
    logp = log_normalized_semantic(S)
    assert logp.flatten()[[0, 2]].tolist() == pytest.approx([math.log(0.25), math.log(0.75)])
    assert logp.flatten()[1].item() == pytest.approx(math.log(1e-6) - math.log(8.0))  # clamped, finite
    assert log_normalized_semantic(S.bfloat16()).dtype == torch.float32
    zero = torch.zeros(1, 3, 1, 1)
    assert torch.equal(normalize_semantic(zero), zero)  # an all-zero pixel stays 0, not NaN


def test_pixel_probs_of_both_architectures():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, generator=g, requires_grad=True)
    S = torch.rand(2, 3, 2, 2, generator=g, requires_grad=True)
    assert torch.allclose(pixel_log_probs({"sem_logits": logits}), logits.log_softmax(1))
    assert torch.allclose(pixel_log_probs({"sem_masks": S}), (S / S.sum(1, keepdim=True)).log(), atol=1e-6)
    p = pixel_probs({"sem_logits": logits})
    assert torch.allclose(p, logits.softmax(1)) and not p.requires_grad
    q = pixel_probs({"sem_masks": S})
    assert torch.allclose(q, S / S.sum(1, keepdim=True)) and not q.requires_grad


def test_targets_from_labels_without_ignore_pixels_and_with_them():
    labels = torch.tensor([[[0, 2], [2, 2]], [[1, 1], [0, 1]]])  # no ignore pixel: max label 2
    t = targets_from_labels(labels)
    assert [x["labels"].tolist() for x in t] == [[0, 2], [0, 1]]
    for x, lab in zip(t, labels):
        for c, m in zip(x["labels"], x["masks"]):
            assert torch.equal(m, (lab == c).float())
        assert bool(x["valid"].all())
    labels = torch.tensor([[[255, 1], [1, 255]], [[0, 0], [255, 1]]])
    t = targets_from_labels(labels)
    assert [x["labels"].tolist() for x in t] == [[1], [0, 1]]  # the ignored pixels are no class 0
    assert t[0]["valid"].tolist() == [[False, True], [True, False]]


def test_connected_zero_reaches_every_tensor_even_one_element_ones():
    p = torch.tensor([3.0], requires_grad=True)
    q = torch.randn(2, 2, requires_grad=True)
    empty = torch.zeros(0, requires_grad=True)
    z = connected_zero(empty, torch.ones(3), p, q)
    assert z.item() == 0.0 and z.requires_grad
    z.backward()
    assert p.grad is not None and p.grad.tolist() == [0.0]
    assert q.grad is not None and torch.equal(q.grad, torch.zeros(2, 2))
    assert not connected_zero(torch.ones(3)).requires_grad


# ----------------------------------------------------------------------------- losses/matcher.py
def test_match_cost_is_the_documented_weighted_sum():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, generator=g)  # N = 3 queries, K + 1 = 4
    masks = torch.randn(3, 5, generator=g)  # P = 5 pixels
    tc = torch.tensor([2, 0])
    tm = (torch.rand(2, 5, generator=g) > 0.5).float()
    prob = logits.softmax(-1)
    bce = torch.stack(
        [torch.stack([Fn.binary_cross_entropy_with_logits(masks[i], tm[j]) for j in range(2)]) for i in range(3)]
    )
    s = masks.sigmoid()
    dic = 1 - (2 * s @ tm.T + 1) / (s.sum(-1)[:, None] + tm.sum(-1)[None] + 1)
    want = 2.0 * -prob[:, tc] + 5.0 * bce + 5.0 * dic
    assert torch.allclose(match_cost(logits, masks, tc, tm), want, atol=1e-5)
    assert torch.allclose(match_cost(logits, masks, tc, tm, 1.0, 0.0, 0.0), -prob[:, tc], atol=1e-6)


def test_the_class_cost_decides_between_identical_masks():
    logits = torch.tensor([[5.0, -5.0, 0.0], [-5.0, 5.0, 0.0]])  # query 0 says class 0, query 1 class 1
    masks = torch.zeros(2, 4)
    pi, ti = hungarian(match_cost(logits, masks, torch.tensor([1, 0]), torch.ones(2, 4)))
    assert pi.tolist() == [1, 0] and ti.tolist() == [0, 1]


def test_bce_cost_of_no_pixel_is_zero_not_nan():
    assert torch.equal(batch_bce_cost(torch.zeros(2, 0), torch.zeros(3, 0)), torch.zeros(2, 3))
    x, t = torch.randn(2, 4), torch.ones(3, 4)
    assert torch.equal(batch_bce_cost(x, t, weight=torch.zeros(4)), torch.zeros(2, 3))


def test_minus_infinity_in_a_cost_is_the_best_pair():
    cost = torch.tensor([[-float("inf"), 0.0], [0.0, 5.0]])
    pi, ti = hungarian(cost)
    assert pi.tolist() == [0, 1] and ti.tolist() == [0, 1]


def test_pack_matches_of_no_image_is_empty():
    m = pack_matches([], [], "cpu")
    assert len(m) == 0 and m.img.shape == (0,) and m.counts == []


@pytest.mark.parametrize("padded", [False, True])
def test_one_target_per_image_is_matched(padded):
    logits = torch.zeros(2, 3, 3)
    masks = -5 * torch.ones(2, 3, 2, 2)
    masks[0, 2], masks[1, 1] = 5.0, 5.0  # query 2 of image 0 and query 1 of image 1 cover the image
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 2, 2)} for _ in range(2)]
    if padded:
        tm, counts = pad_targets(targets, "masks")
        tl, _ = pad_targets(targets, "labels")
        out = match_padded(logits, masks.flatten(2), tl, tm.flatten(2), counts)
    else:
        out = match(logits, masks, targets)
    assert [(p.tolist(), t.tolist()) for p, t in out] == [([2], [0]), ([1], [0])]


# ----------------------------------------------------------------------------- losses/criterion.py
def _criterion_case():
    """Labels 4×4: left half class 0, right half class 1, one ignore pixel. Query 0 predicts the
    left half as class 0, query 1 the right half as class 1, query 2 nothing ("no object")."""
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    labels[0, :, 2:] = 1
    labels[0, 0, 0] = 255
    masks = torch.full((1, 3, 2, 2), -6.0)
    masks[0, 0, :, 0] = 4.0
    masks[0, 1, :, 1] = 3.0
    masks[0, 1, 0, 0] = 0.5
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, 4.0]]])
    return {"pred_logits": logits, "pred_masks": masks}, labels


def _by_hand(out, labels, num_masks, focal=False):
    logp = out["pred_logits"][0].log_softmax(-1)
    w = torch.tensor([1.0, 1.0, 0.1])
    ce = -(w * logp[[0, 1, 2], [0, 1, 2]]).sum() / w.sum()
    s = Fn.interpolate(out["pred_masks"][:, :2].float(), size=(4, 4), mode="bilinear", align_corners=False)[0].flatten(
        1
    )
    t = torch.stack([(labels[0] == 0).float(), (labels[0] == 1).float()]).flatten(1)
    valid = (labels[0] != 255).float().flatten()
    p = s.sigmoid()
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    if focal:
        p_t = p * t + (1 - p) * (1 - t)
        bce = bce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))
    mask = ((bce * valid).sum(-1) / valid.sum()).sum() / num_masks
    ps, ts = p * valid, t * valid
    dice_l = (1 - (2 * (ps * ts).sum(-1) + 1) / (ps.sum(-1) + ts.sum(-1) + 1)).sum() / num_masks
    return {"loss_ce": 2 * ce, "loss_mask": 5 * mask, "loss_dice": 5 * dice_l, "loss": 2 * ce + 5 * mask + 5 * dice_l}


@pytest.mark.parametrize("mask_loss", ["bce", "focal"])
def test_set_criterion_terms_by_hand(mask_loss):
    from rc2l.config import LossConfig
    from rc2l.losses.criterion import SetCriterion

    out, labels = _criterion_case()
    crit = SetCriterion(2, LossConfig(deep_supervision=False, mask_loss=mask_loss))
    for given, used in ((None, 2.0), (4.0, 4.0), (0.5, 1.0)):  # default: the batch's 2 targets; at least 1
        got = crit(out, labels, given)
        want = _by_hand(out, labels, used, focal=mask_loss == "focal")
        for k in want:
            assert got[k].item() == pytest.approx(want[k].item(), rel=1e-5), (k, given)


def test_set_criterion_matches_when_one_image_has_no_target():
    from rc2l.config import LossConfig
    from rc2l.losses.criterion import SetCriterion

    out, labels = _criterion_case()
    out2 = {k: torch.cat([v, v]) for k, v in out.items()}
    labels2 = torch.cat([labels, torch.full_like(labels, 255)])  # image 1: every pixel ignored
    crit = SetCriterion(2, LossConfig(deep_supervision=False))
    one, two = crit(out, labels), crit(out2, labels2)
    for k in ("loss_mask", "loss_dice"):
        assert one[k].item() > 0 and two[k].item() == pytest.approx(one[k].item(), rel=1e-5), k


def test_point_sampling_picks_the_most_uncertain_points():
    from rc2l.losses.criterion import point_sample, sample_points

    logits = torch.tensor([0.0, 0.3, 2.0, 9.0]).repeat(4, 1) * torch.tensor([1.0, -1.0, 1.0, 1.0])[:, None]
    logits = logits[None, None]  # (1, 1, 4, 4): |logit| grows to the right, some negative
    torch.manual_seed(0)
    every = torch.rand(1, 24, 2)
    unc = -point_sample(logits, every).squeeze(1).abs()
    want = every[0, unc.topk(6, dim=1).indices[0]]
    torch.manual_seed(0)
    coords = sample_points(logits, 8, 3.0, 0.75)
    assert coords.shape == (1, 8, 2)
    assert torch.equal(coords[0, :6], want)  # 8 · 0.75 importance points: the 6 smallest |logit| of 24


def test_per_layer_terms_are_logged_by_decoder_layer():
    from rc2l.config import LossConfig
    from rc2l.losses.criterion import SetCriterion

    final, labels = _criterion_case()
    final = {k: v.requires_grad_() for k, v in final.items()}
    aux = {"pred_logits": final["pred_logits"].flip(1), "pred_masks": final["pred_masks"] * 0.5}
    crit = SetCriterion(2, LossConfig())
    got = crit({**final, "aux_outputs": [aux]}, labels)
    f, a = crit(final, labels), crit(aux, labels)  # each layer alone (no aux outputs)
    assert sorted(k for k in got if k[-1].isdigit()) == [
        f"loss_{t}_{l}" for t in ("ce", "dice", "mask") for l in (0, 1)
    ]
    for t in ("ce", "mask", "dice"):
        assert got[f"loss_{t}_1"].item() == pytest.approx(f[f"loss_{t}"].item(), rel=1e-6)  # the final output
        assert got[f"loss_{t}_0"].item() == pytest.approx(a[f"loss_{t}"].item(), rel=1e-6)  # the first layer
        assert got[f"loss_{t}"].item() == pytest.approx(f[f"loss_{t}"].item() + a[f"loss_{t}"].item(), rel=1e-6)
        assert not got[f"loss_{t}_0"].requires_grad and not got[f"loss_{t}_1"].requires_grad  # log only
        assert got[f"loss_{t}"].requires_grad
    assert crit.state_dict() == {}  # the class weights are not saved with a model


def test_point_sample_reads_pixel_centres_and_one_point_is_sampling():
    from rc2l.config import LossConfig
    from rc2l.losses.criterion import SetCriterion, point_sample

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]])  # (x, y) in [0, 1]
    assert point_sample(x, coords)[0, 0].tolist() == pytest.approx([1.0, 2.0, 3.0, 2.5])
    out, labels = _criterion_case()
    full = SetCriterion(2, LossConfig(deep_supervision=False))(out, labels)
    torch.manual_seed(0)
    one = SetCriterion(2, LossConfig(deep_supervision=False, num_points=1))(out, labels)
    assert one["loss_mask"].item() != pytest.approx(full["loss_mask"].item(), rel=1e-3)


# ----------------------------------------------------------------------------- losses/pixel.py
def _supcon_by_hand(z, y, tau):
    P, total, anchors = len(y), 0.0, 0
    for a in range(P):
        pos = [p for p in range(P) if p != a and y[p] == y[a]]
        if not pos:
            continue
        den = sum(math.exp(float(z[a] @ z[j]) / tau) for j in range(P) if j != a)
        total += -sum(float(z[a] @ z[p]) / tau - math.log(den) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


def test_supcon_by_hand_with_unequal_classes_default_tau_and_chunks():
    from rc2l.losses.pixel import supcon_loss

    g = torch.Generator().manual_seed(3)
    z = Fn.normalize(torch.randn(7, 4, generator=g), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 0])  # anchors with 3, 1 and no positive
    want = _supcon_by_hand(z, y, 0.1)
    assert supcon_loss(z, y).item() == pytest.approx(want, rel=1e-5)  # default τ = 0.1
    assert supcon_loss(z, y, 0.1, chunk=3).item() == pytest.approx(want, rel=1e-5)
    assert supcon_loss(z, y, 0.5).item() == pytest.approx(_supcon_by_hand(z, y, 0.5), rel=1e-5)


def test_supcon_without_any_positive_is_a_connected_zero():
    from rc2l.losses.pixel import supcon_loss

    for z, y in (
        (torch.randn(1, 3, requires_grad=True), torch.tensor([0])),
        (torch.randn(3, 3, requires_grad=True), torch.tensor([0, 1, 2])),
    ):
        loss = supcon_loss(z, y)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(z.grad, torch.zeros_like(z))


def test_pixel_contrast_defaults_sampling_and_normalisation():
    from rc2l.losses.pixel import pixel_contrast_loss, supcon_loss

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 4, 4, generator=g) * torch.tensor([1.0, 3.0])[:, None, None, None]
    label = torch.randint(0, 3, (2, 4, 4), generator=g)
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    z = Fn.normalize(feats, dim=1).permute(0, 2, 3, 1).reshape(-1, 3)  # normalised per pixel
    want = supcon_loss(z, label.reshape(-1), 0.1)
    assert pixel_contrast_loss(feats, label, valid, mode="exact").item() == pytest.approx(want.item(), rel=1e-5)
    # "exact" uses every pixel whatever num_samples says
    assert pixel_contrast_loss(feats, label, valid, mode="exact", num_samples=4).item() == pytest.approx(
        want.item(), rel=1e-5
    )
    # three valid pixels are enough for a loss
    few = torch.zeros_like(valid)
    few[0, 0, :3] = True
    lab = label.clone()
    lab[0, 0, :3] = torch.tensor([0, 0, 1])
    got = pixel_contrast_loss(feats, lab, few, mode="exact")
    assert got.item() > 0
    assert got.item() == pytest.approx(supcon_loss(z[:3], torch.tensor([0, 0, 1]), 0.1).item(), rel=1e-5)


def test_pixel_contrast_samples_1024_pixels_by_default():
    from rc2l.losses.pixel import pixel_contrast_loss, supcon_loss

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 4, 40, 40, generator=g)
    label = torch.randint(0, 4, (1, 40, 40), generator=g)
    valid = torch.ones(1, 40, 40, dtype=torch.bool)
    got = pixel_contrast_loss(feats, label, valid, generator=torch.Generator().manual_seed(5))
    pick = torch.randperm(1600, generator=torch.Generator().manual_seed(5))[:1024]
    z = Fn.normalize(feats, dim=1).permute(0, 2, 3, 1).reshape(-1, 4)
    want = supcon_loss(z[pick], label.reshape(-1)[pick], 0.1)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_pseudo_ce_default_threshold_and_a_pixel_at_the_threshold():
    from rc2l.losses.pixel import pixel_pseudo_ce

    logits = torch.tensor([[[[2.0, 0.0, 1.0]]], [[[0.0, 1.0, 0.0]]]]).permute(1, 0, 2, 3)  # (1, 2, 1, 3)
    label = torch.zeros(1, 1, 3, dtype=torch.int64)
    logp = logits.log_softmax(1)[0, 0, 0]
    conf = torch.tensor([[[0.96, 0.5, 0.94]]])
    got = pixel_pseudo_ce(logits, label, conf, input="logits")  # default τ = 0.95: pixel 0 only
    assert got.item() == pytest.approx(-logp[0].item() / 3, rel=1e-6)
    got = pixel_pseudo_ce(logits, label, conf, threshold=0.94, input="logits")  # conf = τ counts
    assert got.item() == pytest.approx(-(logp[0] + logp[2]).item() / 3, rel=1e-6)


def test_pixel_criterion_by_hand_default_ignore_and_all_ignored():
    from rc2l.losses.pixel import PixelCriterion

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (1, 4, 4), generator=g)
    labels[0, 0, 0] = 255
    up = Fn.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False)
    want = Fn.cross_entropy(up, labels, ignore_index=255)
    got = PixelCriterion()({"sem_logits": logits}, labels)
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert got["loss_ce"].item() == got["loss"].item()
    none = PixelCriterion()({"sem_logits": logits}, torch.full((1, 4, 4), 255))
    assert none["loss"].item() == 0.0 and none["loss"].requires_grad


# ----------------------------------------------------------------------------- losses/region.py
def test_region_loss_defaults_are_the_documented_ones():
    from rc2l.losses.region import RFCHead, rcc_loss, rfc_loss, rmc_loss

    from test_region_losses import scene

    student, regions, idx = scene(B=2)
    pm, pf = student["pred_masks"], student["pixel_feats"]
    assert rmc_loss(pm, regions, idx).item() == pytest.approx(rmc_loss(pm, regions, idx, 0.1).item(), rel=1e-6)
    assert rmc_loss(pm, regions, idx, 0.2).item() != pytest.approx(rmc_loss(pm, regions, idx, 0.1).item(), rel=1e-3)
    assert rfc_loss(pm, pf, regions, idx).item() == pytest.approx(
        rfc_loss(pm, pf, regions, idx, None, 0.1).item(), rel=1e-6
    )
    assert rfc_loss(pm, pf, regions, idx, None, 0.2).item() != pytest.approx(
        rfc_loss(pm, pf, regions, idx, None, 0.1).item(), rel=1e-3
    )
    head = RFCHead(8)
    assert [type(m) for m in head.net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (head.net[0].in_features, head.net[0].out_features, head.net[2].out_features) == (8, 8, 128)
    assert RFCHead(8, 16, 32).net[2].out_features == 16 and RFCHead(8, 16, 32).net[0].out_features == 32
    # rcc is hard (one-hot ĉ) unless asked, even when the regions carry the teacher's probs
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])
    r = [{"masks": torch.ones(1, 2, 2), "labels": torch.tensor([0]), "probs": torch.tensor([[0.5, 0.5, 0.0]])}]
    i = [(torch.tensor([0]), torch.tensor([0]))]
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce1 = -math.log(math.exp(3) / (1 + math.exp(1) + math.exp(3)))
    assert rcc_loss(logits, r, i, 0.1).item() == pytest.approx((ce0 + 0.1 * ce1) / 1.1, rel=1e-5)
    assert rcc_loss(logits, r, i, 0.1, soft=True).item() != pytest.approx((ce0 + 0.1 * ce1) / 1.1, rel=1e-3)


def test_region_losses_forward_is_each_weighted_term():
    from rc2l.config import SemiConfig
    from rc2l.losses.region import RegionLosses, rcc_loss, rfc_loss, rmc_loss, smc_loss

    from test_region_losses import C, H, W, blocks, scene

    student, regions, idx = scene(B=2)
    m, labels = blocks()
    label = (m * labels[:, None, None]).sum(0).long().expand(2, -1, -1).clone()
    label[1, 0, :4] = 1  # the pseudo-label disagrees with the student on a few pixels
    valid = torch.ones(2, H, W, dtype=torch.bool)
    valid[0, :, 7] = False
    targets = {"regions": regions, "label": label, "valid": valid}
    semi = SemiConfig(rmc=0.5, rfc=0.3, rcc=0.7, smc=0.9, tau_m=0.2, tau_f=0.3)
    rl = RegionLosses(semi, C)
    terms, stats = rl(student, targets, return_stats=True)  # matched here (recovers query j ↔ region j)
    head = rl.rfc_head
    want = {
        "rmc": 0.5 * rmc_loss(student["pred_masks"], regions, idx, 0.2),
        "rfc": 0.3 * rfc_loss(student["pred_masks"], student["pixel_feats"], regions, idx, head, 0.3),
        "rcc": 0.7 * rcc_loss(student["pred_logits"], regions, idx, 0.1),
        "smc": 0.9 * smc_loss(student["sem_masks"], label, valid),
    }
    for k, v in want.items():
        assert v.item() != 0.0 and terms[k].item() == pytest.approx(v.item(), rel=1e-5), k
    assert stats == {"num_regions": 8, "num_matched": 8, "valid_frac": pytest.approx(15 / 16)}
    off, stats = RegionLosses(SemiConfig(rmc=0.0, rfc=0.0, rcc=0.0, smc=0.0), C)(student, targets, return_stats=True)
    assert stats["num_matched"] == 0 and stats["num_regions"] == 8  # nothing to match for
    assert all(off[k].item() == 0.0 and off[k].requires_grad for k in ("rmc", "rfc", "rcc", "smc"))


# ----------------------------------------------------------------------------- engine/methods/unimatch.py
def test_unimatch_first_box_stream_is_the_one_of_fixmatch_and_rc2l():
    from rc2l.engine.teacher import BOX_STREAMS, stride_boxes

    a = stride_boxes(4, (16, 16), (4, 4), 1.0, 3, 7, "cpu")  # the default stream (RC²L, FixMatch)
    b = stride_boxes(4, (16, 16), (4, 4), 1.0, 3, 7, "cpu", BOX_STREAMS[0])
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(set(BOX_STREAMS)) == 2


def test_unimatch_pixel_ce_on_semantic_masks():
    from rc2l.engine.methods.unimatch import pixel_ce
    from rc2l.losses.pixel import pixel_pseudo_ce

    g = torch.Generator().manual_seed(0)
    S = torch.rand(2, 3, 4, 4, generator=g)
    label = torch.randint(0, 3, (2, 4, 4), generator=g)
    conf = torch.rand(2, 4, 4, generator=g)
    real = torch.ones(2, 4, 4, dtype=torch.bool)
    real[1, :, 3] = False
    got = pixel_ce({"sem_masks": S}, label, conf, 0.3, real)
    want = pixel_pseudo_ce(S, label, conf, 0.3, ignore=~real, input="sem")
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    keep = (conf >= 0.3) & real
    logp = (S / S.sum(1, keepdim=True)).log().gather(1, label[:, None])[:, 0]
    assert got.item() == pytest.approx((-logp[keep].sum() / real.sum()).item(), rel=1e-5)


def _unimatch(*overrides):
    from test_unimatch import method

    return method(__import__("rc2l.engine.methods", fromlist=["UniMatch"]).UniMatch, *overrides)


def test_unimatch_ignore_index_warmup_stats_and_ema_teacher():
    from test_unimatch import batches

    from rc2l.losses.pixel import PixelCriterion

    m, cfg = _unimatch("semi.unimatch.threshold=0.389")
    lab, unl = batches()
    lab["mask"][0, :2, :2] = 255  # ignored pixels: the methods' default ignore index is 255
    terms = m.step(lab, unl, 0)
    sup = PixelCriterion()(m.model.calls[0]["out"], lab["mask"])["loss"]
    assert terms["loss_sup"].item() == pytest.approx(sup.item(), rel=1e-6)
    conf = m.model.calls[1]["out"]["sem_logits"].softmax(1).max(1).values
    real = torch.ones_like(conf, dtype=torch.bool)
    real[1, :, 3:] = False
    assert terms["conf_frac"].item() == pytest.approx(float(((conf >= 0.389) & real).sum() / real.sum()), rel=1e-6)
    assert 0 < terms["conf_frac"].item() < 1
    # supervised warm-up: no unlabeled forward, loss = loss_sup
    m, _ = _unimatch("semi.start_iter=3")
    w = m.step(lab, unl, 2)
    assert len(m.model.calls) == 1 and torch.equal(w["loss"], w["loss_sup"]) and w["lambda_u"].item() == 0.0
    # the EMA teacher follows the student after each step (m_0 = 0: a copy)
    m, _ = _unimatch("semi.unimatch.teacher=ema")
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    m.after_step(0)
    assert all(torch.equal(a, b) for a, b in zip(m.teacher.parameters(), m.model.parameters()))
    m, _ = _unimatch("semi.unimatch.teacher=self")
    m.after_step(0)  # no teacher: nothing to update
    assert m.teacher is None


# ----------------------------------------------------------------------------- engine/teacher.py
def _teacher_out():
    from test_teacher import teacher_out

    return teacher_out()


def test_default_momentum_and_tau_cls():
    from rc2l.engine.teacher import (
        ema_momentum,
        ema_update,
        query_regions,
        teacher_targets,
    )

    assert ema_momentum(10**6) == 0.999 and ema_momentum(4) == pytest.approx(0.8)
    s, t = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        s.weight.fill_(1.0), t.weight.fill_(0.0)
    assert ema_update(t, s, 10**6) == 0.999
    assert t.weight.flatten().tolist() == pytest.approx([0.001, 0.001])
    out = _teacher_out()
    out["pred_masks"][:, 0, 0, 0] = 0.0  # σ = 0.5 exactly: not in the binary mask (σ > 0.5)
    for regions in (query_regions(out), teacher_targets(out)["regions"]):  # τ_cls = 0.7: query 0 only
        assert [r["labels"].tolist() for r in regions] == [[0], [0]]
        for r in regions:  # binary masks unless soft_masks
            assert set(r["masks"].unique().tolist()) == {0.0, 1.0} and r["masks"][0, 0, 0] == 0
    t = teacher_targets(out)
    assert bool(t["valid"].all())  # τ_pix = 0: every pixel


def test_valid_pixels_are_confident_at_the_threshold_and_never_ignored():
    from rc2l.engine.teacher import mix_with_partner, teacher_targets

    out = _teacher_out()
    S = torch.zeros(2, 3, 4, 4)
    S[:, 0] = 0.5
    S[:, 1, :, :2] = 0.5  # conf 0.5 exactly on the left half
    S[:, 2, :, 2:] = 0.2
    out["sem_masks"] = S
    ignore = torch.zeros(2, 4, 4, dtype=torch.bool)
    ignore[1, 3] = True
    for mode in ("queries", "classes"):
        t = teacher_targets(out, mode, tau_pix=0.5, ignore=ignore)
        assert torch.equal(t["valid"], ~ignore), mode  # conf = τ on the left half, 0.71 on the right
    with pytest.raises(ValueError):
        mix_with_partner(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))  # batch only
    with pytest.raises(ValueError):
        mix_with_partner(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.bool))  # size only


def test_class_regions_probs_are_the_mean_teacher_distribution_and_no_object_zero():
    from rc2l.engine.teacher import regions_from_label

    K_ = 3
    sem = torch.zeros(1, K_, 2, 2)
    sem[0, 0] = torch.tensor([[0.9, 0.7], [0.2, 0.1]])
    sem[0, 1] = 1 - sem[0, 0]
    label = sem.argmax(1)
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    r = regions_from_label(label, valid, torch.randn(1, 4, 2, 2), sem)[0]
    assert r["labels"].tolist() == [0, 1]
    assert r["probs"].shape == (2, K_ + 1)
    assert r["probs"].flatten().tolist() == pytest.approx([0.8, 0.2, 0.0, 0.0, 0.15, 0.85, 0.0, 0.0])


def test_cutmix_targets_accepts_a_non_bool_box():
    from rc2l.engine.teacher import cutmix_targets, teacher_targets

    out = _teacher_out()
    t = teacher_targets(out, "queries", tau_cls=0.3)
    box = torch.zeros(2, 4, 4, dtype=torch.bool)
    box[0, :, 1:3] = True
    want = cutmix_targets(t, box)
    for other in (box.float(), box.to(torch.uint8)):
        got = cutmix_targets(t, other)
        for a, b in zip(got["regions"], want["regions"]):
            assert all(torch.equal(a[k], b[k]) for k in ("masks", "labels", "features", "probs"))
        assert torch.equal(got["label"], want["label"])


def test_teacher_targets_are_detached_and_tau_cls_is_inclusive():
    from rc2l.engine.teacher import cutmix_targets, teacher_targets

    out = {k: v.clone().requires_grad_() for k, v in _teacher_out().items()}
    score = out["pred_logits"].detach().float().softmax(-1)[0, 0, :-1].max()
    for mode, soft in (("queries", False), ("queries", True), ("classes", False)):
        t = teacher_targets(out, mode, tau_cls=float(score), soft_masks=soft)
        if mode == "queries":
            assert t["regions"][0]["labels"].tolist() == [0]  # score = τ_cls: kept
        for tt in (t, cutmix_targets(t, torch.zeros(2, 4, 4, dtype=torch.bool))):
            for k in ("label", "conf", "valid", "sem", "feats"):
                assert not tt[k].requires_grad, (mode, k)
            for r in tt["regions"]:
                assert not any(v.requires_grad for v in r.values()), (mode, soft)
    assert t["conf"].shape == t["label"].shape == (2, 4, 4)


def test_unwrap_takes_the_module_out_of_its_wrappers():
    from rc2l.engine.teacher import make_teacher, unwrap

    m = nn.Linear(2, 2)

    class Compiled(nn.Module):  # what torch.compile returns keeps the model as _orig_mod
        def __init__(self, mod):
            super().__init__()
            self._orig_mod = mod

    assert unwrap(nn.DataParallel(m)) is m
    assert unwrap(Compiled(nn.DataParallel(m))) is m
    t = make_teacher(nn.DataParallel(m))
    assert type(t) is nn.Linear and torch.equal(t.weight, m.weight)


def test_cutmix_of_a_single_image_keeps_its_regions():
    from rc2l.engine.teacher import cutmix_targets, teacher_targets

    out = {k: v[:1] for k, v in _teacher_out().items()}
    t = teacher_targets(out, "queries", tau_cls=0.3)
    box = torch.ones(1, 4, 4, dtype=torch.bool)  # its partner is itself: nothing changes
    mixed = cutmix_targets(t, box)
    assert len(mixed["regions"]) == 1 and mixed["regions"][0]["labels"].tolist() == t["regions"][0]["labels"].tolist()
    assert torch.equal(mixed["regions"][0]["masks"], t["regions"][0]["masks"])


def test_hungarian_accepts_a_cost_that_requires_grad():
    from rc2l.losses.matcher import hungarian_padded

    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    pi, ti = hungarian(cost)
    assert pi.tolist() == [0, 1] and ti.tolist() == [0, 1]
    ((p, t),) = hungarian_padded(cost[None] * 1.0, [2])
    assert p.tolist() == [0, 1]


def test_point_sampled_mask_loss_by_hand():
    """num_points > 0, no importance sampling: the points are the second uniform draw of
    ``sample_points``; BCE and dice are means over the sampled points that are not ignored."""
    from rc2l.config import LossConfig
    from rc2l.losses.criterion import SetCriterion, point_sample

    out, labels = _criterion_case()
    cfg = LossConfig(deep_supervision=False, num_points=16, oversample_ratio=1.0, importance_sample_ratio=0.0)
    torch.manual_seed(0)
    got = SetCriterion(2, cfg)(out, labels)
    torch.manual_seed(0)
    torch.rand(2, 16, 2)  # the oversampled candidates (none kept: importance 0)
    coords = torch.rand(2, 16, 2)
    src = out["pred_masks"][0, :2].float()[:, None]  # queries 0, 1 ↔ classes 0, 1
    tgt = torch.stack([(labels[0] == 0).float(), (labels[0] == 1).float()])[:, None]
    valid = (labels[0] != 255).float()[None, None].expand(2, 1, 4, 4)
    s_ = point_sample(src, coords).squeeze(1)
    t = point_sample(tgt, coords, mode="nearest").squeeze(1)
    w = point_sample(valid, coords, mode="nearest").squeeze(1)
    assert 0 < w.sum() < 32  # some sampled points are ignored
    bce = Fn.binary_cross_entropy_with_logits(s_, t, reduction="none")
    mask = ((bce * w).sum(-1) / w.sum(-1)).sum() / 2
    p = s_.sigmoid() * w
    dice_l = (1 - (2 * (p * t * w).sum(-1) + 1) / (p.sum(-1) + (t * w).sum(-1) + 1)).sum() / 2
    assert got["loss_mask"].item() == pytest.approx(5 * mask.item(), rel=1e-5)
    assert got["loss_dice"].item() == pytest.approx(5 * dice_l.item(), rel=1e-5)


def test_rfc_by_its_formula_on_random_inputs():
    """Cosines over the feature axis (D), not over the queries: an unsymmetric case."""
    from rc2l.losses.region import rfc_loss

    g = torch.Generator().manual_seed(2)
    pm = torch.randn(2, 3, 4, 4, generator=g)
    F = torch.randn(2, 5, 4, 4, generator=g)
    regions = [
        {"labels": torch.tensor([0, 1]), "features": torch.randn(2, 5, generator=g)},
        {"labels": torch.tensor([2]), "features": torch.randn(1, 5, generator=g)},
    ]
    idx = [(torch.tensor([2, 0]), torch.tensor([0, 1])), (torch.tensor([1]), torch.tensor([0]))]
    m = pm.sigmoid()
    r_s = torch.einsum("bnhw,bchw->bnc", m, F) / (m.sum((-2, -1))[..., None] + 1e-6)
    z_s = r_s / r_s.norm(dim=-1, keepdim=True)
    r_t = torch.cat([r["features"] for r in regions])
    z_t = r_t / r_t.norm(dim=-1, keepdim=True)
    logits = z_t @ z_s.flatten(0, 1).T / 0.2
    want = Fn.cross_entropy(logits, torch.tensor([2, 0, 3 + 1]))
    assert rfc_loss(pm, F, regions, idx, None, 0.2).item() == pytest.approx(want.item(), rel=1e-5)
    per_image = torch.stack([torch.einsum("d,nd->n", z_t[i], z_s[b]) for i, b in enumerate([0, 0, 1])]) / 0.2
    want = Fn.cross_entropy(per_image, torch.tensor([2, 0, 1]))
    assert rfc_loss(pm, F, regions, idx, None, 0.2, "image").item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("only", ["rmc", "rfc", "rcc"])
def test_region_losses_match_when_a_single_region_term_is_on(only):
    from rc2l.config import SemiConfig
    from rc2l.losses.region import RegionLosses, rcc_loss, rfc_loss, rmc_loss

    from test_region_losses import C, H, W, scene

    student, regions, idx = scene(B=2)
    targets = {
        "regions": regions,
        "label": torch.zeros(2, H, W, dtype=torch.int64),
        "valid": torch.ones(2, H, W, dtype=torch.bool),
    }
    weights = {"rmc": 0.0, "rfc": 0.0, "rcc": 0.0, "smc": 0.0, only: 0.5}
    rl = RegionLosses(SemiConfig(**weights), C)
    got = rl(student, targets)[only]
    want = {
        "rmc": lambda: rmc_loss(student["pred_masks"], regions, idx),
        "rfc": lambda: rfc_loss(student["pred_masks"], student["pixel_feats"], regions, idx, rl.rfc_head),
        "rcc": lambda: rcc_loss(student["pred_logits"], regions, idx),
    }[only]()
    assert got.item() == pytest.approx(0.5 * want.item(), rel=1e-5) and got.item() != 0.0


# ----------------------------------------------------------------------------- engine/methods/base.py, supervised.py
def test_supervised_method_is_the_criterion_on_the_labeled_batch():
    from test_unimatch import TinyPerPixel, batches

    from rc2l.config import load_config
    from rc2l.engine.methods import Supervised
    from rc2l.losses.pixel import PixelCriterion

    cfg = load_config(None, ["model.arch=deeplabv3plus"])
    torch.manual_seed(0)
    m = Supervised(cfg, TinyPerPixel(), torch.device("cpu"), 3)
    lab, unl = batches()
    terms = m.step(lab, unl, 0)
    assert len(m.model.calls) == 1  # the unlabeled batch is not looked at
    want = PixelCriterion()(m.model(lab["image"]), lab["mask"])
    assert set(terms) == {"loss", "loss_ce"} and terms["loss"].item() == pytest.approx(want["loss"].item(), rel=1e-6)
    assert m.models_to_evaluate() == {"student": m.model} and m.teacher is None and len(m.heads) == 0
    m.after_step(0)  # nothing to update


def test_methods_say_whether_they_draw_unlabeled_images():
    from rc2l.engine.methods import METHODS

    assert {k: v.uses_unlabeled for k, v in METHODS.items()} == {
        "supervised": False,
        "fixmatch": True,
        "rc2l": True,
        "unimatch": True,
    }


def test_fixmatch_ignores_the_default_ignore_index():
    from test_unimatch import batches, method

    from rc2l.engine.methods import FixMatch
    from rc2l.losses.pixel import PixelCriterion

    m, _ = method(FixMatch)
    lab, unl = batches()
    lab["mask"][1, 4:, 4:] = 255
    terms = m.step(lab, unl, 0)
    want = PixelCriterion(255)(m.model.calls[0]["out"], lab["mask"])["loss"]
    assert terms["loss_sup"].item() == pytest.approx(want.item(), rel=1e-6)
