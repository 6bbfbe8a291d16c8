"""Pixel-level counterparts: FixMatch pseudo-label CE and pixel InfoNCE."""

import math

import pytest
import torch

from rc2l.losses.pixel import pixel_contrast_loss, pixel_pseudo_ce, supcon_loss


def test_pseudo_ce_threshold_and_hand_value():
    S = torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]], requires_grad=True)  # B=1, K=2, 1×2
    label = torch.tensor([[[0, 1]]])
    conf = torch.tensor([[[0.99, 0.5]]])
    # only pixel 0 passes 0.95; divided by all 2 pixels (FixMatch)
    assert pixel_pseudo_ce(S, label, conf, 0.95).item() == pytest.approx(-math.log(0.8) / 2, rel=1e-5)
    ignore = torch.tensor([[[False, True]]])
    assert pixel_pseudo_ce(S, label, conf, 0.95, ignore).item() == pytest.approx(-math.log(0.8), rel=1e-5)
    logits = S.detach().log()
    assert pixel_pseudo_ce(logits, label, conf, 0.0, input="logits").item() == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 2, rel=1e-5
    )


def test_nothing_confident_is_connected_zero():
    S = torch.rand(2, 3, 4, 4, requires_grad=True)
    F = torch.randn(2, 5, 4, 4, requires_grad=True)
    label = torch.zeros(2, 4, 4, dtype=torch.int64)
    ce = pixel_pseudo_ce(S, label, torch.zeros(2, 4, 4), 0.95)
    con = pixel_contrast_loss(F, label, torch.zeros(2, 4, 4, dtype=torch.bool))
    for v in (ce, con):
        assert v.item() == 0.0 and v.grad_fn is not None
    (ce + con).backward()
    assert torch.isfinite(S.grad).all() and torch.isfinite(F.grad).all()


def test_sampled_with_all_pixels_equals_exact_and_chunking_is_exact():
    torch.manual_seed(0)
    F = torch.randn(2, 6, 5, 5)
    label = torch.randint(0, 3, (2, 5, 5))
    valid = torch.rand(2, 5, 5) > 0.2
    exact = pixel_contrast_loss(F, label, valid, mode="exact")
    sampled = pixel_contrast_loss(F, label, valid, mode="sampled", num_samples=10_000)
    chunked = pixel_contrast_loss(F, label, valid, mode="exact", chunk=7)
    assert sampled.item() == pytest.approx(exact.item(), rel=1e-5)
    assert chunked.item() == pytest.approx(exact.item(), rel=1e-5)
    few = pixel_contrast_loss(
        F, label, valid, mode="sampled", num_samples=8, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(few) and few.item() != pytest.approx(exact.item())


def test_infonce_lower_when_embeddings_cluster_by_label():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (1, 6, 6))
    centers = torch.eye(3) * 5
    clustered = (centers[label] + 0.1 * torch.randn(1, 6, 6, 3)).permute(0, 3, 1, 2)
    shuffled = clustered[..., torch.randperm(6)][..., torch.randperm(6), :]
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    a = pixel_contrast_loss(clustered, label, valid, mode="exact")
    b = pixel_contrast_loss(shuffled, label, valid, mode="exact")
    assert a < b - 1.0


def test_supcon_hand_computed():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # anchors 0 and 1: positive sim 1, negative sim 0 → −log(e^{1/τ}/(e^{1/τ}+1)); anchor 2: no positive
    tau = 0.5
    expect = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert supcon_loss(z, y, tau).item() == pytest.approx(expect, rel=1e-5)
