"""The object ``rc2l.load`` returns: one segmenter (PyTorch or ONNX Runtime) with its classes
and palette, predicting on paths, PIL images or arrays at their own size."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from rc2l.data.imageio import as_rgb
from rc2l.errors import RC2LError
from rc2l.infer import loading
from rc2l.infer.loading import InferInfo
from rc2l.infer.scores import MAX_WHOLE_PIXELS, MODES, confidence, predict_batch, to_uint8_tensor


class Model:
    """A loaded model. ``predict(image)`` → class indices uint8 (H, W) at the image's size."""

    def __init__(
        self,
        score_fn: Callable[[Tensor], Tensor],
        info: InferInfo,
        backend: str,
        device: torch.device,
        module: torch.nn.Module | None = None,
    ):
        self.score_fn, self.info, self.backend, self.device = score_fn, info, backend, device
        self.module = module  # the torch Segmenter (None for ONNX)
        # ONNX Runtime takes and returns host arrays (its CUDA provider copies by itself)
        self.compute_device = device if backend == "torch" else torch.device("cpu")

    @property
    def classes(self) -> list[str]:
        return list(self.info.class_names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self.info.palette)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def __repr__(self) -> str:
        return f"rc2l.Model({self.info.source!r}, {self.num_classes} classes, {self.backend} on {self.device})"

    def scores(
        self,
        rgbs: list[np.ndarray],
        mode: str = "auto",
        stride_ratio: float = 2 / 3,
        max_pixels: int = MAX_WHOLE_PIXELS,
        name: str = "",
    ) -> Tensor:
        """uint8 (H, W, 3) arrays of one size → scores S (B, K, H, W) float32 on the CPU."""
        if mode not in MODES:
            raise RC2LError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 < stride_ratio <= 1:
            raise RC2LError(f"stride_ratio must be in (0, 1], got {stride_ratio}")
        batch = torch.stack([to_uint8_tensor(a) for a in rgbs])
        return predict_batch(self.score_fn, batch, self.info, stride_ratio, self.compute_device, mode, max_pixels, name)

    def predict(
        self,
        image,
        confidence: bool = False,
        mode: str = "auto",
        stride_ratio: float = 2 / 3,
        max_pixels: int = MAX_WHOLE_PIXELS,
    ):
        """image: a path, a PIL image or an H×W×3 uint8 array (grey, RGBA and 16-bit are converted).

        → class indices uint8 (H, W); with ``confidence=True`` also max_k S_k / Σ_k S_k float32
        (H, W). mode: 'auto' (sliding window when the image is larger than the training crop),
        'original' (one pass) or 'sliding_window'; above ``max_pixels`` always the window."""
        return self.predict_many([image], 1, confidence, mode, stride_ratio, max_pixels)[0]

    def predict_many(
        self,
        images: Iterable,
        batch_size: int = 4,
        confidence: bool = False,
        mode: str = "auto",
        stride_ratio: float = 2 / 3,
        max_pixels: int = MAX_WHOLE_PIXELS,
    ) -> list:
        """Like :meth:`predict` for each image, in input order; images of the same size go
        through the network ``batch_size`` at a time."""
        if batch_size < 1:
            raise RC2LError(f"batch_size must be >= 1, got {batch_size}")
        rgbs = [as_rgb(im, f"image {i}") for i, im in enumerate(images)]
        out: list = [None] * len(rgbs)
        for group in same_size_groups([a.shape[:2] for a in rgbs], batch_size):
            s = self.scores([rgbs[i] for i in group], mode, stride_ratio, max_pixels)
            preds = self.labels(s)
            confs = _confidence(s) if confidence else None
            for b, i in enumerate(group):
                out[i] = (preds[b], confs[b]) if confidence else preds[b]
        return out

    def labels(self, scores: Tensor) -> np.ndarray:
        """scores (B, K, H, W) → class indices (B, H, W), uint8 for up to 256 classes."""
        dtype = np.uint8 if self.num_classes <= 256 else np.int32
        return scores.argmax(1).numpy().astype(dtype)


def _confidence(scores: Tensor) -> np.ndarray:
    return confidence(scores).numpy().astype(np.float32)


def same_size_groups(sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal (H, W), at most ``batch_size`` per group, sizes sorted."""
    groups: list[list[int]] = []
    for i in sorted(range(len(sizes)), key=lambda i: (tuple(sizes[i]), i)):
        if groups and tuple(sizes[groups[-1][0]]) == tuple(sizes[i]) and len(groups[-1]) < batch_size:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def load(
    path: str | Path,
    config: str | Path | None = None,
    backend: str | None = None,
    device: str = "auto",
    window: tuple[int, int] | None = None,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> Model:
    """A .safetensors weights file, an exported .onnx file, a model folder, a run folder (its
    best.safetensors) or ``hf://owner/name[@revision]`` → a :class:`Model` with
    ``predict(image)``, ``predict_many(images)``, ``.classes`` and ``.palette``. ``config`` (a
    training YAML) overrides the stored classes, palette, crop and resize; ``backend`` "torch" or
    "onnx" (default: the file's kind); ``window`` (H, W) replaces the training crop as the sliding
    window, (0, 0) = whole images up to the memory bound; ``local_files_only`` and ``cache_dir``
    are for hf:// sources. Also ``rc2l.load``."""
    dev = loading.resolve_device(device)
    src = loading.resolve_source(path, local_files_only, cache_dir)
    backend = backend or src.kind
    if backend not in ("torch", "onnx"):
        raise RC2LError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    if backend == "onnx":
        if src.kind != "onnx":
            raise RC2LError(f"{src.file}: not an ONNX model (export one with rc2l export --onnx)")
        score_fn, info = loading.load_onnx(src.file, config, dev)
        module = None
    else:
        module, info, _ = loading.load_torch_model(src.file, config, dev, source=src)
        score_fn = loading.torch_score_fn(module, dev)
    if window is not None:
        info.window = None if window[0] <= 0 or window[1] <= 0 else (int(window[0]), int(window[1]))
    return Model(score_fn, info, backend, dev, module)
