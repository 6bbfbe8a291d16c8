import torch
from torchvision import tv_tensors

from rc2l.data import transforms as T


def _pair(h=10, w=12, seed=0):
    """Image whose red channel encodes the mask (red = 20 * label), so alignment is checkable."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 5, (h, w), generator=g, dtype=torch.uint8)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    image[0] = mask * 20
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def test_train_output_format_and_alignment():
    image, mask = _pair()
    t = T.TrainTransform(crop_size=[8, 8], scale_range=[1.0, 1.0])
    for seed in range(20):
        torch.manual_seed(seed)
        out = t(image, mask)
        assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 8, 8)
        assert out["mask"].dtype == torch.int64 and out["mask"].shape == (8, 8)
        assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
        assert torch.equal((out["image"][0] * 255).round().long(), out["mask"] * 20)


def test_flip_and_crop_move_a_marked_pixel_identically():
    h, w = 9, 11
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    mask = torch.zeros(h, w, dtype=torch.uint8)
    image[:, 2, 3] = 255
    mask[2, 3] = 1
    t = T.TrainTransform(crop_size=[h, w], scale_range=[1.0, 1.0])
    cols = set()
    for seed in range(16):
        torch.manual_seed(seed)
        out = t(tv_tensors.Image(image), tv_tensors.Mask(mask))
        ((my, mx),) = (out["mask"] == 1).nonzero().tolist()
        ((iy, ix),) = (out["image"][0] == 1).nonzero().tolist()
        assert (my, mx) == (iy, ix) == (2, mx)
        cols.add(mx)
    assert cols == {3, w - 1 - 3}  # both flipped and unflipped happen


def test_random_scale_keeps_a_block_aligned():
    image = torch.zeros(3, 24, 24, dtype=torch.uint8)
    mask = torch.zeros(24, 24, dtype=torch.uint8)
    image[:, 5:13, 9:17] = 255
    mask[5:13, 9:17] = 1
    t = T.TrainTransform(crop_size=[20, 20], scale_range=[0.5, 2.0])
    for seed in range(10):
        torch.manual_seed(seed)
        out = t(tv_tensors.Image(image), tv_tensors.Mask(mask))
        m, im = out["mask"] == 1, out["image"][0] > 0.5
        if m.sum() < 4:
            continue
        cm = m.nonzero().float().mean(0)
        ci = im.nonzero().float().mean(0)
        assert (cm - ci).abs().max() <= 1.0


def test_padding_fills_mask_with_ignore_and_image_with_zero():
    image, mask = _pair(6, 5)
    image = tv_tensors.Image(image.clamp(min=1))  # no real pixel is 0
    torch.manual_seed(0)
    out = T.TrainTransform(crop_size=[8, 9], scale_range=[1.0, 1.0])(image, mask)
    pad = out["mask"] == 255
    assert pad.sum() == 8 * 9 - 6 * 5
    assert (out["image"][:, pad] == 0).all() and (out["image"][:, ~pad] > 0).all()


def test_unlabeled_views_share_geometry_and_mark_padding(monkeypatch):
    image, _ = _pair(6, 5)
    t = T.UnlabeledTransform(crop_size=[8, 9], scale_range=[1.0, 1.0])
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out = t(image)
        assert set(out) == {"image_w", "image_s", "valid"}
        assert out["image_w"].shape == out["image_s"].shape == (3, 8, 9)
        assert out["valid"].dtype == torch.bool and out["valid"].sum() == 30
        assert (out["image_w"][:, ~out["valid"]] == 0).all()
        assert 0 <= out["image_s"].min() and out["image_s"].max() <= 1
        changed += not torch.allclose(out["image_s"], out["image_w"])
    assert changed >= 7  # p(no jitter, no gray, no blur) = 0.2 * 0.8 * 0.5
    monkeypatch.setattr(T, "strong_photometric", lambda x: x)
    torch.manual_seed(0)
    out = t(image)
    assert torch.equal(out["image_s"], out["image_w"])


def test_same_seed_same_output():
    image, mask = _pair(20, 20)
    t = T.UnlabeledTransform(crop_size=[12, 12])
    torch.manual_seed(3)
    a = t(image)
    torch.manual_seed(3)
    b = t(image)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_transform_resizes_only():
    image, mask = _pair(10, 12)
    out = T.EvalTransform()(image, mask)
    assert torch.equal(out["image"], image.float() / 255) and torch.equal(out["mask"], mask.long())
    out = T.EvalTransform(resize=[5, 7])(image, mask)
    assert out["image"].shape == (3, 5, 7) and out["mask"].shape == (5, 7)
    assert set(out["mask"].unique().tolist()) <= set(mask.unique().tolist())  # nearest: no new labels


def test_cutmix_boxes():
    g = torch.Generator().manual_seed(0)
    none = T.cutmix_boxes(8, 16, 20, p=0.0, generator=g)
    assert none.shape == (8, 16, 20) and none.dtype == torch.bool and not none.any()
    boxes = T.cutmix_boxes(50, 32, 40, p=1.0, generator=g)
    for b in boxes:
        ys, xs = b.nonzero(as_tuple=True)
        area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert b.sum() == area  # one solid rectangle
        assert 0.01 <= area / (32 * 40) <= 0.41
    half = T.cutmix_boxes(400, 8, 8, p=0.5, generator=g).flatten(1).any(1).float().mean()
    assert 0.4 < half < 0.6
    a = T.cutmix_boxes(4, 16, 16, 0.5, torch.Generator().manual_seed(7))
    b = T.cutmix_boxes(4, 16, 16, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
