"""The three eval modes on images LARGER than the crop, with score functions that reveal
where each window came from, so a misplaced window, wrong stitching or a crop of the mask
that does not match the crop of the image is visible (test_evaluate.py covers the case of a
crop that fits the image)."""

from __future__ import annotations

import pytest
import torch

from rc2l.engine.evaluate import center_crop, evaluate, predict_scores, sliding_window

H, W = 61, 50  # neither a multiple of the crop nor of the stride
CROP = (24, 20)


def position_image(h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w): channel 0 = row / h, channel 1 = column / w, channel 2 random."""
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) / h
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) / w
    noise = torch.rand(h, w, generator=torch.Generator().manual_seed(seed))
    return torch.stack([ys, xs, noise])[None]


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """Translation-equivariant (a function of each pixel alone), so its scores on a window are
    the full-image scores of those pixels; on a position-coded image they say which pixel."""
    return torch.stack([torch.sin(7 * x[:, 0]) + x[:, 2], x[:, 1] ** 2, x[:, 0] * x[:, 1] - x[:, 2]], 1)


def window_coords(x: torch.Tensor) -> torch.Tensor:
    """NOT equivariant: the row and column inside the window (and a constant 1)."""
    _, _, h, w = x.shape
    r = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    c = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return torch.stack([r, c, torch.ones(h, w)])[None].expand(x.shape[0], -1, -1, -1)


def test_sliding_window_reproduces_full_image_scores_of_a_pointwise_fn():
    img = position_image()
    full = pointwise(img)
    for crop, ratio in ((CROP, 2 / 3), ((17, 13), 0.5), ((60, 7), 1.0), ((H, W), 2 / 3), ((100, 100), 2 / 3)):
        sw = predict_scores(pointwise, img, "sliding_window", crop, ratio, 3)
        assert sw.shape == (1, 3, H, W)
        assert torch.allclose(sw, full, atol=1e-6), (crop, ratio)


def _expected_window_mean(n: int, crop: int, ratio: float) -> torch.Tensor:
    """Mean local coordinate along one axis over the windows covering each position: windows
    start at 0, s, 2s, ... (s = ceil(crop · ratio)) and one more flush with the border."""
    import math

    c = min(crop, n)
    s = max(1, math.ceil(c * ratio))
    starts = list(range(0, n - c + 1, s))
    if starts[-1] + c < n:
        starts.append(n - c)
    tot, cnt = torch.zeros(n), torch.zeros(n)
    for y0 in starts:
        tot[y0 : y0 + c] += torch.arange(c, dtype=torch.float32)
        cnt[y0 : y0 + c] += 1
    return tot / cnt


def test_sliding_window_places_windows_and_averages_overlaps():
    # by hand, 11 rows, window 4, stride 2: windows start at 0, 2, 4, 6 and 7 (flush)
    img = torch.zeros(1, 3, 11, 5)
    sw = sliding_window(window_coords, img, (4, 5), 0.5, 3)
    rows = sw[0, 0, :, 0]
    assert rows[0] == 0 and rows[1] == 1  # only the first window covers rows 0-1
    assert rows[2] == pytest.approx((2 + 0) / 2)  # windows 0 and 2
    assert rows[7] == pytest.approx((3 + 1 + 0) / 3)  # windows 4, 6, 7
    assert rows[10] == 3  # only the flush window 7 covers the last row
    assert torch.equal(sw[0, 1, 0], torch.arange(5, dtype=torch.float32))  # one window across
    assert torch.equal(sw[0, 2], torch.ones(11, 5))  # every pixel covered, counts divided out
    # in general, both axes
    img = position_image()
    for crop, ratio in ((CROP, 2 / 3), ((17, 13), 0.5)):
        sw = sliding_window(window_coords, img, crop, ratio, 3)
        assert torch.allclose(sw[0, 0, :, 0], _expected_window_mean(H, crop[0], ratio))
        assert torch.allclose(sw[0, 1, 0, :], _expected_window_mean(W, crop[1], ratio))


def test_center_crop_takes_the_middle_window():
    img = position_image()
    scores = predict_scores(pointwise, img, "center_crop", CROP, 2 / 3, 3)
    y0, x0 = (61 - 24) // 2, (50 - 20) // 2  # 18, 15
    assert scores.shape == (1, 3, 24, 20)
    assert torch.equal(scores, pointwise(img[..., y0 : y0 + 24, x0 : x0 + 20]))
    assert torch.equal(center_crop(img, CROP)[0, :2, 0, 0], torch.tensor([18 / 61, 15 / 50]))
    # a crop larger than the image along one axis is clipped to it
    assert center_crop(img, (100, 20)).shape[-2:] == (61, 20)


class Oracle(torch.nn.Module):
    """A 'model' that reads the class of every pixel off the image (channel 0 = class / 10):
    right wherever the scores it returns are put back where they belong."""

    def semantic_scores(self, x: torch.Tensor) -> torch.Tensor:
        cls = (x[:, 0] * 10).round().long()
        return torch.nn.functional.one_hot(cls, 4).permute(0, 3, 1, 2).float()


def _batches(shift: int = 0):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        mask = torch.randint(0, 4, (1, H, W), generator=g)
        image = torch.zeros(1, 3, H, W)
        image[:, 0] = mask.float() / 10
        mask = mask.clone()
        mask[:, ::7] = 255  # some ignored pixels
        out.append({"image": image, "mask": torch.roll(mask, shift, dims=-1)})
    return out


@pytest.mark.parametrize("mode, pixels", [("original", H * W), ("center_crop", 24 * 20), ("sliding_window", H * W)])
def test_evaluate_modes_on_an_image_larger_than_the_crop(mode, pixels):
    batches = _batches()
    ignored = sum(
        int((center_crop(b["mask"][0], CROP) if mode == "center_crop" else b["mask"][0]).eq(255).sum()) for b in batches
    )
    res = evaluate(Oracle(), batches, 4, mode, CROP, 2 / 3)
    assert res["miou"] == pytest.approx(100.0) and res["mode"] == mode and res["crop"] == list(CROP)
    assert res["pixels"] == 2 * pixels - ignored
    # the same oracle against masks shifted by one column: the comparison can fail
    assert evaluate(Oracle(), _batches(shift=1), 4, mode, CROP, 2 / 3)["miou"] < 50
