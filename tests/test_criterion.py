import torch

from rc2l.config import LossConfig
from rc2l.losses.criterion import SetCriterion
from rc2l.losses.functional import dice, targets_from_labels


def dice_loss(prob, tgt, weight=None):
    return 1 - dice(prob, tgt, weight=weight)


def test_targets_from_labels_one_mask_per_present_class():
    lab = torch.tensor([[[0, 0, 2], [255, 2, 2]]])
    (t,) = targets_from_labels(lab)
    assert t["labels"].tolist() == [0, 2]
    assert t["masks"][0].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert t["masks"][1].tolist() == [[0, 0, 1], [0, 1, 1]]
    assert t["valid"].tolist() == [[True, True, True], [False, True, True]]


def test_dice_loss_hand_computed():
    prob = torch.tensor([[1.0, 0.5, 0.0, 0.0]])
    tgt = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    # 1 - (2*1.5 + 1) / (1.5 + 3 + 1)
    assert torch.isclose(dice_loss(prob, tgt), torch.tensor([1 - 4 / 5.5]))
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # ignoring the last pixel makes it perfect-ish
    assert torch.isclose(dice_loss(prob, tgt, w), torch.tensor([1 - 4 / 4.5]))


def _perfect_outputs(labels: torch.Tensor, k: int, n: int = 5, margin: float = 20.0) -> dict:
    b, h, w = labels.shape
    logits = torch.full((b, n, k + 1), -margin)
    logits[..., k] = margin  # every query "no object" by default
    masks = torch.full((b, n, h, w), -margin)
    for i, t in enumerate(targets_from_labels(labels)):
        for q, (c, m) in enumerate(zip(t["labels"], t["masks"])):
            logits[i, q] = -margin
            logits[i, q, c] = margin
            masks[i, q][m > 0] = margin
    return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": []}


def test_loss_near_zero_for_perfect_prediction_and_large_otherwise():
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)
    labels[0, :, 4:] = 1
    labels[1, 2:6, 2:6] = 2
    labels[1, 0, 0] = 255
    crit = SetCriterion(3, LossConfig())
    perfect = crit(_perfect_outputs(labels, 3), labels)
    assert perfect["loss"].item() < 1e-3
    wrong = _perfect_outputs(labels, 3)
    wrong["pred_masks"] = torch.full_like(wrong["pred_masks"], -20.0)  # every mask empty
    assert crit(wrong, labels)["loss_dice"].item() > 4.0


def test_no_object_weight_and_ignore_pixels():
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    out = _perfect_outputs(labels, 2, n=3)
    # turn the two unmatched queries' no-object into a confident class: CE rises by their weight
    out["pred_logits"][0, 1:, :] = torch.tensor([20.0, -20.0, -20.0])
    c1 = SetCriterion(2, LossConfig(no_object_weight=0.1))(out, labels)["loss_ce"]
    c2 = SetCriterion(2, LossConfig(no_object_weight=1.0))(out, labels)["loss_ce"]
    assert c2 > c1 > 0
    # a pixel marked 255 does not count even if the prediction there is wrong
    lab2 = labels.clone()
    lab2[0, 0, 0] = 255
    out2 = _perfect_outputs(labels, 2)
    out2["pred_masks"][0, 0, 0, 0] = -20.0
    assert SetCriterion(2)(out2, lab2)["loss_mask"].item() < 1e-3
    assert SetCriterion(2)(out2, labels)["loss_mask"].item() > 0.01


def test_gradients_finite_with_deep_supervision_and_point_sampling():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16))
    logits = torch.randn(2, 6, 4, requires_grad=True)
    masks = torch.randn(2, 6, 4, 4, requires_grad=True)

    def outputs():
        return {
            "pred_logits": logits,
            "pred_masks": masks,
            "aux_outputs": [{"pred_logits": logits * 1.0, "pred_masks": masks * 1.0}],
        }

    for cfg in (LossConfig(), LossConfig(num_points=32, mask_loss="focal")):
        logits.grad = masks.grad = None
        out = outputs()
        terms = SetCriterion(3, cfg)(out, labels)
        terms["loss"].backward()
        assert torch.isfinite(terms["loss"]) and torch.isfinite(masks.grad).all() and torch.isfinite(logits.grad).all()
        assert masks.grad.abs().sum() > 0
    single = SetCriterion(3, LossConfig(deep_supervision=False))(outputs(), labels)["loss"]
    double = SetCriterion(3, LossConfig())(outputs(), labels)["loss"]
    assert torch.isclose(double, 2 * single, rtol=1e-5)


def test_all_ignore_labels_give_finite_zero_mask_loss():
    labels = torch.full((1, 8, 8), 255, dtype=torch.int64)
    masks = torch.randn(1, 4, 2, 2, requires_grad=True)
    out = {"pred_logits": torch.randn(1, 4, 3, requires_grad=True), "pred_masks": masks, "aux_outputs": []}
    terms = SetCriterion(2)(out, labels)
    assert terms["loss_mask"].item() == 0.0 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
