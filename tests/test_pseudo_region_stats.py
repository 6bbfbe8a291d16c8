"""scripts/pseudo_region_stats.py: per-class precision / recall of the teacher's pseudo-regions."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pseudo_region_stats.py"
spec = importlib.util.spec_from_file_location("pseudo_region_stats", SCRIPT)
prs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prs)


def _image():
    """2 classes on a 4×4 grid: columns 0–1 are class 0, 2–3 class 1, row 0 unknown (255).
    Query 0: class 0 (p 0.95), mask = columns 0–1 (exact). Query 1: class 1 (p 0.6), mask =
    columns 1–3 (one column too wide). Query 2: "no object". The semantic output is unsure
    (0.5 / 0.5) on column 1 only."""
    gt = torch.tensor([[0, 0, 1, 1]] * 4)
    gt[0] = 255
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.3, 0.6, 0.1], [0.05, 0.05, 0.9]])
    masks = torch.full((3, 4, 4), -10.0)
    masks[0, :, :2] = 10.0
    masks[1, :, 1:] = 10.0
    sem = torch.zeros(1, 2, 4, 4)
    sem[0, 0, :, :2] = 1.0
    sem[0, 1, :, 2:] = 1.0
    sem[0, :, :, 1] = 0.5
    out = {
        "pred_logits": probs.log()[None],
        "pred_masks": masks[None],
        "sem_masks": sem,
        "pixel_feats": torch.randn(1, 8, 4, 4),
    }
    return out, gt


def test_precision_recall_per_class_and_threshold():
    out, gt = _image()
    score = prs.RegionScore(2, [0.7, 0.5])
    score.add(out, gt)
    t = score.table()
    # τ 0.7 keeps only query 0: class 0 exact, class 1 has no region
    assert (t[0][0.7]["regions_per_image"], t[0][0.7]["precision"], t[0][0.7]["recall"]) == (1.0, 100.0, 100.0)
    assert t[1][0.7]["regions_per_image"] == 0 and math.isnan(t[1][0.7]["precision"]) and t[1][0.7]["recall"] == 0
    # τ 0.5 also keeps query 1: 9 known pixels, 6 of them class 1, all 6 class-1 pixels covered
    assert t[1][0.5]["regions_per_image"] == 1.0
    assert t[1][0.5]["precision"] == pytest.approx(100 * 6 / 9)
    assert t[1][0.5]["recall"] == 100.0


def test_tau_pix_cuts_regions_to_confident_pixels():
    out, gt = _image()
    score = prs.RegionScore(2, [0.5], tau_pix=0.9)
    score.add(out, gt)
    t = score.table()
    assert t[1][0.5]["precision"] == 100.0  # the wrong column 1 is unsure and is cut away
    assert t[0][0.5]["recall"] == pytest.approx(50.0)  # ... which also halves class 0's coverage


def test_images_are_averaged():
    out, gt = _image()
    score = prs.RegionScore(2, [0.5])
    score.add(out, gt)
    score.add(out, torch.full_like(gt, 255))  # an image with no known pixel adds regions, not truth
    t = score.table()
    assert t[0][0.5]["regions_per_image"] == 1.0 and t[0][0.5]["recall"] == 100.0


def test_confusion_and_mask_score():
    out, gt = _image()
    score = prs.RegionScore(2, [0.5])
    score.add(out, gt)
    by_truth = score.table()[1][0.5]["pixels_by_truth"]
    assert by_truth == pytest.approx([100 * 3 / 9, 100 * 6 / 9])  # class-1 region: 3 of its 9 pixels are class 0
    out["pred_masks"][0, 1, :, 1] = 0.5  # the wrong column becomes unsure: σ ≈ 0.62 > 0.5, still in the mask
    strict = prs.RegionScore(2, [0.5], mask_score=0.9)
    strict.add(out, gt)
    t = strict.table()
    assert t[1][0.5]["regions_per_image"] == 0 and t[0][0.5]["regions_per_image"] == 1.0


def test_pixel_pseudo_labels_kept_precision_recall():
    """Per-pixel mode on a per-pixel model's logits: row 0 unknown; column 1 is class 0 but
    predicted class 1 with p ≈ 0.82 (kept at τ 0.7, dropped at τ 0.9); the rest is right with p ≈ 0.98."""
    gt = torch.tensor([[0, 0, 1, 1]] * 4)
    gt[0] = 255
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0, :, 0] = 4.0  # class 0, p ≈ 0.98
    logits[0, 1, :, 1] = 1.5  # class 1, p ≈ 0.82: wrong
    logits[0, 1, :, 2:] = 4.0  # class 1, right
    score = prs.PixelScore(2, [0.9, 0.7])
    score.add({"sem_logits": logits}, gt)
    t = score.table()
    # 12 known pixels; τ 0.7 keeps all: class 1 has 9 (6 right), class 0 has 3 (all right, 3 of its 6 true pixels)
    assert t[1][0.7]["kept"] == pytest.approx(75.0) and t[1][0.7]["precision"] == pytest.approx(100 * 6 / 9)
    assert t[0][0.7]["recall"] == pytest.approx(50.0) and t[1][0.7]["recall"] == 100.0
    # τ 0.9 drops the wrong column
    assert t[1][0.9]["kept"] == pytest.approx(50.0) and t[1][0.9]["precision"] == 100.0


def test_pixel_mode_reads_mask_classification_outputs():
    out, gt = _image()
    score = prs.PixelScore(2, [0.9])
    score.add(out, gt)
    t = score.table()
    # S̄ is 0.5/0.5 on column 1 (dropped), one-hot elsewhere: both classes exact on the rest
    assert t[0][0.9]["precision"] == 100.0 and t[0][0.9]["recall"] == pytest.approx(50.0)
    assert t[1][0.9]["kept"] == pytest.approx(50.0) and t[1][0.9]["recall"] == 100.0
