"""Supervised set loss (docs/method.md, "Supervised loss"): Hungarian matching of N predictions
to per-class target masks, CE on classes (no-object weight), BCE/focal + dice on masks,
summed over decoder layers."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as Fn
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from rc2l.config import LossConfig
from rc2l.losses.functional import dice, targets_from_labels
from rc2l.losses.matcher import match_padded, pack_matches, pad_targets


def sample_points(logits: Tensor, num: int, oversample: float, importance: float) -> Tensor:
    """Mask2Former's uncertainty point sampling. logits: (M, 1, h, w) → coords (M, num, 2) in
    [0, 1]: the most uncertain (|logit| small) of ``num*oversample`` random points plus random."""
    m = logits.shape[0]
    n_over = int(num * oversample)
    coords = torch.rand(m, n_over, 2, device=logits.device)
    unc = -point_sample(logits, coords).squeeze(1).abs()
    n_imp = int(importance * num)
    idx = unc.topk(n_imp, dim=1).indices
    coords_imp = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    return torch.cat([coords_imp, torch.rand(m, num - n_imp, 2, device=logits.device)], dim=1)


def point_sample(x: Tensor, coords: Tensor, mode: str = "bilinear") -> Tensor:
    """x: (M, C, h, w); coords (M, P, 2) in [0, 1] (x, y) → (M, C, P)."""
    return Fn.grid_sample(x, 2 * coords[:, :, None] - 1, mode=mode, align_corners=False).squeeze(-1)


class SetCriterion(nn.Module):
    """loss(outputs, labels) → dict of scalar terms {"loss_ce", "loss_mask", "loss_dice"}
    (weighted, summed over the final and auxiliary layers), the total "loss", and each decoder
    layer's weighted terms under "loss_ce_<l>", "loss_mask_<l>", "loss_dice_<l>" (detached, for
    the log: l = 0 is the first decoder layer, the highest l the final output).

    The mask and dice terms are divided by the number of target masks; ``begin_step`` sets that
    normaliser for an optimizer step made of several micro-batches or processes."""

    def __init__(self, num_classes: int, cfg: LossConfig | None = None, ignore_index: int = 255):
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        w = torch.ones(num_classes + 1)
        w[-1] = self.cfg.no_object_weight
        self.register_buffer("empty_weight", w, persistent=False)
        self.num_masks: float | None = None

    def begin_step(self, labels: list[Tensor]) -> None:
        """``labels``: the (B, H, W) label maps of this optimizer step's micro-batches in this
        process. The normaliser of each of them becomes the target masks of all micro-batches and
        all processes divided by (micro-batches × processes), so the mask/dice terms of the
        step add up to those of one global batch (DETR's all-reduced ``num_boxes``, extended to
        gradient accumulation). One micro-batch in one process: each call counts its own."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1 and len(labels) == 1:
            self.num_masks = None
            return
        n = sum(len(t["labels"]) for lab in labels for t in targets_from_labels(lab, self.ignore_index))
        total = torch.tensor(float(n), device=self.empty_weight.device)
        if world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.num_masks = total.item() / (world * len(labels))

    @staticmethod
    def batch_targets(targets: list[dict]) -> dict:
        """The batch's targets in the layouts every decoder layer uses, built once per call:
        padded to the largest M (matching) and concatenated (the matched pairs' losses)."""
        masks, counts = pad_targets(targets, "masks")
        labels, _ = pad_targets(targets, "labels")
        valid = torch.stack([t["valid"] for t in targets])
        return {
            "counts": counts,
            "masks_pad": masks,
            "labels_pad": labels,
            "valid": valid,
            "grid": {},
            "labels": torch.cat([t["labels"] for t in targets]),
            "masks": torch.cat([t["masks"] for t in targets]),
        }

    @torch.no_grad()
    def match(self, logits: Tensor, masks: Tensor, bt: dict) -> list[tuple[Tensor, Tensor]]:
        """Cost on the predictions' own (stride-4) grid, over non-ignored pixels only; the whole
        batch at once on targets padded to the largest M (``batch_targets``)."""
        c = self.cfg
        counts = bt["counts"]
        if max(counts, default=0) == 0:
            return match_padded(logits, masks.flatten(2), bt["labels_pad"], masks.flatten(2), counts)
        size = tuple(masks.shape[-2:])
        if size not in bt["grid"]:  # the layers share one grid: resample the targets once
            tm = Fn.interpolate(bt["masks_pad"], size=size, mode="nearest").flatten(2)
            valid = Fn.interpolate(bt["valid"][:, None].float(), size=size, mode="nearest").flatten(1)
            bt["grid"][size] = tm, valid
        tm, valid = bt["grid"][size]
        return match_padded(
            logits, masks.flatten(2), bt["labels_pad"], tm, counts, c.cls_weight, c.mask_weight, c.dice_weight, valid
        )

    def layer_loss(self, logits: Tensor, masks: Tensor, bt: dict, num_masks: float) -> dict[str, Tensor]:
        """Loss of one decoder layer; ``bt``: ``batch_targets`` of the batch."""
        c = self.cfg
        m = pack_matches(self.match(logits, masks, bt), bt["counts"], logits.device)
        tgt_cls = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        tgt_cls[m.img, m.pred] = bt["labels"][m.tgt]
        loss_ce = Fn.cross_entropy(logits.transpose(1, 2).float(), tgt_cls, self.empty_weight)
        if len(m) == 0:
            zero = masks.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        src = masks[m.img, m.pred]
        tgt = bt["masks"][m.tgt]
        valid = bt["valid"][m.img]
        src = src.float()[:, None]
        if c.num_points > 0:
            with torch.no_grad():
                coords = sample_points(src, c.num_points, c.oversample_ratio, c.importance_sample_ratio)
                t = point_sample(tgt[:, None], coords, mode="nearest").squeeze(1)
                w = point_sample(valid[:, None].float(), coords, mode="nearest").squeeze(1)
            s = point_sample(src, coords).squeeze(1)
        else:
            s = Fn.interpolate(src, size=tgt.shape[-2:], mode="bilinear", align_corners=False).flatten(1)
            t, w = tgt.flatten(1), valid.flatten(1).float()
        npix = w.sum(-1).clamp(min=1)
        if c.mask_loss == "focal":
            pix = sigmoid_focal_loss(s, t, reduction="none")
        else:
            pix = Fn.binary_cross_entropy_with_logits(s, t, reduction="none")
        loss_mask = ((pix * w).sum(-1) / npix).sum() / num_masks
        loss_dice = (1 - dice(s.sigmoid(), t, weight=w)).sum() / num_masks
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}

    def forward(self, outputs: dict, labels: Tensor, num_masks: float | None = None) -> dict[str, Tensor]:
        """outputs: the segmenter's dict; labels: (B, H, W) int64 with ``ignore_index``.
        ``num_masks``: the normaliser (default: the one ``begin_step`` set, else this batch's
        own target count)."""
        targets = targets_from_labels(labels, self.ignore_index)
        num_masks = self.num_masks if num_masks is None else num_masks
        if num_masks is None:
            num_masks = sum(len(t["labels"]) for t in targets)
        num_masks = max(float(num_masks), 1.0)
        bt = self.batch_targets(targets)
        aux = outputs.get("aux_outputs", []) if self.cfg.deep_supervision else []
        layers = [outputs] + aux
        c = self.cfg
        weights = {"loss_ce": c.cls_weight, "loss_mask": c.mask_weight, "loss_dice": c.dice_weight}
        terms = {"loss_ce": 0.0, "loss_mask": 0.0, "loss_dice": 0.0}
        per_layer = {}
        for i, out in enumerate(layers):
            layer = len(layers) - 1 if i == 0 else i - 1  # decoder layer index: the final output is the last
            for k, v in self.layer_loss(out["pred_logits"], out["pred_masks"], bt, num_masks).items():
                terms[k] = terms[k] + v
                per_layer[f"{k}_{layer}"] = weights[k] * v.detach()
        terms = {k: weights[k] * v for k, v in terms.items()}
        terms["loss"] = terms["loss_ce"] + terms["loss_mask"] + terms["loss_dice"]
        return {**terms, **dict(sorted(per_layer.items()))}
