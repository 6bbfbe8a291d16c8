"""Shared by every test module: the repository's paths, the tiny model config, the shared data
(``<repo>/../shared/data``, or ``$RC2L_SHARED_DATA``) and the one rule for a missing
prerequisite: skip with the reason on a developer machine, fail with it in CI (``CI=true``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

from rc2l.losses.functional import normalize_semantic

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SYNTHETIC = str(CONFIGS / "synthetic.yaml")

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# ----------------------------------------------------------------------------- tiny model
# The one tiny MaskFormer the tests train: 8 queries, 32 channels, 2 decoder layers.
TINY_MODEL = dict(hidden_dim=32, mask_dim=32, num_queries=8, dec_layers=2, nheads=4, dim_feedforward=64)


def tiny_model_overrides(backbone: str = "resnet18", **changes) -> list[str]:
    """``model.*=...`` overrides for the tiny model (no pretrained weights); ``changes``
    replace or add model keys, e.g. ``tiny_model_overrides(dec_layers=1)``."""
    keys = {"pretrained": "none", "backbone": backbone, **TINY_MODEL, **changes}
    return [f"model.{k}={v}" for k, v in keys.items()]


def tiny_model_config(backbone: str = "resnet18", **changes):
    """The tiny model as a ``ModelConfig`` (for ``build_model``)."""
    from rc2l.config import ModelConfig

    return ModelConfig(**{"pretrained": "none", "backbone": backbone, **TINY_MODEL, **changes})


# ----------------------------------------------------------------------------- prerequisites
def missing(reason: str) -> None:
    """A prerequisite of this test is absent: skip saying why, or fail in CI (where every
    prerequisite is supposed to be set up, so a skip would hide a broken setup)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the test instead of skipping it)", pytrace=False)
    pytest.skip(reason)


def shared_data_root() -> Path:
    """``$RC2L_SHARED_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("RC2L_SHARED_DATA", "").strip()
    return Path(env).expanduser().resolve() if env else (REPO.parent / "shared" / "data").resolve()


def shared_dataset(name: str, probe: str = "splits/train.txt") -> Path:
    """``<shared data>/<name>``, checked to hold ``probe``; skips (fails in CI) when it does not."""
    root = shared_data_root() / name
    if not (root / probe).is_file():
        missing(
            f"shared dataset '{name}' not found: {root / probe} does not exist "
            f"(set RC2L_SHARED_DATA to the folder that holds {name}/)"
        )
    return root


CHROMIUM = Path("/usr/bin/chromium")  # where `make chromium` (apt) puts it


def chromium_exe() -> str:
    """The headless Chromium the report page is checked with (``make chromium`` installs it)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and CHROMIUM.exists():
        exe = str(CHROMIUM)
    if exe is None:
        missing("headless Chromium is needed to check the report page and is not installed; run: make chromium")
    return exe


# ----------------------------------------------------------------------------- operation count
def count_ops(fn) -> int:
    """Tensor operations one call of ``fn`` dispatches to the backend, backward included, views
    and aliases not counted (they only make metadata): on a GPU each of the others is at least
    one kernel launch. The count does not depend on the machine or its load."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not (func.is_view or func.__name__.startswith("lift_fresh")):
                self.n += 1
            return func(*args, **(kwargs or {}))

    counter = _Count()
    with counter:
        fn()
    return counter.n


# ----------------------------------------------------------------------------- teacher-side helpers
# Reference versions of what rc2l.engine.teacher does inline, for tests that compare with them.


def pseudo_label(sem_masks, eps: float = 1e-6):
    """sem_masks S^t: (B, K, h, w) → (Ŷ = argmax_k S̄^t, conf = max_k S̄^t), both (B, h, w)."""
    conf, label = normalize_semantic(sem_masks.detach(), eps).max(1)
    return label, conf


def downsample_box(box, size):
    """box (B, H, W) bool at image resolution → (B, h, w): a target pixel is in the box when at
    least half of the image pixels it covers are (area pooling)."""
    size = (int(size[0]), int(size[1]))
    if tuple(box.shape[-2:]) == size:
        return box.bool()
    return Fn.interpolate(box[:, None].float(), size=size, mode="area")[:, 0] >= 0.5


# ----------------------------------------------------------------------------- tiny per-pixel model
PP_K, PP_B, PP_S = 3, 2, 16  # classes, batch, image side of the tiny per-pixel model


class TinyPerPixel(nn.Module):
    """A 1×1 conv and 4×4 average pooling: stride-4 logits; records every call's input, FP rate
    and output."""

    per_pixel = True

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, PP_K, 1)
        self.calls = []

    def forward(self, x, fp_dropout=0.0):
        out = {"sem_logits": Fn.avg_pool2d(self.conv(x), 4)}
        if fp_dropout > 0:
            out["fp"] = {"sem_logits": Fn.avg_pool2d(self.conv(Fn.dropout2d(x, fp_dropout, training=True)), 4)}
        self.calls.append({"x": x.detach().clone(), "fp": fp_dropout, "out": out})
        return out

    def param_groups(self):
        return {"backbone": [], "head": list(self.parameters())}


def unimatch_batches(seed=0):
    """A labelled and an unlabelled batch (weak, two strong views, padding on image 1) for TinyPerPixel."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(PP_B, PP_S, PP_S, dtype=torch.bool)
    valid[1, :, 12:] = False  # padding on the second image
    lab = {
        "image": torch.rand(PP_B, 3, PP_S, PP_S, generator=g),
        "mask": torch.randint(0, PP_K, (PP_B, PP_S, PP_S), generator=g),
    }
    unl = {
        "image_w": torch.rand(PP_B, 3, PP_S, PP_S, generator=g),
        "image_s": torch.rand(PP_B, 3, PP_S, PP_S, generator=g),
        "image_s2": torch.rand(PP_B, 3, PP_S, PP_S, generator=g),
        "valid": valid,
    }
    return lab, unl
