"""RC²L's step on hand-made inputs (issue 17, item 2): the combined loss
L = L_sup + λ_u(t)·(λ_rmc L_RMC + λ_rfc L_RFC + λ_rcc L_RCC + λ_smc L_SMC [+ λ_pc L_pc]),
the λ_u ramp, and the supervised warm-up that does not run the unlabeled branch.

The model is a tiny fake MaskFormer (a 1×1 conv for F, learned query embeddings, masks
= queries·(F − its spatial mean), classes from the mask-pooled features, S = Σ_n softmax(c_n)[:K]·σ(p_n)) that
records every forward call: no BatchNorm or dropout, so a second forward pass on the same input
gives the same output and the expected terms can be recomputed from the documented pipeline
(teacher_targets → stride_boxes → cutmix_targets → student on the mixed strong view →
RegionLosses) independently of ``RC2L.step``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

from rc2l.config import load_config
from rc2l.data.sampler import mix_seed
from rc2l.engine.methods import RC2L
from rc2l.engine.methods.schedule import lambda_u
from rc2l.engine.teacher import (
    apply_cutmix,
    cutmix_targets,
    mix_with_partner,
    stride_boxes,
    teacher_targets,
)
from rc2l.losses.pixel import pixel_contrast_loss
from rc2l.losses.region import TERMS

K, B, S, N, C = 3, 2, 16, 5, 8


class TinyMaskFormer(nn.Module):
    per_pixel = False

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, C, 1)
        self.queries = nn.Parameter(torch.randn(N, C))
        self.cls = nn.Linear(C, K + 1)
        self.calls = []

    def forward(self, x):
        F = Fn.avg_pool2d(self.feat(x), 4)  # (B, C, h, w), stride 4
        masks = 4 * torch.einsum("nc,bchw->bnhw", self.queries, F - F.mean((2, 3), keepdim=True))
        pooled = torch.einsum("bnhw,bchw->bnc", masks.sigmoid(), F) / (S // 4) ** 2
        logits = self.cls(pooled + self.queries)
        sem = torch.einsum("bnk,bnhw->bkhw", logits.softmax(-1)[..., :K], masks.sigmoid())
        out = {"pred_logits": logits, "pred_masks": masks, "pixel_feats": F, "sem_masks": sem}
        self.calls.append(x.detach().clone())
        return out

    def param_groups(self):
        return {"backbone": [], "head": list(self.parameters())}


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(B, S, S, dtype=torch.bool)
    valid[1, :, 12:] = False  # crop padding on the second image
    lab = {"image": torch.rand(B, 3, S, S, generator=g), "mask": torch.randint(0, K, (B, S, S), generator=g)}
    lab["mask"][0, :3, :3] = 255  # ignored pixels (the default ignore index)
    unl = {
        "image_w": torch.rand(B, 3, S, S, generator=g),
        "image_s": torch.rand(B, 3, S, S, generator=g),
        "valid": valid,
    }
    return lab, unl


RAMP = ["semi.lambda_u=0.8", "semi.rampup_iters=4", "semi.start_iter=2"]


def make(*overrides):
    cfg = load_config(
        None,
        [
            f"model.mask_dim={C}",
            "semi.cutmix_p=1.0",
            "semi.tau_cls=0.0",
            "semi.tau_pix=0.0",
            "semi.rfc_proj_dim=4",
            "semi.rmc=0.5",
            "semi.rfc=0.3",
            "semi.rcc=0.7",
            "semi.smc=0.9",
            "loss.deep_supervision=false",
            *RAMP,
            *overrides,
        ],
    )
    torch.manual_seed(0)
    m = RC2L(cfg, TinyMaskFormer(), torch.device("cpu"), K)
    with torch.no_grad():  # a teacher unlike the student (as after some EMA steps)
        for p in m.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m, cfg


def expected(m, cfg, lab, unl, step):
    """The step's terms recomputed from the documented pipeline."""
    s = cfg.semi
    sup = m.criterion(m.model(lab["image"]), lab["mask"])["loss"]
    t_out = m.teacher(unl["image_w"])
    h, w = t_out["pred_masks"].shape[-2:]
    ignore = Fn.interpolate((~unl["valid"])[:, None].float(), size=(h, w), mode="nearest")[:, 0].bool()
    targets = teacher_targets(
        t_out, s.regions, s.tau_cls, s.tau_pix, s.soft_masks, ignore, confident=s.region_pixels == "confident"
    )
    per_image = sum(len(r["labels"]) for r in targets["regions"]) / B
    small, big = stride_boxes(B, (S, S), (h, w), s.cutmix_p, cfg.seed, step, "cpu")
    targets = cutmix_targets(targets, small)
    targets["real"] = real = mix_with_partner(~ignore, small)
    stats = {
        "regions_per_image": per_image,
        "conf_frac": float(((targets["conf"] >= s.tau_pix) & real).sum() / real.sum()),
    }
    mixed = apply_cutmix(unl["image_s"], big)
    s_out = m.model(mixed)
    unsup = m.region_losses(s_out, targets)
    if s.pixel_contrast > 0:
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, step, 13))
        unsup["pixel_contrast"] = s.pixel_contrast * pixel_contrast_loss(
            s_out["pixel_feats"],
            targets["label"],
            targets["valid"],
            s.pixel_contrast_tau,
            s.pixel_contrast_mode,
            s.pixel_contrast_samples,
            chunk=4096,
            generator=g,
        )
    return sup, unsup, mixed, targets, stats


