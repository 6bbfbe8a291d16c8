"""Short semi-supervised runs end to end (synthetic, and CamVid when present)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rc2l.config import load_config
from rc2l.engine.checkpoint import read_meta
from rc2l.engine.methods.schedule import lambda_u as _lambda_u
from rc2l.engine.teacher import stride_boxes
from rc2l.engine.train import Trainer
from rc2l.provenance import git_commit

from helpers import CONFIGS, SYNTHETIC, tiny_model_overrides


def lambda_u(step, cfg):
    return _lambda_u(step, cfg.semi)


TINY = [
    *tiny_model_overrides("resnet18"),
    "data.workers=0",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "train.iters=4",
    "train.eval_every=4",
    "train.save_every=4",
    "train.log_every=1",
    "train.progress=false",
    "train.threads=1",
    "semi.tau_cls=0.0",
    "semi.rampup_iters=1",
    "semi.start_iter=0",
    "train.warmup_iters=1",
    "train.lr=0.001",
]
REGION_TERMS = ("rmc", "rfc", "rcc", "smc")


def _run(tmp_path, config, extra):
    cfg = load_config(config, TINY + [f"out_dir={tmp_path}"] + extra)
    trainer = Trainer(cfg)
    teacher0 = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.fit()
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return trainer, teacher0, records


def _check_run(trainer, teacher0, records, terms):
    train = [r for r in records if r.get("type") == "train"]
    assert len(train) == 4
    for r in train:
        region_stats = ("regions_per_image",) if "rmc" in terms else ()  # a pixel method keeps no regions
        for k in (*terms, "loss_sup", "loss_unsup", *region_stats, "conf_frac", "lambda_u"):
            assert k in r, f"{k} not logged"
            assert math.isfinite(r[k]), f"{k} not finite: {r[k]}"
    evals = [r for r in records if "miou" in r]
    assert {r["model"] for r in evals} == {"student", "teacher"}
    changed = [
        k for k, v in trainer.teacher.state_dict().items() if v.is_floating_point() and not torch.equal(v, teacher0[k])
    ]
    assert changed, "the EMA teacher did not change"
    best = load_file(str(trainer.run_dir / "best.safetensors"))
    assert best.keys() == trainer.model.state_dict().keys()
    start = [r for r in records if r.get("type") == "start"]
    assert [r["step"] for r in start] == [0] and start[0]["commit"] == git_commit()
    assert read_meta(trainer.run_dir / "best.safetensors")["commit"] == start[0]["commit"]  # traceable to its code


@pytest.mark.parametrize("region_pixels", ["all", "confident"])
def test_rc2l_on_synthetic_logs_every_term(tmp_path, region_pixels):
    trainer, t0, records = _run(
        tmp_path,
        SYNTHETIC,
        [
            "method=rc2l",
            "data.split=1_4",
            "data.synthetic.num_train=16",
            "data.synthetic.num_val=2",
            "semi.pixel_contrast=0.1",
            f"semi.region_pixels={region_pixels}",
            "semi.tau_pix=0.3",
        ],
    )
    _check_run(trainer, t0, records, REGION_TERMS + ("pixel_contrast",))
    train = [r for r in records if r.get("type") == "train"]
    assert any(r["regions_per_image"] > 0 for r in train)  # tau_cls=0 keeps the non-empty queries
    assert any(r["rmc"] > 0 and r["rcc"] > 0 for r in train)
    assert "rfc" in dict(trainer.heads.named_children())


def test_fixmatch_on_synthetic(tmp_path):
    trainer, t0, records = _run(
        tmp_path,
        SYNTHETIC,
        [
            "method=fixmatch",
            "data.split=1_4",
            "data.synthetic.num_train=16",
            "data.synthetic.num_val=2",
            "semi.fixmatch_threshold=0.0",
        ],
    )
    _check_run(trainer, t0, records, ("fixmatch",))
    assert any(r["fixmatch"] > 0 for r in records if r.get("type") == "train")


@pytest.mark.slow
def test_rc2l_on_camvid_tiny(tmp_path, camvid_root):
    trainer, t0, records = _run(
        tmp_path,
        CONFIGS / "camvid.yaml",
        [
            "method=rc2l",
            "data.split=1_8",
            f"data.root={camvid_root}",
            "data.resize=[64,96]",
            "data.crop_size=[64,96]",
            "train.eval_every=100",
        ],
    )
    _check_run_no_eval(trainer, t0, records)


def _check_run_no_eval(trainer, t0, records):
    train = [r for r in records if r.get("type") == "train"]
    for r in train:
        for k in REGION_TERMS + ("loss_sup", "regions_per_image", "conf_frac"):
            assert math.isfinite(r[k])
    changed = [
        k for k, v in trainer.teacher.state_dict().items() if v.is_floating_point() and not torch.equal(v, t0[k])
    ]
    assert changed


def test_lambda_u_ramp():
    cfg = load_config(SYNTHETIC, ["semi.rampup_iters=10", "semi.lambda_u=2.0", "semi.start_iter=0"])
    assert lambda_u(0, cfg) == pytest.approx(0.2)
    assert lambda_u(4, cfg) == pytest.approx(1.0)
    assert lambda_u(50, cfg) == 2.0
    late = load_config(SYNTHETIC, ["semi.rampup_iters=10", "semi.start_iter=100", "semi.lambda_u=1.0"])
    assert lambda_u(99, late) == 0.0 and lambda_u(100, late) == pytest.approx(0.1)


def test_stride_boxes_align_image_and_feature_grids():
    small, big = stride_boxes(4, (66, 96), (17, 24), 1.0, seed=0, step=3, device="cpu")
    assert big.shape == (4, 66, 96) and small.shape == (4, 17, 24)
    # every image pixel agrees with the stride-4 cell it falls in
    assert torch.equal(big, small.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :66, :96])
    again, _ = stride_boxes(4, (66, 96), (17, 24), 1.0, seed=0, step=3, device="cpu")
    assert torch.equal(small, again)  # a resumed run draws the same boxes
    other, _ = stride_boxes(4, (66, 96), (17, 24), 1.0, seed=0, step=4, device="cpu")
    assert not torch.equal(small, other)


def test_teacher_copies_student_during_supervised_warmup(tmp_path):
    """Before semi.start_iter the EMA does not average in the student's first weights: the teacher
    that starts the unlabeled branch is the warmed-up student itself."""
    trainer, _, _ = _run(
        tmp_path,
        SYNTHETIC,
        [
            "method=rc2l",
            "data.split=1_4",
            "data.synthetic.num_train=16",
            "data.synthetic.num_val=2",
            "semi.start_iter=4",
        ],
    )
    student = trainer.model.state_dict()
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, student[k]), k
