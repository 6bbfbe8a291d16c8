"""RFC (Region Feature Contrastive, rc2l.losses.region.rfc_loss) on a case small enough to
compute by hand: two images, two student queries each, one teacher region per image, masks
that are (numerically) binary so the student's region features are known vectors.

Student regions (MAP of F over σ(p^s)), image 0: q0 = (1, 0), q1 = (0, 1); image 1:
q0 = (1, 1), q1 = (1, −1). Teacher regions: image 0 r = (1, 1), matched to its
q0; image 1 r = (0, 1), matched to its q1. With g = identity the cosines are

    image-0 region vs [i0q0, i0q1, i1q0, i1q1] = [1/√2, 1/√2, 1, 0]      positive i0q0
    image-1 region vs [i0q0, i0q1, i1q0, i1q1] = [0, 1, 1/√2, −1/√2]     positive i1q1

and L = mean over the two regions of −log softmax(cos/τ_f)[positive]."""

from __future__ import annotations

import math

import pytest
import torch

from rc2l.losses.region import rfc_loss

A = 1 / math.sqrt(2)
BIG = 40.0  # σ(±40) is 1 and 4e-18 in float32: binary masks


def _inputs():
    # pixel_feats (B=2, C=2, h=1, w=2)
    F = torch.tensor(
        [
            [[[1.0, 0.0]], [[0.0, 1.0]]],  # image 0: pixel 0 = (1, 0), pixel 1 = (0, 1)
            [[[1.0, 1.0]], [[1.0, -1.0]]],
        ]
    )  # image 1: pixel 0 = (1, 1), pixel 1 = (1, -1)
    # pred_masks (B=2, N=2, h=1, w=2): query j covers pixel j
    p = torch.tensor([[[[BIG, -BIG]], [[-BIG, BIG]]]] * 2)
    regions = [
        {"labels": torch.tensor([1]), "features": torch.tensor([[1.0, 1.0]])},
        {"labels": torch.tensor([2]), "features": torch.tensor([[0.0, 1.0]])},
    ]
    indices = [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([1]), torch.tensor([0]))]
    return p, F, regions, indices


def _nce(cos: list[float], pos: int, tau: float) -> float:
    return -cos[pos] / tau + math.log(sum(math.exp(c / tau) for c in cos))


def batch_scope(tau: float) -> float:
    return (_nce([A, A, 1.0, 0.0], 0, tau) + _nce([0.0, 1.0, A, -A], 3, tau)) / 2


def image_scope(tau: float) -> float:
    # image 0: its two queries are equally close (cos 1/√2 each) → log 2 whatever τ;
    # image 1: positive −1/√2 against 1/√2 → log(1 + exp(√2/τ))
    return (math.log(2) + math.log1p(math.exp(math.sqrt(2) / tau))) / 2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("scope, formula", [("batch", batch_scope), ("image", image_scope)])
def test_rfc_equals_the_hand_computed_infonce(scope, formula, tau):
    p, F, regions, indices = _inputs()
    got = rfc_loss(p, F, regions, indices, head=None, tau_f=tau, scope=scope)
    assert got.ndim == 0
    assert float(got) == pytest.approx(formula(tau), rel=1e-5)


@pytest.mark.parametrize("scope, formula", [("batch", batch_scope), ("image", image_scope)])
def test_tau_f_changes_rfc_as_the_formula_says(scope, formula):
    p, F, regions, indices = _inputs()
    vals = {t: float(rfc_loss(p, F, regions, indices, tau_f=t, scope=scope)) for t in (0.05, 0.2, 2.0)}
    assert len({round(v, 6) for v in vals.values()}) == 3  # τ_f is used
    for t, v in vals.items():
        assert v == pytest.approx(formula(t), rel=1e-5)
    # the hard positive of image 1 (cos −1/√2) costs more as τ_f falls: the loss grows
    assert vals[0.05] > vals[0.2] > vals[2.0]


def test_rfc_scopes_differ_and_the_head_is_applied():
    """ "batch" also contrasts against the other image's regions; the head g is applied to both
    sides: g = 2·identity leaves the cosines, hence the loss, unchanged; a g that projects onto
    one axis changes them."""
    p, F, regions, indices = _inputs()
    b = float(rfc_loss(p, F, regions, indices, tau_f=0.1, scope="batch"))
    i = float(rfc_loss(p, F, regions, indices, tau_f=0.1, scope="image"))
    assert b != pytest.approx(i)
    scale = torch.nn.Linear(2, 2, bias=False).requires_grad_(False)
    scale.weight.copy_(2 * torch.eye(2))
    assert float(rfc_loss(p, F, regions, indices, head=scale, tau_f=0.1, scope="batch")) == pytest.approx(b, rel=1e-5)
    # a head that maps everything onto one axis makes all cosines ±1: another value
    squash = torch.nn.Linear(2, 2, bias=False).requires_grad_(False)
    squash.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert float(rfc_loss(p, F, regions, indices, head=squash, tau_f=0.1, scope="batch")) != pytest.approx(b, rel=1e-3)
