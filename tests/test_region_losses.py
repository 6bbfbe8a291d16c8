"""Region losses RMC, RFC, RCC, SMC on hand-made tensors."""

import math

import pytest
import torch

from rc2l.config import SemiConfig
from rc2l.losses.functional import dice, mask_average_pool
from rc2l.losses.region import (
    RegionLosses,
    RFCHead,
    rcc_loss,
    rfc_loss,
    rmc_loss,
    smc_loss,
)

from helpers import count_ops


def soft_dice(a, b, eps=1e-6):
    """The region losses' dice: no smoothing, all pairs."""
    return dice(a, b, smooth=0.0, eps=eps, pairwise=True)


K, N, C, H, W = 3, 4, 8, 8, 8


def blocks():
    """Four disjoint 4×4 quadrant masks (4, 8, 8), classes 0, 1, 2, 0."""
    m = torch.zeros(4, H, W)
    m[0, :4, :4] = 1
    m[1, :4, 4:] = 1
    m[2, 4:, :4] = 1
    m[3, 4:, 4:] = 1
    return m, torch.tensor([0, 1, 2, 0])


def scene(B=2, seed=0):
    """Student outputs whose N queries reproduce the teacher's regions (query j ↔ region j)."""
    g = torch.Generator().manual_seed(seed)
    m, labels = blocks()
    pred_masks = (10 * (2 * m - 1)).expand(B, -1, -1, -1).clone()  # σ ≈ m
    logits = torch.full((B, N, K + 1), -3.0)
    logits[:, torch.arange(N), labels] = 3.0
    F = torch.randn(B, C, H, W, generator=g)
    student = {
        "pred_logits": logits.requires_grad_(),
        "pred_masks": pred_masks.requires_grad_(),
        "pixel_feats": F.requires_grad_(),
    }
    student["sem_masks"] = torch.einsum(
        "bnk,bnhw->bkhw", student["pred_logits"].softmax(-1)[..., :K], student["pred_masks"].sigmoid()
    )
    regions = [
        {
            "masks": m.clone(),
            "labels": labels.clone(),
            "features": mask_average_pool(F[b].detach(), m),
            "probs": torch.nn.functional.one_hot(labels, K + 1).float(),
        }
        for b in range(B)
    ]
    idx = [(torch.arange(N), torch.arange(N)) for _ in range(B)]
    return student, regions, idx


def permuted(student, perm):
    s = dict(student)
    s["pred_masks"] = student["pred_masks"][:, perm]
    s["pred_logits"] = student["pred_logits"][:, perm]
    return s


PERM = torch.tensor([1, 2, 3, 0])


def test_soft_dice_and_map_hand_values():
    a = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    # D = 2Σab/(Σa+Σb): 2·1/(2+1) and 2·1/(2+2)
    assert torch.allclose(soft_dice(a, b, eps=0.0), torch.tensor([[2 / 3, 0.5]]))
    F = torch.arange(4.0).view(1, 1, 2, 2)  # values 0 1 2 3
    m = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    r = mask_average_pool(F, m)
    assert torch.allclose(r[0, 0], torch.tensor([1.0]), atol=1e-5)  # (0 + 2) / 2
    assert r[0, 1].item() == 0.0  # empty mask: zero feature, not NaN


def test_rmc_lowest_when_regions_agree():
    student, regions, idx = scene()
    agree = rmc_loss(student["pred_masks"], regions, idx, tau_m=0.1)
    worse = rmc_loss(permuted(student, PERM)["pred_masks"], regions, idx, tau_m=0.1)
    # dice 1 vs 0 for the positive, others 0: loss = −log(e^10 / (e^10 + 3))
    assert agree.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 3)), rel=1e-3)
    assert worse > agree + 5


@pytest.mark.parametrize("scope", ["batch", "image"])
def test_rfc_lowest_when_regions_agree(scope):
    torch.manual_seed(0)
    student, regions, idx = scene()
    head = RFCHead(C, 16)
    agree = rfc_loss(student["pred_masks"], student["pixel_feats"], regions, idx, head, 0.1, scope)
    worse = rfc_loss(permuted(student, PERM)["pred_masks"], student["pixel_feats"], regions, idx, head, 0.1, scope)
    assert worse > agree + 0.5
    no_head = rfc_loss(student["pred_masks"], student["pixel_feats"], regions, idx, None, 0.1, scope)
    assert torch.isfinite(no_head)


def test_rfc_scope_changes_negatives():
    student, regions, idx = scene(B=2)
    args = (student["pred_masks"], student["pixel_feats"], regions, idx, None, 0.1)
    # more negatives in "batch" scope → larger loss for the same positives
    assert rfc_loss(*args, "batch") > rfc_loss(*args, "image")


