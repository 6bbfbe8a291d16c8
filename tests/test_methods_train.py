"""Every method trains end to end on both architectures it supports (tiny synthetic runs)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rc2l.config import load_config
from rc2l.engine.methods import METHODS
from rc2l.engine.train import Trainer

from helpers import tiny_model_overrides

REPO = Path(__file__).resolve().parents[1]

TINY = [
    *tiny_model_overrides("resnet18"),
    "model.aspp_dim=32",
    "model.decoder_dim=32",
    "data.workers=0",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "data.split=1_4",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=2",
    "train.iters=3",
    "train.eval_every=3",
    "train.save_every=3",
    "train.log_every=1",
    "train.progress=false",
    "train.threads=1",
    "semi.rampup_iters=1",
    "train.warmup_iters=1",
    "semi.unimatch.threshold=0.0",
    "semi.fixmatch_threshold=0.0",
    "semi.start_iter=0",
]


@pytest.mark.parametrize(
    "arch,method",
    [
        ("deeplabv3plus", "supervised"),
        ("deeplabv3plus", "fixmatch"),
        ("deeplabv3plus", "unimatch"),
        ("maskformer", "unimatch"),
    ],
)
def test_method_trains_and_evaluates(tmp_path, arch, method):
    cfg = load_config(
        REPO / "configs" / "synthetic.yaml", TINY + [f"model.arch={arch}", f"method={method}", f"out_dir={tmp_path}"]
    )
    result = Trainer(cfg).fit()
    assert result["step"] == 3
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r.get("type") == "train"]
    assert len(train) == 3
    for r in train:
        for k in ("loss", *METHODS[method].loss_terms):  # every term the registry declares is logged
            assert math.isfinite(r[k]), (k, r)
    if method != "supervised":
        assert any(r["loss_unsup"] > 0 for r in train)
    models = {r["model"] for r in recs if "miou" in r}
    assert models == ({"student", "teacher"} if method == "fixmatch" else {"student"})
    assert (tmp_path / "best.safetensors").exists()


def test_rc2l_on_a_per_pixel_model_is_refused_in_one_line(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "rc2l",
            "train",
            str(REPO / "configs" / "synthetic.yaml"),
            "method=rc2l",
            "model.arch=deeplabv3plus",
            f"out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "mask proposals" in lines[0]


def test_a_per_pixel_run_predicts_exports_and_reports(tmp_path):
    """train → load → predict, ONNX export with parity, report: the whole path for DeepLabv3+."""
    import numpy as np

    import rc2l
    from rc2l.infer.export import export_and_check
    from rc2l.infer.report import build_report

    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    cfg = load_config(
        REPO / "configs" / "synthetic.yaml",
        TINY
        + ["model.arch=deeplabv3plus", "method=supervised", "train.iters=2", "train.eval_every=2", f"out_dir={run}"],
    )
    Trainer(cfg).fit()
    model = rc2l.load(run)
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    pred = model.predict(image)
    assert pred.shape == (70, 90) and pred.max() < len(model.classes)
    assert rc2l.load(run / "model").predict(image).tolist() == pred.tolist()  # the model folder is the same model
    export_and_check(run / "best.safetensors", tmp_path / "m.onnx")
    onnx_pred = rc2l.load(tmp_path / "m.onnx").predict(image, mode="original")
    assert (onnx_pred == model.predict(image, mode="original")).mean() > 0.99
    page = build_report(run)
    assert page.is_file() and "mIoU" in page.read_text()


def test_rc2l_fed_by_unimatch_perturbations(tmp_path, monkeypatch):
    """semi.region_views=2 semi.region_fp=true: two strong views with their own boxes and the
    FP branch feed the region losses; L = L_sup + λ_u·Σ terms with UniMatch's weights."""
    from rc2l.engine.methods import RC2L

    cfg = load_config(
        REPO / "configs" / "synthetic.yaml",
        TINY + ["method=rc2l", "semi.region_views=2", "semi.region_fp=true", "semi.tau_cls=0.0", f"out_dir={tmp_path}"],
    )
    trainer = Trainer(cfg)
    mixes = []
    real_mix = RC2L.mix

    def spy(self, targets, strong, step, stream=11):
        mixes.append((stream, strong.detach().clone()))
        return real_mix(self, targets, strong, step, stream)

    monkeypatch.setattr(RC2L, "mix", spy)
    its = trainer.streams.iterators()
    batch_l, batch_u = next(its["labeled"]), next(its["unlabeled"])
    terms = trainer.method.step(batch_l, batch_u, step=5)
    assert [m[0] for m in mixes] == [11, 17]  # one box stream per view
    assert torch.equal(mixes[0][1], batch_u["image_s"]) and torch.equal(mixes[1][1], batch_u["image_s2"])
    unsup = sum(
        v for k, v in terms.items() if k in ("rmc", "rfc", "rcc", "smc", "rmc_fp", "rfc_fp", "rcc_fp", "smc_fp")
    )
    assert {"rmc_fp", "smc_fp"} <= set(terms)
    assert torch.allclose(terms["loss"], terms["loss_sup"] + terms["lambda_u"] * unsup)
    assert torch.allclose(terms["loss_unsup"], unsup)
    assert trainer.fit()["step"] == 3
