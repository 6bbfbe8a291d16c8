"""Images → semantic scores at the input size: the training resize, the whole image or the
field's sliding window (window = training crop, stride 2/3), and back to H×W.

The sliding window also bounds the network's memory on very large images: above
``MAX_WHOLE_PIXELS`` an image is never sent through in one piece, and the log says so.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as Fn
from torch import Tensor

from rc2l.infer.loading import InferInfo

log = logging.getLogger("rc2l.predict")

MODES = ("auto", "original", "sliding_window")
MAX_WHOLE_PIXELS = 2048 * 2048  # larger images always go through the sliding window
LARGE_WINDOW = (1024, 1024)  # the window for them when the model has no training crop


def to_uint8_tensor(rgb) -> Tensor:
    """uint8 (H, W, 3) numpy → uint8 (3, H, W)."""
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def choose_window(
    h: int, w: int, info: InferInfo, mode: str = "auto", max_pixels: int = MAX_WHOLE_PIXELS
) -> tuple[int, int] | None:
    """The window for an (h, w) model input, None = one whole-image pass.

    auto: the window when the image is larger than it; original: the whole image;
    sliding_window: always the window. Any mode: above ``max_pixels`` a window is used."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    win = info.window
    if mode == "sliding_window":
        return win or LARGE_WINDOW
    if mode == "auto" and win and (h > win[0] or w > win[1]):
        return win
    if h * w > max_pixels:
        return win or LARGE_WINDOW
    return None


def predict_batch(
    score_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    info: InferInfo,
    stride_ratio: float = 2 / 3,
    device: torch.device | str = "cpu",
    mode: str = "auto",
    max_pixels: int = MAX_WHOLE_PIXELS,
    name: str = "",
) -> Tensor:
    """images: uint8 (B, 3, H, W), all the same size → scores (B, K, H, W) float32 on the CPU.

    Resized to ``info.resize`` first if set (as in training), scores bilinearly back to H×W.
    With a window (see :func:`choose_window`) each image goes through ``sliding_window`` on
    its own; otherwise the batch is one forward pass."""
    from torchvision.transforms.v2 import functional as TF
    from torchvision.transforms.v2.functional import InterpolationMode

    from rc2l.engine.evaluate import sliding_window

    h0, w0 = images.shape[-2:]
    x = images
    if info.resize and tuple(x.shape[-2:]) != tuple(info.resize):
        x = TF.resize(x, list(info.resize), interpolation=InterpolationMode.BILINEAR, antialias=True)
    x = x.to(device).float().div_(255.0)
    h, w = x.shape[-2:]
    win = choose_window(h, w, info, mode, max_pixels)
    if win and h * w > max_pixels and mode != "sliding_window":
        log.info(
            "%s%dx%d is %.3g MP, above %.3g MP: sliding window %dx%d to bound memory",
            f"{name}: " if name else "",
            h,
            w,
            h * w / 1e6,
            max_pixels / 1e6,
            win[0],
            win[1],
        )
    if win:
        scores = torch.cat(
            [sliding_window(score_fn, x[i : i + 1], win, stride_ratio, info.num_classes) for i in range(x.shape[0])]
        )
    else:
        scores = score_fn(x).float()
    if (h, w) != (h0, w0):
        scores = Fn.interpolate(scores, size=(h0, w0), mode="bilinear", align_corners=False)
    return scores.cpu()


def confidence(scores: Tensor) -> Tensor:
    """scores S (…, K, H, W) ≥ 0 → max_k S_k / Σ_k S_k in [0, 1], (…, H, W)."""
    s = scores.clamp_min(0)
    return s.max(-3).values / s.sum(-3).clamp_min(1e-12)
