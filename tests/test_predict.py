"""rc2l predict: inputs (folders, globs, corrupt files), outputs (palette PNG, overlay,
confidence), name collisions, batching and the sliding window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infer_helpers import cli, synthetic_image, tiny_run

K = 5  # synthetic classes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def model(run_dir):
    from rc2l.infer.loading import load_torch_model

    m, info, _ = load_torch_model(run_dir / "best.safetensors")
    return m, info


def test_folder_with_corrupt_file(run_dir, model, tmp_path):
    """Good images are all written, the corrupt one is named on stderr, exit status is 1."""
    src = tmp_path / "in"
    imgs = {
        "a": synthetic_image(src / "a.png", 64, 64, 0),
        "b": synthetic_image(src / "b.jpg", 64, 64, 1),
        "big": synthetic_image(src / "deep" / "big.png", 80, 120, 2),
    }
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (src / "notes.txt").write_text("not an image")  # ignored: not an image extension
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        [
            "predict",
            "--weights",
            str(run_dir / "best.safetensors"),
            str(src),
            "--out",
            str(out),
            "--confidence",
            "--batch-size",
            "2",
            "--no-progress",
        ]
    )
    assert code == 1
    err_lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "corrupt.png" in err_lines[0], stderr
    assert "3 written, 1 failed" in stdout
    names = {"a": out / "a", "b": out / "b", "big": out / "deep" / "big"}  # folder subpaths are kept
    for key, base in names.items():
        png = Image.open(f"{base}.png")
        assert png.mode == "P"
        pred = np.array(png)
        assert pred.shape == imgs[key].shape[:2]
        assert pred.max() < K
        ov = Image.open(f"{base}_overlay.png")
        assert ov.mode == "RGB" and ov.size == (imgs[key].shape[1], imgs[key].shape[0])
        conf = np.array(Image.open(f"{base}_conf.png"))
        assert conf.shape == pred.shape and conf.dtype == np.uint8
        assert conf.min() >= 255 // K - 1  # the max of K normalised scores is at least 1/K
    # a window-sized image: the written PNG is exactly the model's argmax on the whole image
    m, info = model
    x = torch.from_numpy(imgs["a"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = m.semantic_scores(x).argmax(1)[0].numpy()
    assert (np.array(Image.open(out / "a.png")) == want).all()
    # the overlay is the 50/50 blend of the image and the palette colour of the prediction
    pal = np.array(info.palette, np.float32)[want]
    blend = np.clip(imgs["a"].astype(np.float32) * 0.5 + pal * 0.5 + 0.5, 0, 255).astype(np.uint8)
    assert (np.array(Image.open(out / "a_overlay.png")) == blend).all()


def test_glob_and_name_collisions(run_dir, tmp_path):
    """A glob selects images; the same stem from two places gets a _2 suffix and a note."""
    for d in ("one", "two"):
        synthetic_image(tmp_path / d / "x.png", 64, 64, 3)
    synthetic_image(tmp_path / "one" / "y.png", 64, 64, 4)
    synthetic_image(tmp_path / "one" / "z.webp", 64, 64, 5)
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        [
            "predict",
            "--weights",
            str(run_dir / "best.safetensors"),
            str(tmp_path / "one" / "*.png"),
            str(tmp_path / "two"),
            str(tmp_path / "nothing*.png"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 1  # the empty glob is a failure
    assert "nothing*.png: no image matches" in stderr
    assert "3 written, 1 failed" in stdout
    assert sorted(p.name for p in out.glob("*.png")) == [
        "x.png",
        "x_2.png",
        "x_2_overlay.png",
        "x_overlay.png",
        "y.png",
        "y_overlay.png",
    ]
    assert "writing 'x_2.png' instead" in stderr


def test_missing_weights_is_one_error_line(tmp_path):
    synthetic_image(tmp_path / "a.png", 64, 64, 0)
    code, _, stderr = cli(
        [
            "predict",
            "--weights",
            str(tmp_path / "nope.safetensors"),
            str(tmp_path / "a.png"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert stderr.strip().splitlines()[-1] == f"error: weights file not found: {tmp_path / 'nope.safetensors'}"


def _counting(fn):
    calls = []

    def wrapped(x):
        calls.append(tuple(x.shape))
        return fn(x)

    return wrapped, calls


def test_sliding_window_matches_whole_image(model):
    """Window ≥ image → one forward pass, identical to the whole-image call; a smaller window
    → several window passes whose average equals the whole image for a per-pixel model."""
    from rc2l.infer.loading import InferInfo, torch_score_fn
    from rc2l.infer.scores import predict_batch

    m, info = model
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 72, 104), dtype=np.uint8))
    base = torch_score_fn(m, torch.device("cpu"))
    fn, calls = _counting(base)
    whole = InferInfo(K, info.class_names, info.palette, window=(96, 128))
    got = predict_batch(fn, imgs, whole)
    assert calls == [(2, 3, 72, 104)]  # batched, no windows
    with torch.no_grad():
        assert torch.equal(got, base(imgs.float() / 255))

    # a per-pixel "model": the sliding-window assembly must reproduce it exactly
    w = torch.randn(K, 3)
    per_pixel = lambda x: torch.einsum("kc,bchw->bkhw", w, x).sigmoid()  # noqa: E731
    fn, calls = _counting(per_pixel)
    small = InferInfo(K, info.class_names, info.palette, window=(64, 64))
    got = predict_batch(fn, imgs, small)
    assert len(calls) == 2 * 4 and set(calls) == {(1, 3, 64, 64)}  # per image: rows 0, 8 × cols 0, 40 (flush)
    torch.testing.assert_close(got, per_pixel(imgs.float() / 255), rtol=1e-5, atol=1e-6)

    # the real model through the sliding window: right shape, finite, and not the whole-image call
    fn, calls = _counting(base)
    got = predict_batch(fn, imgs[:1], small)
    assert got.shape == (1, K, 72, 104) and torch.isfinite(got).all() and len(calls) == 4


def test_resize_restores_the_input_size(model):
    """With a training resize the model sees the resized image; outputs come back at input size."""
    from rc2l.infer.loading import InferInfo, torch_score_fn
    from rc2l.infer.scores import predict_batch

    m, info = model
    fn, calls = _counting(torch_score_fn(m, torch.device("cpu")))
    imgs = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 3, 90, 130), dtype=np.uint8))
    got = predict_batch(fn, imgs, InferInfo(K, info.class_names, info.palette, window=(64, 64), resize=(64, 96)))
    assert got.shape == (1, K, 90, 130)
    assert set(calls) == {(1, 3, 64, 64)} and len(calls) == 2  # resized to 64×96 → two 64×64 windows


def test_name_assignment_avoids_derived_names():
    """An input named x_overlay cannot overwrite x's overlay."""
    from rc2l.infer.predict import assign_names

    jobs, notes = assign_names(
        [(Path("a/x.png"), "x"), (Path("b/x_overlay.png"), "x_overlay"), (Path("c/x.jpg"), "x")], confidence_maps=False
    )
    assert [j.name for j in jobs] == ["x", "x_overlay_2", "x_2"]
    assert len(notes) == 2


def test_window_option_and_config_override(run_dir, model, tmp_path):
    """--window 0 0 predicts the whole image in one pass; a config whose dataset has another
    class count is refused with one line naming it."""
    m, _ = model
    rgb = synthetic_image(tmp_path / "in" / "big.png", 80, 120, 6)
    out = tmp_path / "out"
    code, _, stderr = cli(
        [
            "predict",
            "--weights",
            str(run_dir / "best.safetensors"),
            str(tmp_path / "in"),
            "--out",
            str(out),
            "--window",
            "0",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0, stderr
    assert "window none (whole images)" in stderr
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = m.semantic_scores(x).argmax(1)[0].numpy()
    assert (np.array(Image.open(out / "big.png")) == want).all()

    camvid = Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml"
    code, _, stderr = cli(
        [
            "predict",
            "--weights",
            str(run_dir / "best.safetensors"),
            "--config",
            str(camvid),
            str(tmp_path / "in"),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith(f"error: {camvid}: dataset 'camvid' has 11 classes but")
