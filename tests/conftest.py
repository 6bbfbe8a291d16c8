"""Shared test fixtures. Each section belongs to one package; keep sections self-contained."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tests use tiny tensors: one intra-op thread each avoids OpenMP oversubscription on small
# machines (CI has 2 cores) and makes timings of the suite predictable.
torch.set_num_threads(int(os.environ.get("RC2L_TEST_THREADS", "1")))

# The suite's training tests hold up to ~2.9 GB of checkpoints under the temp directory at once
# (two workers; measured with `make test`). Too little room fails dozens of tests at setup with
# errors that do not say why; say it once, before any test runs.
SUITE_DISK_BYTES = 35 * 10**8


def pytest_sessionstart(session: pytest.Session) -> None:
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free
    if free < SUITE_DISK_BYTES:
        pytest.exit(
            f"{tmp}: {free / 1e9:.1f} GB free, the test suite needs {SUITE_DISK_BYTES / 1e9:.1f} GB "
            "(free space or set TMPDIR to a larger disk)",
            returncode=1,
        )


# hypothesis keeps its example database under .pytest_cache (git-ignored), not in .hypothesis/
try:
    from hypothesis import settings as _hyp_settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    _hyp_settings.register_profile(
        "rc2l",
        database=DirectoryBasedExampleDatabase(
            str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "hypothesis")
        ),
    )
    _hyp_settings.load_profile("rc2l")
except ImportError:  # only tests/test_properties.py needs it (dev extra)
    pass

# =============================================================================================
# rc2l.data — tiny datasets written into tmp_path in the exact real on-disk layouts.
# Every image is H x W = 12 x 16 unless said; pixel values come from a seeded RNG so tests can
# compare what a reader returns with what was written.
# =============================================================================================

DATA_H, DATA_W = 12, 16


def data_rgb(seed: int, h: int = DATA_H, w: int = DATA_W) -> np.ndarray:
    """Random uint8 image (h, w, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def data_labels(seed: int, values: list[int], h: int = DATA_H, w: int = DATA_W) -> np.ndarray:
    """uint8 (h, w) label map drawing from ``values``; every value appears at least once."""
    m = np.random.default_rng(seed).choice(np.array(values, np.uint8), (h, w))
    m.ravel()[: len(values)] = values
    return m


def data_save_palette_png(path: Path, labels: np.ndarray) -> None:
    """A VOC-style palette ('P') PNG whose indices are the labels."""
    from rc2l.data.formats import voc_palette

    im = Image.fromarray(labels, mode="P")
    im.putpalette([c for rgb in voc_palette(256) for c in rgb])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def data_save(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def data_write_camvid(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """camvid/images/<split>/<stem>.webp (lossless), labels/<split>/<stem>.png (L, 0..11),
    splits/<split>.txt (stems)."""
    for split, n, off in (("train", n_train, 0), ("val", n_val, 1000)):
        stems = [f"0001TP_{off + i:06d}" for i in range(n)]
        for i, stem in enumerate(stems):
            data_save(root / "images" / split / f"{stem}.webp", data_rgb(off + i), lossless=True, quality=100)
            data_save(root / "labels" / split / f"{stem}.png", data_labels(off + i, list(range(12))))
        (root / "splits").mkdir(parents=True, exist_ok=True)
        (root / "splits" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    return root


@pytest.fixture
def data_camvid(tmp_path) -> Path:
    return data_write_camvid(tmp_path / "camvid")


@pytest.fixture
def data_voc(tmp_path) -> Path:
    """VOCdevkit/VOC2012 with JPEGImages, palette SegmentationClass (train 2007_00000{0,1},
    val 2007_000002), SBD SegmentationClassAug (L mode) for 2008_00000{0,1} and the
    train ids, ImageSets/Segmentation/{train,val}.txt and ImageSets/SegmentationAug/train_aug.txt.
    Returns the folder *containing* VOCdevkit."""
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    official = ["2007_000000", "2007_000001", "2007_000002"]
    aug_only = ["2008_000000", "2008_000001"]
    for i, x in enumerate(official + aug_only):
        data_save(voc / "JPEGImages" / f"{x}.jpg", data_rgb(i), quality=95)
        labels = data_labels(i, [0, 5, 20, 255])
        if x in official:
            data_save_palette_png(voc / "SegmentationClass" / f"{x}.png", labels)
        if x not in official[2:]:
            data_save(voc / "SegmentationClassAug" / f"{x}.png", labels)  # SBD Aug: plain L mode
    seg = voc / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("2007_000000\n2007_000001\n")
    (seg / "val.txt").write_text("2007_000002\n")
    (voc / "ImageSets" / "SegmentationAug").mkdir()
    (voc / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text("\n".join(official[:2] + aug_only) + "\n")
    return tmp_path / "voc"


DATA_CS_LABEL_IDS = [0, 7, 26, 33, 5]  # → trainIds 255, 0, 13, 18, 255


@pytest.fixture
def data_cityscapes(tmp_path) -> Path:
    """leftImg8bit/{train,val}/<city>/<x>_leftImg8bit.png + gtFine/.../<x>_gtFine_labelIds.png."""
    root = tmp_path / "cityscapes"
    for split, cities in (("train", ["aachen", "bremen"]), ("val", ["frankfurt"])):
        for j, city in enumerate(cities):
            base = f"{city}_000000_{j:06d}"
            data_save(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png", data_rgb(j))
            data_save(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", data_labels(j, DATA_CS_LABEL_IDS))
    return root


@pytest.fixture
def data_folder(tmp_path) -> Path:
    """A user's folder: images/{a.jpg, b.png, c.webp}, masks/{a,b}.png (c is unlabeled),
    classes.txt with 3 classes."""
    root = tmp_path / "mine"
    data_save(root / "images" / "a.jpg", data_rgb(0))
    data_save(root / "images" / "b.png", data_rgb(1))
    data_save(root / "images" / "c.webp", data_rgb(2), lossless=True)
    data_save(root / "masks" / "a.png", data_labels(0, [0, 1, 2, 255]))
    data_save(root / "masks" / "b.png", data_labels(1, [0, 2]))
    (root / "classes.txt").write_text("background 0 0 0\nred car 255 0 0\n# a comment\ntree 0 128 0\n")
    return root


def data_config(**data):
    """A Config whose data section has the given keys (plus method=..., if passed).

    With a root and no splits_dir, splits_dir points next to the root at a folder that does
    not exist, so the repository's splits/<name> never leak into a fixture dataset."""
    from rc2l.config import Config

    cfg = Config()
    if "method" in data:
        cfg.method = data.pop("method")
    if data.get("root") and "splits_dir" not in data:
        data["splits_dir"] = str(Path(data["root"]).parent / "no_splits_here")
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


# =============================================================================================
# Prerequisites outside the repository (shared data, Chromium): skip with the reason on a
# developer machine, fail in CI (helpers.missing).
# =============================================================================================


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid under the shared data folder (helpers.shared_dataset)."""
    from helpers import shared_dataset

    return shared_dataset("camvid")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium executable (installed by ``make chromium``, not by a test)."""
    from helpers import chromium_exe

    return chromium_exe()
