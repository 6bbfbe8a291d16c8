"""rc2l export: ONNX parity with PyTorch at several sizes (dynamic batch/height/width, sizes that
are not multiples of 32, TF "same" padding of EfficientNet-Lite0), metadata, and predict with
the ONNX backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infer_helpers import cli, fresh_weights, synthetic_image, tiny_run

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZES = [(1, 64, 64), (2, 72, 104)]  # 72×104: neither side a multiple of 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def resnet_onnx(run_dir, tmp_path_factory) -> tuple[Path, str]:
    """The trained ResNet-18 run exported through the CLI, with --check on a 72×104 image."""
    d = tmp_path_factory.mktemp("onnx")
    img = d / "check.png"
    synthetic_image(img, 72, 104, 7)
    path = d / "model.onnx"
    code, stdout, stderr = cli(
        ["export", "--weights", str(run_dir / "best.safetensors"), "--onnx", str(path), "--check", str(img)]
    )
    assert code == 0, stdout + stderr
    return path, stdout


def _images(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_resnet18_parity_and_metadata(run_dir, resnet_onnx):
    import onnx

    from rc2l.infer.export import check_parity
    from rc2l.infer.loading import load_torch_model

    path, stdout = resnet_onnx
    assert "check.png (1x3x72x104)" in stdout and stdout.count("-> ok") == 2, stdout
    model, info, _ = load_torch_model(run_dir / "best.safetensors")
    for i, (b, h, w) in enumerate(SIZES):
        r = check_parity(model, path, _images(b, h, w, i))
        assert r["max_abs_diff"] < 1e-3, r
        assert r["argmax_differ"] == 0, r
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["format"] == "rc2l-onnx-v1" and int(meta["num_classes"]) == 5
    assert json.loads(meta["class_names"]) == ["background", "disc", "square", "triangle", "ring"]
    assert json.loads(meta["crop_size"]) == [64, 64]
    from rc2l.engine.checkpoint import read_meta  # training stores the crop for predict/export

    assert json.loads(read_meta(run_dir / "best.safetensors")["crop_size"]) == [64, 64]
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_efficientnet_lite0_parity(tmp_path):
    """TF 'same' padding is computed from the input size: check sizes that pad differently."""
    from rc2l.infer.export import check_parity, export_onnx
    from rc2l.infer.loading import load_torch_model

    w = fresh_weights(tmp_path / "lite0.safetensors", "efficientnet_lite0", seed=1)
    model, info, _ = load_torch_model(w)
    path = tmp_path / "lite0.onnx"
    export_onnx(model, path)
    for i, (b, h, w_) in enumerate(SIZES + [(1, 33, 47)]):
        r = check_parity(model, path, _images(b, h, w_, 10 + i))
        assert r["max_abs_diff"] < 1e-3, (b, h, w_, r)
        assert r["argmax_differ"] == 0, (b, h, w_, r)


def test_compare_tells_ties_from_real_differences():
    from rc2l.infer.export import compare

    a = np.zeros((1, 3, 1, 2), np.float32)
    a[0, :, 0, 0] = [0.5, 0.5 + 1e-7, 0.1]  # a tie: argmax may flip
    a[0, :, 0, 1] = [0.9, 0.1, 0.0]
    b = a.copy()
    b[0, 1, 0, 0] -= 2e-7
    r = compare(a, b)
    assert r["argmax_differ"] == 1 and r["argmax_real_differ"] == 0 and r["ok"]
    b[0, 1, 0, 1] = 0.95  # a real flip and a large difference
    r = compare(a, b)
    assert r["argmax_real_differ"] == 1 and not r["ok"]


def test_predict_onnx_backend_matches_torch(run_dir, resnet_onnx, tmp_path):
    """Same PNGs from both backends (≤ 0.1% pixels may differ at near-ties), incl. a
    sliding-window image; class palette comes from the ONNX metadata."""
    path, _ = resnet_onnx
    src = tmp_path / "in"
    synthetic_image(src / "a.png", 64, 64, 0)
    synthetic_image(src / "b.png", 64, 64, 1)
    synthetic_image(src / "wide.png", 72, 150, 2)
    outs = {}
    for backend, weights in (("torch", run_dir / "best.safetensors"), ("onnx", path)):
        outs[backend] = tmp_path / backend
        code, stdout, stderr = cli(
            [
                "predict",
                "--weights",
                str(weights),
                str(src),
                "--out",
                str(outs[backend]),
                "--backend",
                backend,
                "--no-progress",
            ]
        )
        assert code == 0, stderr
        assert "3 written, 0 failed" in stdout
        assert f"backend {backend}" in stderr
    for name in ("a", "b", "wide"):
        t = Image.open(outs["torch"] / f"{name}.png")
        o = Image.open(outs["onnx"] / f"{name}.png")
        assert o.mode == "P" and t.getpalette() == o.getpalette()
        differ = (np.array(t) != np.array(o)).mean()
        assert differ <= 1e-3, (name, differ)


def test_export_refuses_a_non_rc2l_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not safetensors")
    code, _, stderr = cli(["export", "--weights", str(bad), "--onnx", str(tmp_path / "x.onnx")])
    assert code == 2 and stderr.strip().splitlines()[-1].startswith(f"error: {bad}:")
    assert not (tmp_path / "x.onnx").exists()
