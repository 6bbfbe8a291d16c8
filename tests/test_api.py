"""The Python API (rc2l.load / train / evaluate): every kind of model path, every kind of
image, the same numbers as the CLI, no import side effects, and the README example run as is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rc2l
from rc2l.config import ConfigError
from rc2l.errors import CheckpointError, RC2LError

from infer_helpers import REPO, TINY_RUN, TorchSettings, cli, synthetic_image, tiny_run

K = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def model(run_dir):
    return rc2l.load(run_dir / "best.safetensors", device="cpu")


def _want(model, rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model.module.semantic_scores(x).argmax(1)[0].numpy()


def test_import_has_no_side_effects_and_help_is_torch_free():
    code = (
        "import sys, rc2l; from rc2l.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_predict_path_pil_array_agree(model, tmp_path):
    """A path, a PIL image and an array of the same pixels give the same uint8 (H, W) classes,
    equal to the network's argmax; .classes / .palette come from the weights."""
    rgb = synthetic_image(tmp_path / "a.png", 64, 64, 0)
    want = _want(model, rgb)
    for image in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.open(tmp_path / "a.png"), rgb):
        pred = model.predict(image)
        assert pred.dtype == np.uint8 and pred.shape == (64, 64)
        assert (pred == want).all()
    pred, conf = model.predict(rgb, confidence=True)
    assert (pred == want).all() and conf.shape == (64, 64) and conf.dtype == np.float32
    assert conf.min() >= 1 / K - 1e-6 and conf.max() <= 1 + 1e-6
    assert model.classes == ["background", "disc", "square", "triangle", "ring"]
    assert len(model.palette) == K and all(len(c) == 3 for c in model.palette)


def test_predict_modes_and_many(model, tmp_path):
    """sliding_window on a window-sized image is one window = the whole image; a larger image
    in auto mode goes through the window; predict_many keeps input order across sizes."""
    rgb = synthetic_image(tmp_path / "a.png", 64, 64, 1)
    big = synthetic_image(tmp_path / "b.png", 80, 120, 2)
    assert (model.predict(rgb, mode="sliding_window") == model.predict(rgb, mode="original")).all()
    auto, whole = model.predict(big), model.predict(big, mode="original")
    assert auto.shape == whole.shape == (80, 120)
    assert (whole == _want(model, big)).all()
    many = model.predict_many([big, rgb, tmp_path / "b.png", rgb], batch_size=2)
    assert [m.shape for m in many] == [(80, 120), (64, 64), (80, 120), (64, 64)]
    assert (many[1] == model.predict(rgb)).all() and (many[0] == auto).all() and (many[2] == auto).all()
    with pytest.raises(RC2LError, match="mode must be one of"):
        model.predict(rgb, mode="center")
    with pytest.raises(RC2LError, match=r"H×W×3 array, got shape \(4, 4, 5\)"):
        model.predict(np.zeros((4, 4, 5), np.uint8))


def test_load_every_kind_of_path(run_dir, model, tmp_path):
    """The run folder picks best.safetensors; a model folder and an hf:// snapshot in a local
    Hugging Face cache (offline) load to the same predictions."""
    from rc2l.engine.model_dir import write_model_dir

    rgb = synthetic_image(tmp_path / "a.png", 64, 64, 3)
    want = model.predict(rgb)
    assert (rc2l.load(run_dir, device="cpu").predict(rgb) == want).all()
    # a fake HF cache: models--owner--name/{refs/main, snapshots/<commit>/<files>}
    cache = tmp_path / "hf"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--someone--tiny-rc2l" / "snapshots" / commit
    write_model_dir(snap, run_dir / "best.safetensors", {"model": {}}, {})
    (cache / "models--someone--tiny-rc2l" / "refs").mkdir()
    (cache / "models--someone--tiny-rc2l" / "refs" / "main").write_text(commit)
    pytest.importorskip("huggingface_hub")
    hub = rc2l.load("hf://someone/tiny-rc2l", device="cpu", local_files_only=True, cache_dir=cache)
    assert (hub.predict(rgb) == want).all() and hub.classes == model.classes
    with pytest.raises(RC2LError, match="hf://someone/missing: cannot get the model"):
        rc2l.load("hf://someone/missing", local_files_only=True, cache_dir=cache)
    with pytest.raises(CheckpointError, match="no model.safetensors, best.safetensors"):
        rc2l.load(tmp_path)


