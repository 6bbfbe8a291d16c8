"""EMA teacher, pseudo-labels / pseudo-regions, and CutMix of inputs and targets."""

import pytest
import torch
from torch import nn

from rc2l.config import SemiConfig
from rc2l.engine.teacher import (
    apply_cutmix,
    cutmix_targets,
    ema_momentum,
    ema_update,
    make_teacher,
    partner_index,
    teacher_targets,
)
from rc2l.losses.region import RegionLosses

from helpers import downsample_box, pseudo_label

K, N, C, h, w = 3, 4, 5, 4, 4


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_make_teacher_frozen_eval_copy():
    s = tiny()
    t = make_teacher(s)
    assert not t.training and all(not p.requires_grad for p in t.parameters())
    assert all(p.requires_grad for p in s.parameters())
    assert t[0].weight.data_ptr() != s[0].weight.data_ptr()


def test_ema_formula_params_and_buffers_with_warmup():
    s, t = tiny(), tiny()
    with torch.no_grad():
        for p in t.parameters():
            p.fill_(1.0)
        t[1].running_mean.fill_(1.0)
        t[1].num_batches_tracked.fill_(3)
        s[1].running_mean.fill_(-1.0)
        s[1].num_batches_tracked.fill_(7)
    # step 9: m_t = min(1 − 1/10, 0.999) = 0.9
    assert ema_momentum(9, 0.999) == pytest.approx(0.9)
    assert ema_momentum(10**6, 0.999) == 0.999
    assert ema_momentum(-3, 0.999) == 0.0  # before semi.start_iter the teacher copies the student
    before = {k: v.clone() for k, v in t.state_dict().items()}
    m = ema_update(t, s, step=9, momentum=0.999)
    assert m == pytest.approx(0.9)
    for k, v in t.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * s.state_dict()[k]), k
    assert t[1].running_mean.tolist() == pytest.approx([0.8, 0.8])
    assert t[1].num_batches_tracked.item() == 7  # integer buffer copied
    ema_update(t, s, step=0)  # warm-up start: m_0 = 0 → exact copy
    for k, v in t.state_dict().items():
        assert torch.equal(v, s.state_dict()[k]), k


