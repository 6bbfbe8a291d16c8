"""One training step at CamVid's recipe crop gives every trainable weight a gradient, on both
architectures and with every method: a weight that never gets one stays at its random
initialisation, yet still reads features at evaluation (issue 36: ASPP's 6/12/18 taps on the
12×16 stride-16 map of a 192×256 crop)."""

import pytest
import torch

from rc2l.config import ConfigError, auto_aspp_rates, load_config, model_keys_read, to_dict
from rc2l.engine.train import Trainer

from helpers import CONFIGS, tiny_model_overrides

CROP = [192, 256]  # configs/camvid.yaml's training crop: a 12×16 map at output stride 16

# camvid.yaml's recipe (crop, resize, scale range, semi settings) on synthetic images, tiny model
SMALL = [
    *tiny_model_overrides("efficientnet_lite0"),
    "model.aspp_dim=16",
    "model.decoder_dim=16",
    "data.name=synthetic",
    "data.synthetic.size=256",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=1",
    "data.split=1_4",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "data.cache=false",
    "train.threads=1",
    "train.progress=false",
    "semi.start_iter=0",  # the unlabelled branch runs at step 0
    "semi.rampup_iters=0",
]


def untrained(tr: Trainer) -> set[str]:
    """Trainable tensors whose gradient is missing or all 0, and conv kernel taps "name[i,j]" that
    no output position's gradient reaches (a tap that reads only padding). Single elements may be
    0 by chance (a ReLU off at every pixel); a whole tensor or a tap is never 0 by chance."""
    named = [(f"student.{n}", p) for n, p in tr.model.named_parameters()]
    named += [(f"heads.{n}", p) for n, p in tr.heads.named_parameters()]
    out = set()
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.grad is None or not bool(p.grad.any()):
            out.add(name)
        elif p.ndim == 4:  # conv weight (C_out, C_in, kh, kw)
            out |= {f"{name}[{i},{j}]" for i, j in (p.grad.abs().sum((0, 1)) == 0).nonzero().tolist()}
    return out


def one_step(tmp_path, arch: str, method: str, *extra: str) -> Trainer:
    cfg = load_config(
        CONFIGS / "camvid.yaml", [*SMALL, f"model.arch={arch}", f"method={method}", f"out_dir={tmp_path}", *extra]
    )
    assert cfg.data.crop_size == CROP
    torch.manual_seed(0)
    tr = Trainer(cfg)
    assert tr.train_step(tr.streams.iterators()) is not None
    return tr


@pytest.mark.parametrize(
    "arch,method,extra",
    [
        ("maskformer", "supervised", ()),
        ("maskformer", "fixmatch", ()),
        ("maskformer", "unimatch", ()),
        ("maskformer", "rc2l", ()),
        # RFC's projection head g (off in the recipe) trains too, once the teacher keeps regions
        # (a random teacher has no query with class probability ≥ the recipe's τ_cls = 0.7)
        ("maskformer", "rc2l", ("semi.rfc=1.0", "semi.tau_cls=0.0")),
        ("deeplabv3plus", "supervised", ()),
        ("deeplabv3plus", "fixmatch", ()),
        ("deeplabv3plus", "unimatch", ()),
        ("deeplabv3plus", "unimatch", ("loss.pixel_sup=ohem",)),
    ],
)
def test_one_step_at_the_recipe_crop_reaches_every_weight(tmp_path, arch, method, extra):
    """Student and extra heads; the EMA teacher (fixmatch, rc2l, unimatch teacher=ema) moves by
    EMA, not by gradients, and is not checked. No trainable tensor is exempt."""
    tr = one_step(tmp_path, arch, method, *extra)
    if "semi.rfc=1.0" in extra:
        assert len(list(tr.heads.parameters())) > 0
    assert not untrained(tr), f"weights without a gradient: {sorted(untrained(tr))}"


def test_camvid_rates_are_the_auto_rule():
    cfg = load_config(CONFIGS / "camvid.yaml")
    assert cfg.model.aspp_rates == auto_aspp_rates(CROP) == [2, 4, 6]
    for name in ("voc_classic", "voc_blended", "cityscapes"):  # large maps keep DeepLab's rates
        assert load_config(CONFIGS / f"{name}.yaml").model.aspp_rates == [6, 12, 18]


@pytest.mark.parametrize(
    "crop,rates", [((192, 256), [2, 4, 6]), ((240, 320), [2, 4, 6]), ((513, 513), [5, 10, 15]), ((64, 64), [1, 2, 3])]
)
def test_auto_rates_keep_the_largest_within_half_the_map(crop, rates):
    """1:2:3 as DeepLab's; the largest rate ≤ half the stride-16 map's shorter side (from 6 up)."""
    assert auto_aspp_rates(list(crop)) == rates
    short = min(-(-s // 16) for s in crop)
    assert short < 6 or 2 * rates[-1] <= short < 2 * (rates[-1] + 3)  # and the largest k that fits
    cfg = load_config(overrides=["model.aspp_rates=auto", f"data.crop_size=[{crop[0]},{crop[1]}]"])
    assert cfg.model.aspp_rates == rates  # resolved at load, so the saved config names the rates


def test_an_unknown_rate_word_is_a_one_line_error_naming_the_key():
    with pytest.raises(ConfigError, match="'model.aspp_rates'") as e:
        load_config(overrides=["model.aspp_rates=big"])
    assert "\n" not in str(e.value)


def test_the_old_rates_leave_aspp_taps_untrained(tmp_path):
    """The defect the rule removes: with 6/12/18 at the 12×16 map, every vertical and diagonal tap
    of the rate-12 branch (12 ≥ 12 rows) and every off-centre tap of the rate-18 branch (18 ≥ 16
    columns too) reads only padding and gets no gradient; the rate-6 branch trains."""
    tr = one_step(tmp_path, "deeplabv3plus", "supervised", "model.aspp_rates=[6,12,18]")
    rate12 = {(i, j) for i in (0, 2) for j in range(3)}
    rate18 = {(i, j) for i in range(3) for j in range(3)} - {(1, 1)}
    want = {f"student.decoder.aspp.branches.2.0.weight[{i},{j}]" for i, j in rate12}
    want |= {f"student.decoder.aspp.branches.3.0.weight[{i},{j}]" for i, j in rate18}
    assert untrained(tr) == want


def test_resume_of_a_mask_model_run_ignores_the_resolved_aspp_rates():
    """A maskformer run saved before camvid.yaml's rates became auto ([6, 12, 18]) must still
    resume: the mask model does not read the ASPP keys. DeepLabv3+ compares them."""
    old = to_dict(load_config(CONFIGS / "camvid.yaml", ["model.aspp_rates=[6,12,18]"]))["model"]
    now = to_dict(load_config(CONFIGS / "camvid.yaml"))["model"]
    assert old != now
    assert model_keys_read("maskformer", old) == model_keys_read("maskformer", now)
    assert model_keys_read("deeplabv3plus", old) != model_keys_read("deeplabv3plus", now)
    assert model_keys_read("maskformer", {**now, "hidden_dim": 7}) != model_keys_read("maskformer", now)
