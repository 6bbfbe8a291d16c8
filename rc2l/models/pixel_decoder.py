"""FPN pixel decoder: backbone maps (strides 4–32) → per-pixel embeddings F and a
multi-scale pyramid for the transformer decoder."""

from __future__ import annotations

import torch.nn.functional as Fn
from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, min(32, channels // 8)), channels)  # 8 channels a group, as at C=256


def conv_norm_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _norm(cout), nn.ReLU(inplace=True))


class FPNPixelDecoder(nn.Module):
    """Top-down FPN as in MaskFormer.

    forward(feats: list of 4 maps (B, C_l, H/s, W/s), s = 4, 8, 16, 32) →
    (F: (B, mask_dim, H/4, W/4), pyramid: [(B, conv_dim, H/32, W/32), H/16, H/8]).
    """

    def __init__(self, in_channels: list[int], conv_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, conv_dim, 1, bias=False), _norm(conv_dim)) for c in in_channels[:-1]]
        )
        self.top = conv_norm_relu(in_channels[-1], conv_dim, 3)
        self.output = nn.ModuleList([conv_norm_relu(conv_dim, conv_dim, 3) for _ in in_channels[:-1]])
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        y = self.top(feats[-1])
        pyramid = [y]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            y = lat + Fn.interpolate(y, size=lat.shape[-2:], mode="nearest")
            y = self.output[i](y)
            pyramid.append(y)
        return self.mask_features(y), pyramid[:3]
