"""The segmenter and the set loss can memorise a handful of images: a wiring bug anywhere
between labels, matching, losses and prediction makes this fail."""

import pytest
import torch

from rc2l.config import LossConfig, ModelConfig, SyntheticConfig
from rc2l.data.synthetic import NUM_CLASSES, SyntheticDataset
from rc2l.data.transforms import EvalTransform
from rc2l.engine.evaluate import confusion_matrix, iou_from_confusion
from rc2l.losses.criterion import SetCriterion
from rc2l.models.segmenter import build_model


@pytest.mark.slow
def test_overfit_four_synthetic_images():
    torch.manual_seed(0)
    ds = SyntheticDataset(SyntheticConfig(num_train=4, num_val=1, size=128, seed=3), "train", None, EvalTransform())
    batch = [ds[i] for i in range(4)]
    images = torch.stack([b["image"] for b in batch])
    labels = torch.stack([b["mask"] for b in batch])
    model = build_model(
        NUM_CLASSES,
        ModelConfig(
            backbone="efficientnet_lite0",
            pretrained="imagenet",
            num_queries=8,
            hidden_dim=64,
            mask_dim=64,
            dec_layers=2,
            nheads=4,
            dim_feedforward=128,
        ),
    )
    crit = SetCriterion(NUM_CLASSES, LossConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(200):
        loss = crit(model(images), labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    model.eval()
    with torch.no_grad():
        pred = model.semantic_scores(images).argmax(1)
    miou, _ = iou_from_confusion(confusion_matrix(pred, labels, NUM_CLASSES))
    assert miou > 0.9, f"train mIoU {miou:.3f} after 200 steps on 4 images"