def test_rcc_hand_computed():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]], requires_grad=True)  # B=1, N=2, K=2
    regions = [{"masks": torch.ones(1, 2, 2), "labels": torch.tensor([0])}]
    idx = [(torch.tensor([0]), torch.tensor([0]))]
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))  # query 0 → class 0
    ce1 = -math.log(math.exp(3) / (1 + math.exp(1) + math.exp(3)))  # query 1 → no object
    expect = (ce0 + 0.1 * ce1) / 1.1
    assert rcc_loss(logits, regions, idx, 0.1).item() == pytest.approx(expect, rel=1e-5)
    # soft targets equal to the one-hot class give the same value
    regions[0]["probs"] = torch.tensor([[1.0, 0.0, 0.0]])
    assert rcc_loss(logits, regions, idx, 0.1, soft=True).item() == pytest.approx(expect, rel=1e-5)
    # KL to a soft distribution: zero for the matched query when it equals the student's own
    regions[0]["probs"] = logits[0, :1].softmax(-1).detach()
    assert rcc_loss(logits, regions, idx, 0.1, soft=True).item() == pytest.approx(0.1 * ce1 / 1.1, rel=1e-4)


def test_smc_hand_computed_and_confident_pixels_only():
    # B=1, K=2, 1×2 image; S already normalised
    S = torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]], requires_grad=True)
    label = torch.tensor([[[0, 1]]])
    valid = torch.tensor([[[True, True]]])
    d0 = 1 - (2 * 0.8 + 1) / (1.2 + 1 + 1)
    d1 = 1 - (2 * 0.6 + 1) / (0.8 + 1 + 1)
    ce = -(math.log(0.8) + math.log(0.6)) / 2
    assert smc_loss(S, label, valid, dice_only=True).item() == pytest.approx((d0 + d1) / 2, rel=1e-5)
    assert smc_loss(S, label, valid).item() == pytest.approx((d0 + d1) / 2 + ce, rel=1e-5)
    # only pixel 0 confident: pixel 1 does not count
    valid = torch.tensor([[[True, False]]])
    d0 = 1 - (2 * 0.8 + 1) / (0.8 + 1 + 1)
    assert smc_loss(S, label, valid).item() == pytest.approx(d0 - math.log(0.8), rel=1e-5)


def teacher_leaves(regions):
    """Replace teacher tensors by leaves that require grad, to check stop-gradient."""
    out = []
    for r in regions:
        out.append({k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in r.items()})
    return out


def test_no_gradient_reaches_teacher_tensors():
    torch.manual_seed(0)
    student, regions, idx = scene()
    regions = teacher_leaves(regions)
    label = torch.randint(0, K, (2, H, W))
    valid = torch.ones(2, H, W, dtype=torch.bool)
    semi = SemiConfig(rcc_soft=True)
    losses = RegionLosses(semi, C)
    terms = losses(student, {"regions": regions, "label": label, "valid": valid}, idx)
    assert set(terms) == {"rmc", "rfc", "rcc", "smc"}
    sum(terms.values()).backward()
    for r in regions:
        for k in ("masks", "features", "probs"):
            assert r[k].grad is None
    assert student["pred_masks"].grad is not None and student["pred_masks"].grad.abs().sum() > 0
    assert all(p.grad is not None for p in losses.rfc_head.parameters())


def test_no_region_at_all_is_a_connected_zero():
    student, _, _ = scene()
    empty = [
        {
            "masks": torch.zeros(0, H, W),
            "labels": torch.zeros(0, dtype=torch.int64),
            "features": torch.zeros(0, C),
            "probs": torch.zeros(0, K + 1),
        }
        for _ in range(2)
    ]
    targets = {
        "regions": empty,
        "label": torch.zeros(2, H, W, dtype=torch.int64),
        "valid": torch.zeros(2, H, W, dtype=torch.bool),
    }
    losses = RegionLosses(SemiConfig(), C)
    terms, stats = losses(student, targets, return_stats=True)  # matching included
    assert stats["num_regions"] == 0
    for k, v in terms.items():
        assert v.item() == 0.0 and v.grad_fn is not None, k
    sum(terms.values()).backward()
    for k in ("pred_logits", "pred_masks", "pixel_feats"):
        g = student[k].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() == 0
    assert all(p.grad is not None for p in losses.rfc_head.parameters())  # DDP: head is used


def test_one_image_without_regions_contributes_nothing():
    student, regions, idx = scene(B=2)
    one = rmc_loss(student["pred_masks"][:1], regions[:1], idx[:1])
    regions[1] = {k: v[:0] for k, v in regions[1].items()}
    idx[1] = (idx[1][0][:0], idx[1][1][:0])
    assert rmc_loss(student["pred_masks"], regions, idx).item() == pytest.approx(one.item())
    assert rcc_loss(student["pred_logits"], regions, idx).item() == pytest.approx(
        rcc_loss(student["pred_logits"][:1], regions[:1], idx[:1]).item()
    )


def test_weights_and_switches():
    student, regions, idx = scene()
    targets = {
        "regions": regions,
        "label": torch.zeros(2, H, W, dtype=torch.int64),
        "valid": torch.ones(2, H, W, dtype=torch.bool),
    }
    base = RegionLosses(SemiConfig(rfc=0.0), C)(student, targets, idx)
    assert base["rfc"].item() == 0.0
    doubled = RegionLosses(SemiConfig(rfc=0.0, rmc=2.0), C)(student, targets, idx)
    assert doubled["rmc"].item() == pytest.approx(2 * base["rmc"].item())
    assert RegionLosses(SemiConfig(rfc=0.0), C).rfc_head is None


