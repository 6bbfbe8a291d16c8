"""The MaskFormer-style segmenter and its semantic masks S = Σ_i softmax(c_i)[:K] ⊗ σ(p_i)
(region features r_i = MAP(F, σ(p_i)) are computed by the losses: rc2l.losses.functional)."""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from rc2l.config import ModelConfig
from rc2l.models.backbones import build_backbone
from rc2l.models.decoder import TransformerDecoder
from rc2l.models.deeplabv3plus import DeepLabV3Plus
from rc2l.models.pixel_decoder import FPNPixelDecoder


def semantic_masks(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
    """pred_logits: (B, N, K+1); pred_masks: (B, N, h, w) logits → S: (B, K, h, w)."""
    cls = pred_logits.softmax(-1)[..., :-1]
    return torch.einsum("bnk,bnhw->bkhw", cls, pred_masks.sigmoid())


class Segmenter(nn.Module):
    """Backbone → FPN pixel decoder (F) → transformer decoder (c_i, f_i) → p_i = f_i · F.

    Input: images (B, 3, H, W) float in [0, 1]; the model normalizes with its backbone's
    statistics, so data pipelines, predict and ONNX export need no separate step.
    """

    per_pixel = False  # mask classification: N mask proposals, what the region losses need

    def __init__(self, num_classes: int, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.num_classes = num_classes
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained)
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)
        self.pixel_decoder = FPNPixelDecoder(self.backbone.out_channels, cfg.hidden_dim, cfg.mask_dim)
        self.decoder = TransformerDecoder(
            num_classes,
            in_dim=cfg.hidden_dim,
            hidden_dim=cfg.hidden_dim,
            mask_dim=cfg.mask_dim,
            num_queries=cfg.num_queries,
            nheads=cfg.nheads,
            dim_feedforward=cfg.dim_feedforward,
            dec_layers=cfg.dec_layers,
            masked_attention=cfg.masked_attention,
        )

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Backbone vs. the rest, for the backbone learning-rate multiplier."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in bb}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return {"backbone": bb, "head": rest}

    def forward(self, images: Tensor, fp_dropout: float = 0.0) -> dict:
        """Returns pred_logits (B, N, K+1), pred_masks (B, N, h, w) logits at stride 4,
        mask_embed (B, N, C), pixel_feats F (B, C, h, w), sem_masks S (B, K, h, w) and
        aux_outputs (earlier layers' pred_logits / pred_masks).

        ``fp_dropout`` > 0 adds "fp": {pred_logits, pred_masks, sem_masks, pixel_feats} of UniMatch's feature
        perturbation: the backbone maps get channel dropout (p = fp_dropout) and go through the
        pixel and transformer decoders in one batch with the clean maps. Both decoders treat
        each image on its own (GroupNorm, LayerNorm, attention within an image), so the clean
        half is what a forward without the branch gives."""
        feats = self.backbone((images - self.mean) / self.std)
        if fp_dropout <= 0:
            return self._decode(feats)
        b = images.shape[0]
        feats = [torch.cat((f, Fn.dropout2d(f, fp_dropout, training=True))) for f in feats]
        both = self._decode(feats)
        out = {k: v[:b] for k, v in both.items() if k != "aux_outputs"}
        out["aux_outputs"] = [{k: v[:b] for k, v in aux.items()} for aux in both["aux_outputs"]]
        out["fp"] = {k: both[k][b:] for k in ("pred_logits", "pred_masks", "sem_masks", "pixel_feats")}
        return out

    def _decode(self, feats: list[Tensor]) -> dict:
        """Backbone maps (B, C_l, H/s, W/s), s = 4..32 → the output dict of :meth:`forward`."""
        F, pyramid = self.pixel_decoder(feats)
        layers = self.decoder(pyramid, F)
        logits, emb, masks = layers[-1]
        return {
            "pred_logits": logits,
            "pred_masks": masks,
            "mask_embed": emb,
            "pixel_feats": F,
            "sem_masks": semantic_masks(logits, masks),
            "aux_outputs": [{"pred_logits": l, "pred_masks": m} for l, _, m in layers[:-1]],
        }

    def semantic_scores(self, images: Tensor) -> Tensor:
        """S upsampled to the input size: (B, K, H, W); the prediction is its argmax."""
        out = self.forward(images)
        return Fn.interpolate(out["sem_masks"], size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_model(num_classes: int, cfg: ModelConfig) -> nn.Module:
    """The segmenter ``cfg.arch`` names: Segmenter (maskformer) or DeepLabV3Plus (deeplabv3plus)."""
    archs = {"maskformer": Segmenter, "deeplabv3plus": DeepLabV3Plus}
    if cfg.arch not in archs:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; choose one of {', '.join(archs)}")
    return archs[cfg.arch](num_classes, cfg)
