"""DeepLabv3+ (the per-pixel segmenter) and the feature-perturbation branch of both models."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rc2l.config import ConfigError, ModelConfig, load_config
from rc2l.data.synthetic import NUM_CLASSES, generate
from rc2l.models.deeplabv3plus import DeepLabV3Plus
from rc2l.models.segmenter import Segmenter, build_model

from helpers import tiny_model_config


def tiny(backbone: str = "resnet18", **kw) -> ModelConfig:
    return ModelConfig(arch="deeplabv3plus", backbone=backbone, pretrained="none", aspp_dim=32, decoder_dim=32, **kw)


TINY_MASKFORMER = tiny_model_config()


def _capture_inputs(module: torch.nn.Module) -> list:
    """Record (copies of) the positional inputs of every call of ``module``; lists stay lists."""
    copy = lambda a: [t.detach().clone() for t in a] if isinstance(a, list) else a.detach().clone()  # noqa: E731
    seen = []
    module.register_forward_pre_hook(lambda _m, args: seen.append([copy(a) for a in args]))
    return seen


# ----------------------------------------------------------------------------- shapes and layout


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_logits_at_stride_4_and_scores_at_input_size(backbone):
    torch.manual_seed(0)
    model = build_model(5, tiny(backbone))
    assert isinstance(model, DeepLabV3Plus) and model.per_pixel and model.num_classes == 5
    x = torch.rand(2, 3, 64, 64)
    feats = model.backbone((x - model.mean) / model.std)
    assert feats[-1].shape[-2:] == (4, 4)  # output stride 16, not 32
    assert feats[0].shape[-2:] == (16, 16)
    out = model(x)
    assert set(out) == {"sem_logits"}
    assert out["sem_logits"].shape == (2, 5, 16, 16)
    model.eval()
    with torch.no_grad():
        scores = model.semantic_scores(torch.rand(1, 3, 50, 70))
    assert scores.shape == (1, 5, 50, 70)
    assert torch.allclose(scores.sum(1), torch.ones(1, 50, 70), atol=1e-5)  # probabilities


def test_param_groups_cover_everything_once():
    model = build_model(3, tiny())
    g = model.param_groups()
    assert {id(p) for p in g["backbone"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in g["head"]} == {id(p) for p in model.decoder.parameters()}
    assert len(g["backbone"]) + len(g["head"]) == len(list(model.parameters()))


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_dilation_rates_scale_with_output_stride(output_stride, rates):
    model = DeepLabV3Plus(3, tiny(), output_stride=output_stride)
    dil = [b[0].dilation[0] for b in model.decoder.aspp.branches]
    ks = [b[0].kernel_size[0] for b in model.decoder.aspp.branches]
    assert dil == [1, *rates] and ks == [1, 3, 3, 3]
    assert model.backbone.strides[-1] == output_stride
    out = model(torch.rand(1, 3, 64, 64))["sem_logits"]
    assert out.shape == (1, 3, 16, 16)


def test_aspp_rates_from_the_config():
    """model.aspp_rates (for output stride 16) sets the branches: as many as given, scaled to the stride."""
    cfg = load_config(overrides=["model.arch=deeplabv3plus", "model.aspp_rates=[2,4]", "model.pretrained=none"])
    assert cfg.model.aspp_rates == [2, 4]
    for output_stride, want in ((16, [1, 2, 4]), (8, [1, 4, 8])):
        model = DeepLabV3Plus(3, tiny(aspp_rates=cfg.model.aspp_rates), output_stride=output_stride)
        assert [b[0].dilation[0] for b in model.decoder.aspp.branches] == want
        assert model.decoder.aspp.project[0].in_channels == 32 * (len(want) + 1)  # + the pooling branch
    for bad in ("[]", "[0,4]"):
        with pytest.raises(ConfigError, match="model.aspp_rates"):
            load_config(overrides=["model.arch=deeplabv3plus", f"model.aspp_rates={bad}"])


def test_lite0_imagenet_weights_load_into_the_dilated_backbone():
    from rc2l.models.backbones import _lite0_package_state

    model = build_model(
        3,
        ModelConfig(
            arch="deeplabv3plus", backbone="efficientnet_lite0", pretrained="imagenet", aspp_dim=32, decoder_dim=32
        ),
    )
    state = _lite0_package_state()
    body = model.backbone.body.state_dict()
    for key in ("conv_stem.weight", "blocks.5.1.conv_dw.weight", "blocks.6.0.conv_pw.weight", "bn1.running_var"):
        assert torch.equal(body[key], state[key]), key
    assert model.backbone.body.blocks[6][0].conv_dw.dilation == (2, 2)  # dilated, same tensors


# ----------------------------------------------------------------------------- feature perturbation


def test_deeplab_fp_branch_clean_half_unchanged_perturbed_half_dropped():
    torch.manual_seed(0)
    model = build_model(4, tiny()).train()
    x = torch.rand(2, 3, 64, 64)
    seen = _capture_inputs(model.decoder)
    clean = model(x)
    out = model(x, fp_dropout=0.5)
    assert set(out) == {"sem_logits", "fp"} and set(out["fp"]) == {"sem_logits"}
    assert out["fp"]["sem_logits"].shape == clean["sem_logits"].shape == (2, 4, 16, 16)
    assert torch.allclose(out["sem_logits"], clean["sem_logits"], atol=1e-6, rtol=0)  # bit-equal on CPU
    assert (out["fp"]["sem_logits"] - clean["sem_logits"]).abs().max() > 1e-2
    (low0, high0), (low, high) = seen
    for ref, both in ((low0, low), (high0, high)):
        assert both.shape[0] == 2 * ref.shape[0]
        assert torch.allclose(both[:2], ref, atol=1e-5, rtol=0)  # the clean half is not dropped
        dropped = both[2:].flatten(2).abs().amax(-1) == 0  # (B, C) whole channels zeroed
        assert 0.3 < dropped.float().mean() < 0.7
        kept = ~dropped
        assert torch.allclose(both[2:][kept], 2 * ref[kept], atol=1e-4)  # survivors scaled by 1/(1-p)


def test_no_fp_key_and_no_randomness_without_fp_dropout():
    model = build_model(3, tiny()).eval()
    x = torch.rand(1, 3, 64, 64)
    state = torch.get_rng_state()
    out = model(x, fp_dropout=0.0)
    assert "fp" not in out and torch.equal(torch.get_rng_state(), state)


def _old_maskformer_forward(model: Segmenter, images: torch.Tensor) -> dict:
    """Segmenter.forward as it was before fp_dropout existed, written out from its parts."""
    from rc2l.models.segmenter import semantic_masks

    Fm, pyramid = model.pixel_decoder(model.backbone((images - model.mean) / model.std))
    layers = model.decoder(pyramid, Fm)
    logits, emb, masks = layers[-1]
    return {
        "pred_logits": logits,
        "pred_masks": masks,
        "mask_embed": emb,
        "pixel_feats": Fm,
        "sem_masks": semantic_masks(logits, masks),
        "aux_outputs": [{"pred_logits": l, "pred_masks": m} for l, _, m in layers[:-1]],
    }


def test_maskformer_without_fp_is_bit_identical():
    torch.manual_seed(0)
    model = build_model(3, TINY_MASKFORMER).eval()  # eval: BatchNorm running stats stay put
    assert isinstance(model, Segmenter) and model.per_pixel is False
    x = torch.rand(2, 3, 64, 64)
    state = torch.get_rng_state()
    out = model(x)
    assert torch.equal(torch.get_rng_state(), state) and "fp" not in out
    ref = _old_maskformer_forward(model, x)
    for k in ("pred_logits", "pred_masks", "mask_embed", "pixel_feats", "sem_masks"):
        assert torch.equal(out[k], ref[k]), k


@pytest.mark.parametrize("masked_attention", [False, True])
def test_maskformer_fp_branch(masked_attention):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY_MASKFORMER.__dict__, "masked_attention": masked_attention})
    model = build_model(3, cfg).train()
    x = torch.rand(2, 3, 64, 64)
    seen = _capture_inputs(model.pixel_decoder)
    clean = model(x)
    out = model(x, fp_dropout=0.5)
    assert set(out["fp"]) == {"pred_logits", "pred_masks", "sem_masks", "pixel_feats"}
    for k in ("pred_logits", "pred_masks", "mask_embed", "pixel_feats", "sem_masks"):
        assert out[k].shape == clean[k].shape, k
        assert torch.allclose(out[k], clean[k], atol=1e-4, rtol=0), k
    assert len(out["aux_outputs"]) == len(clean["aux_outputs"]) > 0
    for a, b in zip(out["aux_outputs"], clean["aux_outputs"]):
        assert torch.allclose(a["pred_masks"], b["pred_masks"], atol=1e-4, rtol=0)
    for k in ("pred_logits", "pred_masks", "sem_masks", "pixel_feats"):
        assert out["fp"][k].shape == clean[k].shape
    assert (out["fp"]["pred_masks"] - clean["pred_masks"]).abs().max() > 1e-2
    (feats0,), (feats,) = seen  # the pixel decoder's one argument: the list of backbone maps
    for ref, both in zip(feats0, feats):
        assert torch.allclose(both[:2], ref, atol=1e-5, rtol=0)
        dropped = both[2:].flatten(2).abs().amax(-1) == 0
        assert 0.2 < dropped.float().mean() < 0.8


# ----------------------------------------------------------------------------- training and config


def _miou(pred: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    conf = torch.bincount(labels.flatten() * k + pred.flatten(), minlength=k * k).view(k, k).double()
    inter, union = conf.diag(), conf.sum(0) + conf.sum(1) - conf.diag()
    return float((inter[union > 0] / union[union > 0]).mean())


def test_overfits_four_synthetic_images_with_plain_cross_entropy():
    torch.manual_seed(0)
    pairs = [generate(5, "train", i, 64) for i in range(4)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(np.stack([p[1] for p in pairs])).long()
    labels[0, :4] = 255  # an ignored band: must not break the loss
    model = build_model(NUM_CLASSES, tiny())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.time()
    for _ in range(60):
        logits = F.interpolate(model(images)["sem_logits"], size=(64, 64), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model.semantic_scores(images).argmax(1)
    valid = labels != 255
    acc = float((pred[valid] == labels[valid]).float().mean())
    miou = _miou(pred[valid], labels[valid], NUM_CLASSES)
    took = time.time() - start
    assert acc > 0.93 and miou > 0.85, f"pixel acc {acc:.3f}, mIoU {miou:.3f} after 60 steps ({took:.0f} s)"


def test_config_arch_choices_and_rc2l_refusal():
    assert load_config(overrides=["model.arch=deeplabv3plus"]).model.arch == "deeplabv3plus"
    assert load_config().model.arch == "maskformer"
    with pytest.raises(ConfigError, match="mask proposals"):
        load_config(overrides=["method=rc2l", "model.arch=deeplabv3plus"])
    with pytest.raises(ConfigError, match="deeplabv3plus"):
        load_config(overrides=["model.arch=unet"])
    with pytest.raises(ValueError, match="unknown model.arch"):
        build_model(3, ModelConfig(arch="unet", pretrained="none"))


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from rc2l.infer.export import check_parity, export_onnx

    torch.manual_seed(0)
    model = build_model(4, tiny("efficientnet_lite0")).eval()
    export_onnx(model, tmp_path / "m.onnx")
    images = torch.rand(2, 3, 72, 104, generator=torch.Generator().manual_seed(1))  # not the traced size
    r = check_parity(model, tmp_path / "m.onnx", images)
    assert r["ok"] and r["argmax_differ"] == 0, r
