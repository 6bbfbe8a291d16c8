"""DeepLabv3+, the per-pixel segmenter UniMatch and most of the field run: backbone at output
stride 16 → ASPP on the deepest map → fused with the stride-4 map → per-pixel class logits.

Same backbones, weights and interface as the MaskFormer :class:`~rc2l.models.segmenter.Segmenter`,
so "region beats pixel" can be measured without changing anything else. One deviation from the
paper: GroupNorm instead of BatchNorm in the head. The head then normalises each image on its
own, so the feature-perturbation branch, decoded in the same batch as the clean features,
leaves the clean prediction exactly as it is, and the image-pooling branch works at batch 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from rc2l.config import ModelConfig
from rc2l.models.backbones import build_backbone

LOW_LEVEL_DIM = 48  # the paper's reduction of the stride-4 features


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, min(32, channels // 8)), channels)  # as the FPN pixel decoder


def conv_gn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), _gn(cout), nn.ReLU(inplace=True)
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: (B, C_in, h, w) → (B, dim, h, w).

    Five parallel branches (1×1, three dilated 3×3 at ``rates``, image pooling), concatenated
    and projected by a 1×1 conv. The pooling branch has no norm: a (B, dim, 1, 1) map has too
    few values per image to normalise."""

    def __init__(self, cin: int, dim: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList([conv_gn_relu(cin, dim, 1)] + [conv_gn_relu(cin, dim, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, dim, 1), nn.ReLU(inplace=True))
        self.project = conv_gn_relu(dim * (len(rates) + 2), dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))  # = bilinear upsampling of a 1×1 map
        return self.project(torch.cat(outs, 1))


class DeepLabDecoder(nn.Module):
    """forward(low (B, C_low, H/4, W/4), high (B, C_high, H/16, W/16)) → logits (B, K, H/4, W/4).

    ASPP on ``high``, upsampled to the stride-4 map, concatenated with ``low`` reduced to 48
    channels, two 3×3 convs, a 1×1 classifier."""

    def __init__(
        self,
        low_ch: int,
        high_ch: int,
        num_classes: int,
        rates: tuple[int, ...],
        aspp_dim: int = 256,
        decoder_dim: int = 256,
    ):
        super().__init__()
        self.aspp = ASPP(high_ch, aspp_dim, rates)
        self.reduce = conv_gn_relu(low_ch, LOW_LEVEL_DIM, 1)
        self.fuse = nn.Sequential(
            conv_gn_relu(aspp_dim + LOW_LEVEL_DIM, decoder_dim, 3), conv_gn_relu(decoder_dim, decoder_dim, 3)
        )
        self.classifier = nn.Conv2d(decoder_dim, num_classes, 1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        low = self.reduce(low)
        high = Fn.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat((high, low), 1)))


class DeepLabV3Plus(nn.Module):
    """Backbone (dilated to ``output_stride``) → :class:`DeepLabDecoder` → class logits at stride 4.

    Input: images (B, 3, H, W) float in [0, 1]; the model normalises with its backbone's
    statistics, as the MaskFormer segmenter does."""

    per_pixel = True  # one class distribution per pixel, no mask proposals (method=rc2l needs them)

    def __init__(self, num_classes: int, cfg: ModelConfig | None = None, output_stride: int = 16):
        super().__init__()
        cfg = cfg or ModelConfig(arch="deeplabv3plus")
        self.num_classes = num_classes
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained, output_stride=output_stride)
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)
        if isinstance(cfg.aspp_rates, str):  # "auto" is resolved against the crop by load_config
            raise ValueError(f"model.aspp_rates must be resolved to a list of rates first, got {cfg.aspp_rates!r}")
        # cfg.aspp_rates are for output stride 16; the same field of view at any stride
        self.rates = tuple(max(1, r * 16 // output_stride) for r in cfg.aspp_rates)
        ch = self.backbone.out_channels
        self.decoder = DeepLabDecoder(ch[0], ch[-1], num_classes, self.rates, cfg.aspp_dim, cfg.decoder_dim)
        for m in self.decoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Backbone vs. the rest, for the backbone learning-rate multiplier."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in bb}
        return {"backbone": bb, "head": [p for p in self.parameters() if p.requires_grad and id(p) not in ids]}

    def forward(self, images: Tensor, fp_dropout: float = 0.0) -> dict:
        """→ {"sem_logits": (B, K, H/4, W/4)}, plus, when ``fp_dropout`` > 0, "fp": {"sem_logits"}:
        UniMatch's feature perturbation, the same decoder on the stride-4 and deepest features
        after channel dropout (p = fp_dropout), decoded in one batch with the clean ones."""
        feats = self.backbone((images - self.mean) / self.std)
        low, high = feats[0], feats[-1]
        if fp_dropout <= 0:
            return {"sem_logits": self.decoder(low, high)}
        b = low.shape[0]
        low = torch.cat((low, Fn.dropout2d(low, fp_dropout, training=True)))
        high = torch.cat((high, Fn.dropout2d(high, fp_dropout, training=True)))
        logits = self.decoder(low, high)
        return {"sem_logits": logits[:b], "fp": {"sem_logits": logits[b:]}}

    def semantic_scores(self, images: Tensor) -> Tensor:
        """Class probabilities at the input size: (B, K, H, W); the prediction is their argmax.
        The logits are upsampled before the softmax, as the training loss sees them."""
        logits = self.forward(images)["sem_logits"]
        logits = Fn.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(1)
