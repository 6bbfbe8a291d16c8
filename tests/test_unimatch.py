"""UniMatch's pieces on hand-made tensors: the loss normaliser, two independent CutMix boxes
each applied to its own view and targets, FP only on the perturbed branch, no gradient to the
teacher, and L = L_sup + λ_u·(0.25·L_s1 + 0.25·L_s2 + 0.5·L_fp)."""

import math

import pytest
import torch
import torch.nn.functional as Fn

from rc2l.config import load_config
from rc2l.engine.methods import FixMatch, UniMatch
from rc2l.engine.methods.base import view_weights
from rc2l.engine.methods.unimatch import pixel_ce
from rc2l.engine.teacher import BOX_STREAMS, apply_cutmix, mix_with_partner, stride_boxes

from helpers import PP_B, PP_K, PP_S, TinyPerPixel
from helpers import unimatch_batches as batches

K, B, S = PP_K, PP_B, PP_S


def method(cls=UniMatch, *overrides):
    cfg = load_config(
        None,
        [
            "model.arch=deeplabv3plus",
            "semi.cutmix_p=1.0",
            "semi.rampup_iters=0",
            "semi.unimatch.threshold=0.0",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    return cls(cfg, TinyPerPixel(), torch.device("cpu"), K), cfg


def test_normaliser_counts_unconfident_pixels_in_the_denominator():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0] = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    label = torch.zeros(1, 2, 2, dtype=torch.int64)
    conf = torch.tensor([[[0.99, 0.99], [0.5, 0.99]]])  # one pixel below τ
    real = torch.tensor([[[True, True], [True, False]]])  # one padding pixel
    logp = logits.log_softmax(1)[0, 0]
    expected = -(logp[0, 0] + logp[0, 1]) / 3  # two confident real pixels, three real pixels
    got = pixel_ce({"sem_logits": logits}, label, conf, 0.95, real)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_view_weights_are_unimatch_and_fixmatch():
    assert view_weights(2, True) == (0.25, 0.5)
    assert view_weights(1, False) == (1.0, 0.0)


def test_step_is_sup_plus_lambda_times_weighted_views_with_own_boxes():
    m, cfg = method(UniMatch, "semi.lambda_u=0.7")
    lab, unl = batches()
    terms = m.step(lab, unl, step=3)
    sup_call, weak_call, strong_call = m.model.calls
    assert weak_call["fp"] == 0.5 and strong_call["fp"] == 0.0 and sup_call["fp"] == 0.0
    # pseudo-label from the clean half of the weak forward, detached
    probs = weak_call["out"]["sem_logits"].detach().softmax(1)
    conf, label = probs.max(1)
    real = torch.ones(B, 4, 4, dtype=torch.bool)
    real[1, :, 3:] = False
    expect_in, parts = [], []
    for i, (view, stream) in enumerate(zip((unl["image_s"], unl["image_s2"]), BOX_STREAMS)):
        small, big = stride_boxes(B, (S, S), (4, 4), 1.0, cfg.seed, 3, "cpu", stream)
        expect_in.append(apply_cutmix(view, big))
        out_i = {"sem_logits": strong_call["out"]["sem_logits"][i * B : (i + 1) * B]}
        parts.append(
            pixel_ce(
                out_i, mix_with_partner(label, small), mix_with_partner(conf, small), 0.0, mix_with_partner(real, small)
            )
        )
    assert torch.equal(strong_call["x"], torch.cat(expect_in))  # each view mixed with its own box
    box1, _ = stride_boxes(B, (S, S), (4, 4), 1.0, cfg.seed, 3, "cpu", BOX_STREAMS[0])
    box2, _ = stride_boxes(B, (S, S), (4, 4), 1.0, cfg.seed, 3, "cpu", BOX_STREAMS[1])
    assert not torch.equal(box1, box2)  # independent boxes
    fp = pixel_ce(weak_call["out"]["fp"], label, conf, 0.0, real)  # FP against the un-mixed pseudo-label
    sup = terms["loss_sup"]
    expected = sup + 0.7 * (0.25 * parts[0] + 0.25 * parts[1] + 0.5 * fp)
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    for k, v in (("unimatch_s1", 0.25 * parts[0]), ("unimatch_s2", 0.25 * parts[1]), ("unimatch_fp", 0.5 * fp)):
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-6)
    assert all(math.isfinite(float(v.detach())) for v in terms.values())


def test_dropping_the_unlabeled_branch_would_be_seen():
    m, _ = method(UniMatch)
    lab, unl = batches()
    terms = m.step(lab, unl, step=0)
    assert terms["loss"].item() > terms["loss_sup"].item() + 1e-4  # λ_u = 1 and a non-zero unlabeled loss


def test_fp_branch_is_the_only_dropped_one():
    m, _ = method(UniMatch)
    lab, unl = batches()
    m.step(lab, unl, step=0)
    weak = m.model.calls[1]
    clean = m.model.conv(unl["image_w"])
    assert torch.allclose(weak["out"]["sem_logits"], Fn.avg_pool2d(clean, 4))  # clean half untouched
    assert not torch.allclose(weak["out"]["fp"]["sem_logits"], weak["out"]["sem_logits"])


@pytest.mark.parametrize("teacher", ["self", "ema"])
def test_no_gradient_reaches_the_pseudo_label(teacher):
    m, _ = method(UniMatch, f"semi.unimatch.teacher={teacher}")
    _, unl = batches()
    label, conf, fp_out = m.weak_pass(unl["image_w"])
    assert not conf.requires_grad and not label.requires_grad
    assert fp_out["sem_logits"].requires_grad
    if teacher == "ema":
        lab, unl = batches()
        m.step(lab, unl, step=0)["loss"].backward()
        assert all(p.grad is None for p in m.teacher.parameters())
        assert {"student", "teacher"} == set(m.models_to_evaluate())
    else:
        assert m.teacher is None and set(m.models_to_evaluate()) == {"student"}


def test_fixmatch_is_one_view_no_fp_ema():
    m, _ = method(FixMatch, "semi.fixmatch_threshold=0.0")
    lab, unl = batches()
    terms = m.step(lab, unl, step=0)
    assert set(terms) >= {"fixmatch", "loss_sup", "loss_unsup"} and "unimatch_fp" not in terms
    strong = m.model.calls[-1]
    assert strong["x"].shape[0] == B and strong["fp"] == 0.0  # one view, no FP forward of the student
    assert len(m.model.calls) == 2  # labeled + strong: the pseudo-label comes from the EMA teacher
