"""Crop padding is no image: whatever the student predicts on padded pixels changes no
region loss and no matching cost (issue 17, bug 1)."""

import torch

from rc2l.config import SemiConfig
from rc2l.losses.region import RegionLosses

from test_region_losses import scene


def _targets(regions, real):
    B = real.shape[0]
    label = torch.zeros(B, *real.shape[-2:], dtype=torch.int64)
    return {"regions": regions, "label": label, "valid": real.clone(), "real": real}


def test_padding_pixels_change_no_region_loss_and_no_matching():
    student, regions, _ = scene()
    real = torch.ones(2, 8, 8, dtype=torch.bool)
    real[:, :, 6:] = False  # the last two columns are crop padding
    for r in regions:  # teacher regions never cover padding (query_regions cuts them)
        r["masks"] = r["masks"] * real[0]
    rl = RegionLosses(SemiConfig(region_pixels="all", smc=0.0), feat_dim=8)
    ref = rl(student, _targets(regions, real))
    ref_match = rl.match(student, regions, real)
    noisy = {k: v.detach().clone() for k, v in student.items()}
    g = torch.Generator().manual_seed(1)
    noise = 20 * torch.randn(noisy["pred_masks"].shape, generator=g)
    noisy["pred_masks"] = torch.where(real[:, None], noisy["pred_masks"], noise)  # garbage on padding only
    noisy["pixel_feats"] = torch.where(
        real[:, None], noisy["pixel_feats"], 50 * torch.randn(noisy["pixel_feats"].shape, generator=g)
    )
    out = rl(noisy, _targets(regions, real))
    for k in ("rmc", "rfc", "rcc"):
        assert torch.allclose(out[k], ref[k], atol=1e-5), (k, out[k], ref[k])
    got_match = rl.match(noisy, regions, real)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got_match, ref_match))
    # without the padding mask the same garbage does change the losses: the test can fail
    bare = _targets(regions, real)
    del bare["real"]
    assert not torch.allclose(rl(noisy, bare)["rmc"], rl(student, bare)["rmc"], atol=1e-5)