def test_load_onnx(run_dir, model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from rc2l.infer.export import export_onnx, onnx_metadata

    path = tmp_path / "m.onnx"
    export_onnx(model.module, path, metadata=onnx_metadata(model.info, run_dir / "best.safetensors"))
    onnx_model = rc2l.load(path, device="cpu")
    rgb = synthetic_image(tmp_path / "a.png", 64, 64, 4)
    assert onnx_model.backend == "onnx" and onnx_model.classes == model.classes
    assert (onnx_model.predict(rgb) != model.predict(rgb)).mean() <= 1e-3


def test_train_and_evaluate_return_the_cli_records(tmp_path):
    """rc2l.train takes a list of k=v and dotted keywords (the keyword wins) and returns the
    trainer's result; rc2l.evaluate returns exactly what `rc2l eval --json` writes."""
    out = tmp_path / "run"
    with TorchSettings():
        res = rc2l.train(
            REPO / "configs" / "synthetic.yaml",
            [*TINY_RUN, "train.iters=99"],
            **{"train.iters": 2, "train.eval_every": 2, "out_dir": str(out)},
        )
    assert res["step"] == 2 and set(res["best"]) == {"miou", "model", "step"}
    assert (out / "best.safetensors").is_file()
    tiny = [o for o in TINY_RUN if o.startswith(("model.", "data."))]
    with TorchSettings():
        rec = rc2l.evaluate(REPO / "configs" / "synthetic.yaml", out / "best.safetensors", overrides=tiny)
        code, _, err = cli(
            [
                "eval",
                str(REPO / "configs" / "synthetic.yaml"),
                *tiny,
                "--weights",
                str(out / "best.safetensors"),
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text()) == json.loads(json.dumps(rec))
    assert abs(rec["miou"] - res["best"]["miou"]) < 1e-6
    with pytest.raises(ConfigError, match="unknown config key 'train.itres'"):
        rc2l.resolve_config(REPO / "configs" / "synthetic.yaml", **{"train.itres": 3})
    cfg = rc2l.resolve_config(REPO / "configs" / "synthetic.yaml", ["data.split=1_4"])
    again = rc2l.resolve_config(cfg, **{"seed": 7})  # a Config object plus overrides
    assert (again.seed, again.data.split, again.model.backbone) == (7, "1_4", cfg.model.backbone)


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's Python API section has one python example"
    return blocks[0]


def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's Python example, as written, in a folder with a photo.jpg; training is made
    tiny (the tiny model, 4 steps) by wrapping rc2l.train / rc2l.evaluate, nothing else changes."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    synthetic_image(tmp_path / "photo.jpg", 96, 80, 5)
    monkeypatch.chdir(tmp_path)
    real_train, real_eval = rc2l.train, rc2l.evaluate
    tiny = [o for o in TINY_RUN if o.startswith(("model.", "data."))]

    def train(config, overrides=(), **kw):
        kw["train.iters"] = 4
        return real_train(config, [*overrides, *TINY_RUN], **kw)

    monkeypatch.setattr(rc2l, "train", train)
    monkeypatch.setattr(rc2l, "evaluate", lambda c, w, **kw: real_eval(c, w, overrides=tiny, **kw))
    ns: dict = {}
    with TorchSettings():
        exec(compile(_readme_example(), "README.md (Python API)", "exec"), ns)
    assert ns["pred"].shape == (300, 400) and ns["conf"].shape == (300, 400)
    assert [p.shape for p in ns["preds"]] == [(96, 80), (300, 400)]
    assert ns["model"].classes[0] == "background" and np.isfinite(ns["record"]["miou"])
    assert (tmp_path / "runs" / "api" / "best.safetensors").is_file()