def teacher_out(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((B, N, K + 1), -4.0)
    logits[:, 0, 0] = 4.0  # confident class 0
    logits[:, 1, 1] = 4.0  # confident class 1, but its mask is empty
    logits[:, 2, 2] = 0.5  # unconfident
    logits[:, 2, 3] = 0.5
    logits[:, 3, 3] = 4.0  # no object
    masks = torch.full((B, N, h, w), -5.0)
    masks[:, 0, :, :2] = 5.0
    masks[:, 2, :, 2:] = 5.0
    masks[:, 3, :, 2:] = 5.0
    out = {"pred_logits": logits, "pred_masks": masks, "pixel_feats": torch.randn(B, C, h, w, generator=g)}
    out["sem_masks"] = torch.einsum("bnk,bnhw->bkhw", logits.softmax(-1)[..., :K], masks.sigmoid())
    return out


def test_tau_cls_keeps_confident_nonempty_queries():
    out = teacher_out()
    regions = teacher_targets(out, "queries", tau_cls=0.7)["regions"]
    for r in regions:
        assert r["labels"].tolist() == [0]  # query 1 empty mask, 2 unconfident, 3 no object
        assert r["masks"].shape == (1, h, w) and r["masks"][0, :, :2].eq(1).all() and r["masks"][0, :, 2:].eq(0).all()
        assert r["probs"].shape == (1, K + 1) and r["features"].shape == (1, C)
    assert len(teacher_targets(out, "queries", tau_cls=0.3)["regions"][0]["labels"]) == 2  # query 2 now passes
    assert len(teacher_targets(out, "queries", tau_cls=0.999)["regions"][0]["labels"]) == 0
    soft = teacher_targets(out, "queries", soft_masks=True)["regions"][0]["masks"]
    assert 0 < soft.min() < 0.5 < soft.max() < 1


def test_tau_pix_drops_unconfident_pixels_in_classes_mode():
    S = torch.zeros(1, K, h, w)
    S[0, 0, :, :2] = 1.0  # confident class 0
    S[0, 1, :, 2:] = 0.55  # class 1 at 0.55 vs class 2 at 0.45
    S[0, 2, :, 2:] = 0.45
    out = {
        "sem_masks": S,
        "pixel_feats": torch.randn(1, C, h, w),
        "pred_logits": torch.zeros(1, N, K + 1),
        "pred_masks": torch.zeros(1, N, h, w),
    }
    label, conf = pseudo_label(S)
    assert label[0, 0].tolist() == [0, 0, 1, 1] and conf[0, 0, 2].item() == pytest.approx(0.55)
    assert teacher_targets(out, "classes", tau_pix=0.5)["regions"][0]["labels"].tolist() == [0, 1]
    r = teacher_targets(out, "classes", tau_pix=0.6)["regions"][0]
    assert r["labels"].tolist() == [0] and r["masks"][0].sum() == 8
    t = teacher_targets(out, "classes", tau_pix=0.6)
    assert t["valid"][0, :, 2:].any().item() is False


def test_cutmix_same_box_for_input_and_targets():
    B, H, W = 3, 16, 16
    images = torch.stack([torch.full((3, H, W), float(i)) for i in range(B)])  # image i has value i
    box = torch.zeros(B, H, W, dtype=torch.bool)
    box[0, 4:12, 8:16] = True  # aligned to stride 4
    box[2, 0:7, 0:9] = True  # not aligned
    mixed = apply_cutmix(images, box)
    assert partner_index(B).tolist() == [1, 2, 0]
    S = torch.zeros(B, K, h, w)
    for i in range(B):
        S[i, i] = 1.0  # teacher's label for image i is class i everywhere
    out = {
        "sem_masks": S,
        "pixel_feats": torch.arange(B).float().view(B, 1, 1, 1).expand(B, C, h, w).clone(),
        "pred_logits": torch.zeros(B, N, K + 1),
        "pred_masks": torch.zeros(B, N, h, w),
    }
    small = downsample_box(box, (h, w))
    tgt = cutmix_targets(teacher_targets(out, "classes"), small)
    # every target pixel whose 4×4 image block is entirely from the partner has the partner's label
    src = mixed[:, 0].view(B, h, 4, w, 4)
    whole = (src == src[:, :, :1, :, :1]).all(4).all(2)
    block_src = src[:, :, 0, :, 0].long()
    assert torch.equal(tgt["label"][whole], block_src[whole])
    assert torch.equal(tgt["feats"][:, 0][whole], block_src[whole].float())
    assert (block_src[0, 1:3, 2:4] == 1).all() and (tgt["label"][0, 1:3, 2:4] == 1).all()
    assert (tgt["label"][1] == 1).all()  # no box: unchanged
    assert sorted(tgt["regions"][0]["labels"].tolist()) == [0, 1]


def test_cutmix_queries_mode_cuts_and_drops_empty_masks():
    out = teacher_out(B=2)
    t = teacher_targets(out, "queries", tau_cls=0.7)
    box = torch.zeros(2, h, w, dtype=torch.bool)
    box[0, :, :2] = True  # covers image 0's only region entirely; partner (1) region pasted there
    box[1, :, 3:] = True  # covers nothing of image 1's region (cols 0-1); partner region (cols 0-1) cut → empty
    mixed = cutmix_targets(t, box)
    r0, r1 = mixed["regions"]
    assert len(r0["labels"]) == 1 and torch.equal(r0["masks"][0], box[0].float())  # from the partner
    assert torch.allclose(r0["features"][0], out["pixel_feats"][1][:, :, :2].mean((-2, -1)), atol=1e-5)
    assert len(r1["labels"]) == 1 and torch.equal(r1["masks"][0], t["regions"][1]["masks"][0])


def test_region_losses_zero_and_finite_when_teacher_keeps_nothing():
    out = teacher_out(B=2)
    t = cutmix_targets(
        teacher_targets(out, "queries", tau_cls=1.1, tau_pix=1.1), torch.zeros(2, h, w, dtype=torch.bool)
    )
    assert all(len(r["labels"]) == 0 for r in t["regions"])
    student = {k: v.clone().requires_grad_() for k, v in out.items() if k != "sem_masks"}
    student["sem_masks"] = torch.einsum(
        "bnk,bnhw->bkhw", student["pred_logits"].softmax(-1)[..., :K], student["pred_masks"].sigmoid()
    )
    terms = RegionLosses(SemiConfig(), C)(student, t)
    total = sum(terms.values())
    assert total.item() == 0.0
    total.backward()
    assert all(torch.isfinite(student[k].grad).all() for k in ("pred_logits", "pred_masks", "pixel_feats"))


def test_confident_query_regions_keep_only_confident_pixels():
    """region_pixels=confident: query masks are cut to pixels with max S̄ ≥ τ_pix, their features
    pool only there, and a query whose mask lies on unsure pixels only is dropped."""
    out = teacher_out()
    S = torch.zeros(2, K, h, w)
    S[:, 0, :, 0] = 1.0  # column 0: class 0, sure
    S[:, 1, :, 1:] = 0.5  # columns 1..: two classes at 0.5, unsure
    S[:, 2, :, 1:] = 0.5
    out["sem_masks"] = S
    plain = teacher_targets(out, "queries", tau_cls=0.3, tau_pix=0.7)
    cut = teacher_targets(out, "queries", tau_cls=0.3, tau_pix=0.7, confident=True)
    assert [r["labels"].tolist() for r in plain["regions"]] == [[0, 2], [0, 2]]
    for b, r in enumerate(cut["regions"]):
        assert r["labels"].tolist() == [0]  # query 2 (columns 2..) lies on unsure pixels only
        assert r["masks"][0, :, 0].eq(1).all() and r["masks"][0, :, 1:].eq(0).all()
        assert torch.allclose(r["features"][0], out["pixel_feats"][b, :, :, 0].mean(-1), atol=1e-6)
    assert torch.equal(cut["valid"], plain["valid"]) and cut["valid"][:, :, 1:].any().item() is False