def test_matcher_recovers_permutation():
    student, regions, _ = scene()
    s = permuted(student, PERM)
    idx = RegionLosses(SemiConfig(rfc=0.0), C).match(s, regions)
    inv = torch.argsort(PERM)
    for pi, ti in idx:
        assert torch.equal(pi, inv[ti])


def test_batched_losses_equal_their_per_image_weighted_means():
    """The losses run on the whole batch at once; the result is what one call per image
    gives, weighted by the image's share of the normaliser (images with 4, 2 and 0 regions,
    and a teacher region matched to a query out of order)."""
    g = torch.Generator().manual_seed(7)
    B = 3
    student = {
        "pred_logits": torch.randn(B, N, K + 1, generator=g),
        "pred_masks": torch.randn(B, N, H, W, generator=g),
        "pixel_feats": torch.randn(B, C, H, W, generator=g),
    }
    regions, idx = [], []
    for M in (4, 2, 0):
        masks = torch.rand(M, H, W, generator=g)
        regions.append(
            {
                "masks": masks,
                "labels": torch.randint(0, K, (M,), generator=g),
                "features": torch.randn(M, C, generator=g),
                "probs": torch.rand(M, K + 1, generator=g).softmax(-1),
            }
        )
        idx.append((torch.randperm(N, generator=g)[:M], torch.arange(M)))
    one = lambda fn, b, *keys, **kw: fn(
        *(student[k][b : b + 1] for k in keys), regions[b : b + 1], idx[b : b + 1], **kw
    )
    counts = torch.tensor([4.0, 2.0])
    rmc = torch.stack([one(rmc_loss, b, "pred_masks") for b in range(2)])
    assert rmc_loss(student["pred_masks"], regions, idx).item() == pytest.approx(
        ((rmc * counts).sum() / 6).item(), rel=1e-5
    )
    rfc = torch.stack([one(rfc_loss, b, "pred_masks", "pixel_feats", scope="image") for b in range(2)])
    got = rfc_loss(student["pred_masks"], student["pixel_feats"], regions, idx, scope="image")
    assert got.item() == pytest.approx(((rfc * counts).sum() / 6).item(), rel=1e-5)
    for soft in (False, True):
        den = counts + 0.1 * (N - counts)
        rcc = torch.stack([one(rcc_loss, b, "pred_logits", soft=soft) for b in range(2)])
        got = rcc_loss(student["pred_logits"], regions, idx, soft=soft)
        assert got.item() == pytest.approx(((rcc * den).sum() / den.sum()).item(), rel=1e-5)


def test_work_per_call_does_not_grow_with_the_batch():
    """Matching and all four losses dispatch the same number of tensor operations for 2 images
    as for 8: no per-image loop, so on a GPU the launches do not scale with the batch."""

    def ops(B):
        student, regions, _ = scene(B)
        targets = {
            "regions": regions,
            "label": torch.zeros(B, H, W, dtype=torch.int64),
            "valid": torch.ones(B, H, W, dtype=torch.bool),
        }
        losses = RegionLosses(SemiConfig(rfc_scope="image", rcc_soft=True), C)
        return count_ops(lambda: sum(losses(student, targets).values()).backward())

    assert ops(2) == ops(8) > 0


def test_confident_region_pixels_ignore_unsure_pixels():
    """region_pixels=confident: what the student predicts on unsure pixels (valid False) changes
    neither the matching nor RMC nor RFC; with "all" it changes RMC."""
    student, regions, _ = scene()
    valid = torch.ones(2, H, W, dtype=torch.bool)
    valid[:, :, 6:] = False  # the right two columns are unsure
    targets = {"regions": regions, "label": torch.zeros(2, H, W, dtype=torch.int64), "valid": valid}
    noisy = dict(student)
    g = torch.Generator().manual_seed(1)
    noisy["pred_masks"] = student["pred_masks"].detach().clone()
    noisy["pred_masks"][..., 6:] = 10 * torch.randn(2, N, H, 2, generator=g)
    noisy["pixel_feats"] = student["pixel_feats"].detach().clone()
    noisy["pixel_feats"][..., 6:] = torch.randn(2, C, H, 2, generator=g)

    def terms(mode, s):
        torch.manual_seed(0)  # the same RFC head for every call
        losses = RegionLosses(SemiConfig(region_pixels=mode, rfc_scope="image"), C)
        return {k: v.item() for k, v in losses(s, targets).items()}

    clean, moved = terms("confident", student), terms("confident", noisy)
    for k in ("rmc", "rfc"):
        assert moved[k] == pytest.approx(clean[k], rel=1e-5, abs=1e-6), k
    assert terms("all", noisy)["rmc"] != pytest.approx(terms("all", student)["rmc"], rel=1e-3)
    assert moved["rmc"] != pytest.approx(terms("all", noisy)["rmc"], rel=1e-3)
