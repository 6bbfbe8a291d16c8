"""UniMatch's driving-scene (Cityscapes) recipe, piece by piece on hand-made tensors: OHEM
labelled CE, τ = 0, SGD with the head/backbone LR split and poly decay, the halved total, and
the preset that bundles them (configs/camvid_unimatch_driving.yaml)."""

import math

import pytest
import torch
from torch import nn

from rc2l.config import ConfigError, flatten, load_config, to_dict
from rc2l.engine.methods import UniMatch
from rc2l.engine.methods.base import build_criterion
from rc2l.engine.optim import build_optimizer, build_scheduler
from rc2l.losses.pixel import PixelCriterion, ohem_cross_entropy, ohem_keep, pixel_pseudo_ce

from helpers import CONFIGS, PP_K, TinyPerPixel
from helpers import unimatch_batches as batches

PRESET = CONFIGS / "camvid_unimatch_driving.yaml"


def logits_with_true_prob(p: list[float]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose class-0 (the true class) probability is p[i] at pixel i."""
    p = torch.tensor(p, dtype=torch.float64)
    return torch.stack((p.log(), (1 - p).log()))[None, :, None].float()


# ----------------------------------------------------------------------------- OHEM
def test_ohem_keeps_the_pixels_under_the_threshold():
    p = [0.1, 0.99, 0.5, 0.71, 0.69, 0.8, 0.2, 0.9]
    logits, labels = logits_with_true_prob(p), torch.zeros(1, 1, 8, dtype=torch.int64)
    keep = ohem_keep(torch.tensor(p)[None, None], torch.ones(1, 1, 8, dtype=torch.bool), 0.7, 0.0)
    assert keep[0, 0].tolist() == [True, False, True, False, True, False, True, False]
    want = -sum(math.log(q) for q in (0.1, 0.5, 0.69, 0.2)) / 4  # mean over the kept pixels
    assert ohem_cross_entropy(logits, labels, 0.7, 0.0).item() == pytest.approx(want, rel=1e-5)


def test_ohem_keeps_at_least_min_kept_of_the_hardest():
    """Every pixel easy (p > 0.7): the floor ceil(0.25 × 8) = 2 keeps the two hardest."""
    p = [0.95, 0.75, 0.99, 0.9, 0.8, 0.97, 0.85, 0.96]
    logits, labels = logits_with_true_prob(p), torch.zeros(1, 1, 8, dtype=torch.int64)
    keep = ohem_keep(torch.tensor(p)[None, None], torch.ones(1, 1, 8, dtype=torch.bool), 0.7, 0.25)
    assert keep[0, 0].nonzero().flatten().tolist() == [1, 4]
    want = -(math.log(0.75) + math.log(0.8)) / 2
    assert ohem_cross_entropy(logits, labels, 0.7, 0.25).item() == pytest.approx(want, rel=1e-5)
    # with enough hard pixels the floor does not cut them: 3 under 0.7 > ceil(0.25 × 8)
    hard = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9])[None, None]
    keep = ohem_keep(hard, torch.ones(1, 1, 8, dtype=torch.bool), 0.7, 0.25)
    assert int(keep.sum()) == 3


def test_ohem_respects_ignore_and_scales_the_floor_to_valid_pixels():
    """Ignored pixels never count, however hard; the floor is a fraction of the valid ones."""
    p = [0.01, 0.95, 0.02, 0.9, 0.03, 0.8, 0.04, 0.85]
    labels = torch.tensor([[[255, 0, 255, 0, 255, 0, 255, 0]]])
    logits = logits_with_true_prob(p)
    keep = ohem_keep(torch.tensor(p)[None, None], labels != 255, 0.7, 0.5)  # ceil(0.5 × 4 valid) = 2
    assert keep[0, 0].nonzero().flatten().tolist() == [5, 7]
    want = -(math.log(0.8) + math.log(0.85)) / 2
    assert ohem_cross_entropy(logits, labels, 0.7, 0.5).item() == pytest.approx(want, rel=1e-5)
    every = torch.full_like(labels, 255)  # nothing labelled: a 0 still connected to the graph
    logits.requires_grad_(True)
    loss = ohem_cross_entropy(logits, every)
    assert loss.item() == 0.0 and loss.requires_grad


def test_ohem_with_floor_one_is_plain_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    labels[0, 0] = 255
    plain = nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert ohem_cross_entropy(logits, labels, 0.7, 1.0).item() == pytest.approx(plain.item(), rel=1e-5)


def test_pixel_sup_picks_the_labelled_loss_of_a_per_pixel_model():
    """loss.pixel_sup=ohem makes DeepLabv3+'s criterion OHEM with the config's values; ce is plain CE."""
    torch.manual_seed(0)
    out, labels = {"sem_logits": torch.randn(2, 4, 4, 4)}, torch.randint(0, 4, (2, 16, 16))
    up = nn.functional.interpolate(out["sem_logits"], size=(16, 16), mode="bilinear", align_corners=False)
    ce = build_criterion(load_config(None, ["model.arch=deeplabv3plus"]), 4, 255)
    cfg = load_config(None, ["model.arch=deeplabv3plus", "loss.pixel_sup=ohem", "loss.ohem_min_kept=0.1"])
    ohem = build_criterion(cfg, 4, 255)
    assert isinstance(ohem, PixelCriterion) and ohem.ohem == (0.7, 0.1)
    assert ce(out, labels)["loss"].item() == pytest.approx(nn.functional.cross_entropy(up, labels).item(), rel=1e-5)
    assert ohem(out, labels)["loss"].item() == pytest.approx(ohem_cross_entropy(up, labels, 0.7, 0.1).item(), rel=1e-5)
    assert ohem(out, labels)["loss"].item() > ce(out, labels)["loss"].item()  # the hard pixels only


# ----------------------------------------------------------------------------- τ = 0
def test_threshold_zero_counts_every_real_pixel():
    """conf ≥ 0 holds everywhere, conf = 0 included: the CE is the plain mean over real pixels."""
    torch.manual_seed(0)
    logits, label = torch.randn(1, 3, 2, 3), torch.randint(0, 3, (1, 2, 3))
    conf = torch.tensor([[[0.0, 0.01, 0.3], [0.34, 0.9, 0.0]]])
    pad = torch.tensor([[[False, False, False], [False, False, True]]])
    nll = -logits.log_softmax(1).gather(1, label[:, None])[:, 0]
    want = nll[~pad].mean()
    got = pixel_pseudo_ce(logits, label, conf, 0.0, ignore=pad, input="logits")
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert pixel_pseudo_ce(logits, label, conf, 1e-3, ignore=pad, input="logits") < got  # τ > 0 drops two


def test_unimatch_at_threshold_zero_masks_nothing():
    cfg = load_config(None, ["model.arch=deeplabv3plus", "semi.rampup_iters=0", "semi.unimatch.threshold=0"])
    torch.manual_seed(0)
    m = UniMatch(cfg, TinyPerPixel(), torch.device("cpu"), PP_K)
    terms = m.step(*batches(), step=0)
    assert terms["conf_frac"].item() == 1.0


# ----------------------------------------------------------------------------- optimiser, total
def test_preset_optimizer_is_unimatch_sgd_with_poly_decay():
    """UniMatch: backbone at lr, head at lr × lr_multi (1 for Cityscapes), momentum 0.9, lr × (1 −
    t/T)^0.9 from step 0. Ours: head at train.lr, backbone at lr × train.backbone_lr_mult, so
    lr_multi m is train.lr = lr·m, backbone_lr_mult = 1/m."""
    cfg = load_config(PRESET)
    model = nn.ModuleDict({"backbone": nn.Conv2d(3, 4, 3), "decoder": nn.Conv2d(4, 2, 1)})
    groups = {"backbone": list(model["backbone"].parameters()), "head": list(model["decoder"].parameters())}
    opt = build_optimizer(groups, cfg.train)
    assert isinstance(opt, torch.optim.SGD)
    assert {g["lr"] for g in opt.param_groups} == {0.005}
    assert {g["momentum"] for g in opt.param_groups} == {0.9}
    sched, total = build_scheduler(opt, cfg.train), cfg.train.iters
    for t in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.005 * (1 - t / total) ** 0.9, rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    head_x10 = build_optimizer(groups, load_config(PRESET, ["train.lr=0.01", "train.backbone_lr_mult=0.1"]).train)
    lrs = {g["name"]: g["lr"] for g in head_x10.param_groups}  # UniMatch's VOC: lr 0.001, lr_multi 10
    assert lrs["backbone"] == pytest.approx(0.001) and lrs["head"] == pytest.approx(0.01)


def test_loss_scale_halves_the_whole_total_as_unimatch():
    """(L_x + 0.25·L_s1 + 0.25·L_s2 + 0.5·L_fp) / 2: every term scaled, the logged parts not."""
    terms = {}
    for scale in (1.0, 0.5):
        cfg = load_config(
            None, ["model.arch=deeplabv3plus", "semi.rampup_iters=0", f"semi.unimatch.loss_scale={scale}"]
        )
        torch.manual_seed(0)
        terms[scale] = UniMatch(cfg, TinyPerPixel(), torch.device("cpu"), PP_K).step(*batches(), step=0)
    one, half = terms[1.0], terms[0.5]
    assert half["loss"].item() == pytest.approx(0.5 * one["loss"].item(), rel=1e-6)
    assert half["loss_sup"].item() == pytest.approx(one["loss_sup"].item(), rel=1e-6)
    want = 0.5 * (one["loss_sup"] + one["unimatch_s1"] + one["unimatch_s2"] + one["unimatch_fp"])
    assert half["loss"].item() == pytest.approx(want.item(), rel=1e-6)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override,key",
    [
        ("loss.ohem_thresh=-0.1", "loss.ohem_thresh"),
        ("loss.ohem_thresh=1.5", "loss.ohem_thresh"),
        ("loss.ohem_min_kept=-1", "loss.ohem_min_kept"),
        ("loss.ohem_min_kept=200000", "loss.ohem_min_kept"),  # a fraction, not UniMatch's pixel count
        ("semi.unimatch.threshold=-0.5", "semi.unimatch.threshold"),
        ("semi.unimatch.loss_scale=0", "semi.unimatch.loss_scale"),
        ("loss.pixel_sup=focal", "loss.pixel_sup"),
    ],
)
def test_a_bad_recipe_value_is_a_one_line_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as e:
        load_config(None, ["model.arch=deeplabv3plus", override])
    assert "\n" not in str(e.value)


def test_ohem_on_the_mask_model_is_refused():
    """Its labelled loss is the set loss: there is no per-pixel CE for OHEM to mine."""
    with pytest.raises(ConfigError, match="'loss.pixel_sup'.*deeplabv3plus"):
        load_config(None, ["loss.pixel_sup=ohem"])


# what the preset changes in configs/camvid.yaml, and nothing else
DRIVING = {
    "out_dir": "runs/camvid_unimatch_driving",
    "method": "unimatch",
    "data.split": "1_8",
    "train.optimizer": "sgd",
    "train.lr": 0.005,
    "train.backbone_lr_mult": 1.0,
    "train.weight_decay": 0.0001,
    "train.warmup_iters": 0,
    "train.clip_grad": 0.0,
    "semi.start_iter": 0,
    "semi.rampup_iters": 0,
    "semi.unimatch.threshold": 0.0,
    "semi.unimatch.loss_scale": 0.5,
}


def test_preset_is_camvid_plus_the_driving_recipe_only():
    base, preset = flatten(to_dict(load_config(CONFIGS / "camvid.yaml"))), flatten(to_dict(load_config(PRESET)))
    changed = {k: v for k, v in preset.items() if base[k] != v}
    assert changed == DRIVING
    s = load_config(PRESET).semi.unimatch
    assert (s.teacher, s.views, s.fp, s.fp_dropout) == ("self", 2, True, 0.5)  # V1, as UniMatch's defaults
    from rc2l.config import parse_override
    from rc2l.engine.compare import DRIVING as DRIVING_OVERRIDES

    assert dict(parse_override(o) for o in DRIVING_OVERRIDES) == {
        k: v for k, v in DRIVING.items() if k not in ("out_dir", "data.split")
    }  # compare's fair preset runs the same recipe as the file
    deeplab = load_config(PRESET, ["model.arch=deeplabv3plus", "loss.pixel_sup=ohem"])
    assert (deeplab.loss.ohem_thresh, deeplab.model.aspp_rates) == (0.7, [2, 4, 6])