def test_lambda_u_ramp_values():
    _, cfg = make()
    assert [lambda_u(t, cfg.semi) for t in range(8)] == pytest.approx([0, 0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    _, cfg = make("semi.rampup_iters=0")
    assert [lambda_u(t, cfg.semi) for t in range(4)] == [0.0, 0.0, 0.8, 0.8]


@pytest.mark.parametrize("step,lam", [(3, 0.4), (9, 0.8)])  # in the ramp (λ_u < λ), after it
@pytest.mark.parametrize("pixel_contrast", [0.0, 0.25])
def test_step_is_sup_plus_lambda_times_the_region_terms(step, lam, pixel_contrast):
    # 8 of the 32 unlabeled pixels sampled for the pixel contrast: its generator stream is checked too
    check_step(step, lam, f"semi.pixel_contrast={pixel_contrast}", "semi.pixel_contrast_samples=8")


def test_step_with_confident_region_pixels():
    """semi.region_pixels=confident with τ_pix 0.41: query regions cut to confident pixels (and
    a different result from region_pixels=all on the same batch)."""
    targets = check_step(5, 0.8, "semi.region_pixels=confident", "semi.tau_pix=0.41")
    assert 0.1 < targets["conf_frac"] < 0.9
    m, cfg = make("semi.region_pixels=all", "semi.tau_pix=0.41")
    lab, unl = batches()
    other = m.step(lab, unl, 5)
    assert other["rmc"].item() != pytest.approx(targets["rmc"].item(), rel=1e-4)


def check_step(step, lam, *overrides):
    m, cfg = make(*overrides)
    pixel_contrast = cfg.semi.pixel_contrast
    lab, unl = batches()
    terms = m.step(lab, unl, step)
    assert len(m.model.calls) == 2 and len(m.teacher.calls) == 1  # labeled + mixed strong; weak view → teacher
    sup, unsup, mixed, targets, stats = expected(m, cfg, lab, unl, step)
    assert torch.equal(m.model.calls[1], mixed)  # the student saw the CutMix-ed strong view
    assert sum(len(r["labels"]) for r in targets["regions"]) > 0
    names = [*TERMS, "pixel_contrast"] if pixel_contrast > 0 else list(TERMS)
    assert set(unsup) == set(names)
    for k in names:  # every term is the recomputed one, weight included, and acts (non-zero)
        assert terms[k].item() == pytest.approx(unsup[k].item(), rel=1e-5, abs=1e-7), k
        assert abs(terms[k].item()) > 1e-4, k
    assert terms["lambda_u"].item() == pytest.approx(lam)
    assert terms["loss_sup"].item() == pytest.approx(sup.item(), rel=1e-6)
    # exactly L_sup + λ_u·Σ terms, in the order the method sums them
    total = sum(terms[k] for k in names)
    assert torch.equal(terms["loss_unsup"], total)
    assert torch.equal(terms["loss"], terms["loss_sup"] + lam * total)
    # and against the independent recomputation
    want = sup + lam * sum(unsup[k] for k in names)
    assert terms["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    # a step that dropped the unlabeled branch (loss = loss_sup) is far from this
    assert terms["loss"].item() - terms["loss_sup"].item() > 1e-3
    assert terms["regions_matched"].item() > 0 and terms["empty_teacher"].item() == 0.0
    for k, v in stats.items():  # the logged statistics
        assert terms[k].item() == pytest.approx(v, rel=1e-6), k
    assert ("pixel_contrast" in terms) == (pixel_contrast > 0)
    return terms


def test_gradients_reach_the_student_and_rfc_head_not_the_teacher():
    m, _ = make()
    lab, unl = batches()
    m.step(lab, unl, 5)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.heads["rfc"].parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    assert set(m.heads) == {"rfc"} and m.heads["rfc"] is m.region_losses.rfc_head
    assert set(m.models_to_evaluate()) == {"student", "teacher"}
    assert m.models_to_evaluate()["teacher"] is m.teacher and m.models_to_evaluate()["student"] is m.model
    assert not m.teacher.training and all(not p.requires_grad for p in m.teacher.parameters())


@pytest.mark.parametrize("step", [0, 1])
def test_supervised_warmup_does_not_run_the_unlabeled_branch(step):
    m, _ = make()
    lab, unl = batches()
    terms = m.step(lab, unl, step)
    assert len(m.model.calls) == 1 and torch.equal(m.model.calls[0], lab["image"])  # the labeled forward only
    assert m.teacher.calls == []
    assert terms["lambda_u"].item() == 0.0
    assert torch.equal(terms["loss"], terms["loss_sup"])
    assert not set(TERMS) & set(terms)
    sup = m.criterion(m.model(lab["image"]), lab["mask"])["loss"]
    assert terms["loss"].item() == pytest.approx(sup.item(), rel=1e-6)
    # the first step after the warm-up runs it
    terms = m.step(lab, unl, 2)
    assert len(m.teacher.calls) == 1 and terms["loss"].item() > terms["loss_sup"].item() + 1e-4


def test_a_teacher_with_no_region_gives_zero_region_terms_still_connected():
    m, _ = make("semi.tau_cls=1.0", "semi.smc=0.0")  # no query reaches τ_cls = 1
    lab, unl = batches()
    terms = m.step(lab, unl, 5)
    assert terms["empty_teacher"].item() == 1.0 and terms["regions_matched"].item() == 0
    assert all(terms[k].item() == 0.0 for k in TERMS)
    assert torch.equal(terms["loss"], terms["loss_sup"] + 0.8 * terms["loss_unsup"])
    terms["loss"].backward()  # the zeros are connected: backward works


class _ConstantRegionLosses(nn.Module):
    """Region losses stubbed to constants (rmc 1, rfc 2, rcc 3, smc 4), recording what they get."""

    def __init__(self):
        super().__init__()
        self.rfc_head = None
        self.calls = []

    def forward(self, student, targets, return_stats=False):
        self.calls.append((student, targets))
        terms = {k: torch.tensor(float(i + 1)) for i, k in enumerate(TERMS)}
        return terms, {"num_matched": 3, "num_regions": 2}


@pytest.mark.parametrize("views,fp", [(2, True), (2, False), (1, True)])
def test_perturbed_step_weights_each_branch_like_unimatch(views, fp):
    """RC²L fed by UniMatch's perturbations: views share 1 − w_fp, FP gets w_fp = 0.5 (with FP);
    each view is mixed with its own box; FP is trained against the un-mixed targets."""
    m, cfg = make(f"semi.region_views={views}", f"semi.region_fp={str(fp).lower()}", "semi.region_fp_dropout=0.5")
    m.region_losses = stub = _ConstantRegionLosses()
    m.model.forward = _with_fp(m.model)
    lab, unl = batches()
    unl["image_s2"] = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(5))
    terms = m.step(lab, unl, step=6)
    w_fp = 0.5 if fp else 0.0
    w_view = (1 - w_fp) / views
    for i, k in enumerate(TERMS):
        assert terms[k].item() == pytest.approx(views * w_view * (i + 1))
        if fp:
            assert terms[f"{k}_fp"].item() == pytest.approx(w_fp * (i + 1))
        else:
            assert f"{k}_fp" not in terms
    assert len(stub.calls) == views + fp
    assert terms["regions_matched"].item() == 3 * (views + fp)
    plain, _ = m.weak_targets(unl)
    assert terms["regions_per_image"].item() == pytest.approx(sum(len(r["labels"]) for r in plain["regions"]) / B)
    if views == 2:  # two different boxes: the two mixed targets differ
        assert not torch.equal(stub.calls[0][1]["label"], stub.calls[1][1]["label"]) or not torch.equal(
            stub.calls[0][1]["real"], stub.calls[1][1]["real"]
        )
    if fp:  # the FP branch sees the un-mixed targets (no box applied: "real" is the padding mask itself)
        fp_targets = stub.calls[-1][1]
        h = S // 4
        real = ~Fn.interpolate((~unl["valid"])[:, None].float(), size=(h, h), mode="nearest")[:, 0].bool()
        assert torch.equal(fp_targets["real"], real)
    unsup = sum(v for k, v in terms.items() if k in TERMS or k.removesuffix("_fp") in TERMS)
    lam = lambda_u(6, cfg.semi)
    assert terms["loss"].item() == pytest.approx((terms["loss_sup"] + lam * unsup).item())


def _with_fp(model):
    """The fake model's forward with UniMatch's fp_dropout option (FP branch = a perturbed copy)."""
    plain = model.forward

    def forward(x, fp_dropout=0.0):
        out = plain(x)
        if fp_dropout > 0:
            out["fp"] = plain(Fn.dropout2d(x, fp_dropout, training=True))
        return out

    return forward


def test_the_plain_step_does_not_take_the_perturbed_path():
    m, _ = make()
    m.region_losses = stub = _ConstantRegionLosses()
    lab, unl = batches()
    terms = m.step(lab, unl, step=6)
    assert len(stub.calls) == 1 and "rmc_fp" not in terms


def test_after_step_moves_the_teacher_towards_the_student_by_the_ema():
    m, cfg = make("semi.ema_momentum=0.9", "semi.start_iter=0")
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    student = m.model.state_dict()
    m.after_step(20)  # m_t = min(1 − 1/21, 0.9) = 0.9
    for k, v in m.teacher.state_dict().items():
        assert torch.allclose(v, 0.9 * before[k] + 0.1 * student[k], atol=1e-6), k
