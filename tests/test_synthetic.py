import numpy as np
import torch
from conftest import data_config

from rc2l.config import SyntheticConfig
from rc2l.data.build import build_datasets, dataset_info
from rc2l.data.synthetic import CLASS_NAMES, NUM_CLASSES, PALETTE, SyntheticDataset, generate


def test_deterministic_and_distinct():
    a_img, a_mask = generate(0, "train", 3, 32)
    b_img, b_mask = generate(0, "train", 3, 32)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, generate(1, "train", 3, 32)[0])  # other seed
    assert not np.array_equal(a_img, generate(0, "val", 3, 32)[0])  # val is not train
    assert not np.array_equal(a_img, generate(0, "train", 4, 32)[0])
    ds1, ds2 = SyntheticDataset(SyntheticConfig(5, 2, 16, 9)), SyntheticDataset(SyntheticConfig(5, 2, 16, 9))
    assert all(torch.equal(ds1[i]["image"], ds2[i]["image"]) for i in range(5))


def test_format_and_classes():
    assert len(CLASS_NAMES) == len(PALETTE) == NUM_CLASSES == 5
    seen = set()
    for i in range(30):
        img, mask = generate(0, "train", i, 40)
        assert img.shape == (40, 40, 3) and img.dtype == np.uint8
        assert mask.shape == (40, 40) and mask.dtype == np.uint8
        values = set(np.unique(mask).tolist())
        assert values <= set(range(5)) and len(values) >= 2
        seen |= values
    assert seen == set(range(5))


def _colour_hist(seed, split, n):
    """(64 colour bins, 5 classes) pixel counts; colours quantised to 4 levels per channel."""
    hist = np.zeros((64, 5))
    sums, counts = np.zeros((5, 3)), np.zeros(5)
    for i in range(n):
        img, mask = generate(seed, split, i, 32)
        q = (img // 64).astype(int)
        np.add.at(hist, ((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), mask.ravel()), 1)
        for c in range(5):
            sums[c] += img[mask == c].sum(0)
            counts[c] += (mask == c).sum()
    return hist, sums / counts[:, None]


def test_colour_does_not_predict_the_class():
    train, means = _colour_hist(0, "train", 300)
    # per-class mean colours are nearly equal (a uniform colour has mean 127.5, std 74)
    assert np.abs(means - means.mean(0)).max() < 20
    # a colour → shape-class lookup fitted on train does no better than always guessing the
    # most frequent shape on held-out images
    val, _ = _colour_hist(0, "val", 300)
    train, val = train[:, 1:], val[:, 1:]
    acc = val[np.arange(64), train.argmax(1)].sum() / val.sum()
    majority = val[:, train.sum(0).argmax()].sum() / val.sum()
    assert acc <= majority + 0.05


def test_random_access_without_hidden_state():
    """Each scene is a pure function of (seed, split, index, size) -- no state shared between
    calls -- so DataLoader workers and resumed runs draw the same images in any order. (Its
    speed, ~1 ms a 64 px scene, is a benchmark matter, not asserted here.)"""
    alone = generate(0, "train", 7, 64)
    for i in range(20):
        generate(0, "train", i, 64)
    again = generate(0, "train", 7, 64)
    assert np.array_equal(alone[0], again[0]) and np.array_equal(alone[1], again[1])
    assert alone[0].shape == (64, 64, 3) and alone[0].dtype == np.uint8 and alone[1].shape == (64, 64)


def test_build_synthetic_partitions():
    cfg = data_config(
        method="rc2l", split="1_4", crop_size=[32, 32], scale_range=[1.0, 2.0]
    )  # no padding: valid everywhere
    cfg.data.synthetic = SyntheticConfig(num_train=40, num_val=6, size=32, seed=1)
    ds = build_datasets(cfg, unlabeled_views=1)
    assert (len(ds["labeled"]), len(ds["unlabeled"]), len(ds["val"])) == (10, 30, 6)
    assert not set(ds["labeled"].indices) & set(ds["unlabeled"].indices)
    lab, unl, val = ds["labeled"][0], ds["unlabeled"][0], ds["val"][0]
    assert lab["image"].shape == (3, 32, 32) and lab["mask"].dtype == torch.int64
    assert set(unl) == {"image_w", "image_s", "valid", "id"} and unl["valid"].all()
    assert val["image"].dtype == torch.float32 and val["image"].max() <= 1 and val["id"] == "synthetic/val/00000"
    assert build_datasets(data_config(method="supervised", split="1_4"))["unlabeled"] is None
    full = build_datasets(data_config(method="rc2l", split="full"), unlabeled_views=1)
    assert full["unlabeled"] is None and len(full["labeled"]) == 200
    assert dataset_info(cfg).class_names == CLASS_NAMES
