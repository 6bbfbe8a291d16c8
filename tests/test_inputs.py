"""Inputs people actually have: EXIF-rotated JPEGs, 16-bit PNGs, RGBA / palette / grey / CMYK,
very large images (sliding window, said in the log), and folders with files predict skips."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rc2l
from rc2l.data.imageio import read_image

from infer_helpers import cli, synthetic_image, tiny_run


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return rc2l.load(tiny_run(tmp_path_factory) / "best.safetensors", device="cpu")


def _scene(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_exif_rotated_jpeg_is_turned_upright(model, tmp_path):
    """Orientation 6 ('rotate 90° clockwise to display'): stored 64 wide × 48 high, shown and
    predicted 48 wide × 64 high."""
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_scene()).save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        stored = np.array(im)
    upright = read_image(path)
    assert stored.shape == (48, 64, 3) and upright.shape == (64, 48, 3)
    assert (upright == np.rot90(stored, k=-1)).all()
    assert model.predict(path).shape == (64, 48)
    code, _, stderr = cli(
        ["predict", "--weights", model.info.source, str(path), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    assert code == 0, stderr
    assert Image.open(tmp_path / "o" / "phone.png").size == (48, 64)


def _png48(path: Path, a: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_16_bit_pngs_are_scaled_not_clipped(model, tmp_path):
    grey = np.linspace(256, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)  # every value > 255
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")  # really a 16-bit file
        assert (np.array(im.convert("RGB")) == 255).mean() > 0.99  # what a plain convert does: clipped
    got = read_image(tmp_path / "g16.png")
    want = np.rint(grey / 65535 * 255).astype(np.uint8)
    assert got.dtype == np.uint8 and (got == want[..., None]).all()
    rgb16 = (_scene().astype(np.uint16) * 257) + np.uint16(100)
    _png48(tmp_path / "rgb48.png", rgb16)
    assert np.abs(read_image(tmp_path / "rgb48.png").astype(int) - (rgb16 / 65535 * 255)).max() <= 1
    assert (model.predict(grey) == model.predict(tmp_path / "g16.png")).all()  # a uint16 array is scaled the same


def test_rgba_palette_grey_cmyk(model, tmp_path):
    rgb = synthetic_image(tmp_path / "rgb.png", 64, 64, 3)
    im = Image.fromarray(rgb)
    rgba = np.dstack([rgb, np.full((64, 64), 255, np.uint8)])
    rgba[:8, :8, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(tmp_path / "pal.png")
    im.convert("L").save(tmp_path / "grey.png")
    im.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    got = read_image(tmp_path / "rgba.png")
    assert (got[:8, :8] == 255).all() and (got[8:, 8:] == rgb[8:, 8:]).all()  # transparent → white
    assert (read_image(tmp_path / "pal.png") == np.array(Image.open(tmp_path / "pal.png").convert("RGB"))).all()
    grey = read_image(tmp_path / "grey.png")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == np.array(im.convert("L"))).all()
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (64, 64, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 20
    code, stdout, stderr = cli(
        ["predict", "--weights", model.info.source, str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]
    )
    assert code == 0 and "5 written, 0 failed" in stdout, stderr
    assert model.predict(rgba).shape == (64, 64)  # an H×W×4 array too


def test_large_image_goes_through_the_window_and_says_so(model, caplog):
    """Above max_pixels even 'original' mode uses the sliding window (bounded memory), with one
    log line; below it, one pass."""
    calls = []
    real = model.score_fn
    model.score_fn = lambda x: calls.append(tuple(x.shape)) or real(x)
    try:
        img = _scene(100, 140, 1)
        with caplog.at_level(logging.INFO, logger="rc2l.predict"):
            pred = model.predict(img, mode="original", max_pixels=64 * 64)
        assert pred.shape == (100, 140)
        assert len(calls) > 1 and set(calls) == {(1, 3, 64, 64)}
        assert any(
            "100x140 is 0.014 MP, above 0.0041 MP: sliding window 64x64 to bound memory" in r.getMessage()
            for r in caplog.records
        )
        calls.clear()
        model.predict(img, mode="original")
        assert calls == [(1, 3, 100, 140)]
    finally:
        model.score_fn = real


def test_folder_names_what_it_skips(model, tmp_path):
    """.gif and .tiff are read by PIL and predicted; a .heic and a .txt are named in one note."""
    src = tmp_path / "in"
    src.mkdir()
    synthetic_image(src / "a.png", 64, 64, 0)
    Image.fromarray(synthetic_image(tmp_path / "x.png", 64, 64, 1)).save(src / "b.gif")
    Image.fromarray(synthetic_image(tmp_path / "y.png", 64, 64, 2)).save(src / "c.tiff")
    (src / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (src / "notes.txt").write_text("x")
    code, stdout, stderr = cli(
        ["predict", "--weights", model.info.source, str(src), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    assert code == 0 and "3 written, 0 failed" in stdout, stderr
    notes = [ln for ln in stderr.splitlines() if "skipped" in ln]
    assert len(notes) == 1 and notes[0].startswith(f"note: {src}: skipped 2 file(s)"), stderr
    assert "1 .heic, 1 .txt" in notes[0] and ".gif" in notes[0]  # what and why (the supported list)
    assert {p.name for p in (tmp_path / "o").glob("?.png")} == {"a.png", "b.png", "c.png"}
