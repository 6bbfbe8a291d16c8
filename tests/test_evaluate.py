import math

import torch

from rc2l.engine.evaluate import collapse_note, confusion_matrix, evaluate, iou_from_confusion, predict_scores
from rc2l.infer.evaluation import eval_table


def test_miou_equals_hand_computed_case():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    miou, per = iou_from_confusion(cm)
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: 3/(3+1) ; class 2: 1/(1+1)
    assert math.isclose(per[0], 1 / 3) and math.isclose(per[1], 0.75) and math.isclose(per[2], 0.5)
    assert math.isclose(miou, (1 / 3 + 0.75 + 0.5) / 3)


def test_absent_class_is_not_counted_as_zero():
    gt = torch.tensor([0, 0, 1])
    cm = confusion_matrix(gt, gt, 3)
    miou, per = iou_from_confusion(cm)
    assert miou == 1.0 and math.isnan(per[2])


class _Position(torch.nn.Module):
    """A fake model whose score depends on absolute image content, so any misplaced
    window shows up in the result."""

    def semantic_scores(self, x):
        return torch.cat([x[:, :1], 1 - x[:, :1]], 1)


def test_three_modes_agree_when_the_image_fits_one_window():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 24, 32)
    model = _Position()
    ref = predict_scores(model.semantic_scores, img, "original", (24, 32), 2 / 3, 2)
    for mode in ("center_crop", "sliding_window"):
        assert torch.equal(predict_scores(model.semantic_scores, img, mode, (24, 32), 2 / 3, 2), ref)
    # sliding windows smaller than the image still reassemble a per-pixel model exactly
    sw = predict_scores(model.semantic_scores, img, "sliding_window", (10, 12), 2 / 3, 2)
    assert torch.allclose(sw, ref)


def test_evaluate_loop_modes_agree_on_a_real_model():
    from rc2l.models.segmenter import build_model

    from helpers import tiny_model_config

    torch.manual_seed(0)
    model = build_model(3, tiny_model_config("resnet18", num_queries=4, dec_layers=1, dim_feedforward=32))
    batches = [{"image": torch.rand(1, 3, 64, 64), "mask": torch.randint(0, 3, (1, 64, 64))} for _ in range(2)]
    res = {m: evaluate(model, batches, 3, m, (64, 64)) for m in ("original", "center_crop", "sliding_window")}
    assert res["original"]["confusion"] == res["center_crop"]["confusion"] == res["sliding_window"]["confusion"]
    assert res["original"]["pixels"] == 2 * 64 * 64
    cc = evaluate(model, batches, 3, "center_crop", (32, 32))
    assert cc["pixels"] == 2 * 32 * 32 and cc["mode"] == "center_crop"


def _collapsed_record() -> dict:
    # 3 classes, rows = truth: every pixel predicted as class 1 ("road"), which is 30 % of the labels
    cm = [[0, 40, 0], [0, 30, 0], [0, 30, 0]]
    miou, per_class = iou_from_confusion(torch.tensor(cm))
    names = ["sky", "road", "car"]
    return {"confusion": cm, "miou": miou * 100, "per_class": dict(zip(names, [v * 100 for v in per_class]))}


def test_collapse_note_names_the_class_and_both_shares():
    note = collapse_note(_collapsed_record()["confusion"], ["sky", "road", "car"])
    assert note is not None and "'road'" in note and "100.0 %" in note and "30.0 %" in note
    # the table `rc2l eval` prints carries the same note under the mIoU row
    assert eval_table(_collapsed_record()).splitlines()[-1].startswith("note: the model predicts 'road'")


def test_collapse_note_is_silent_for_a_healthy_or_single_class_split():
    healthy = [[35, 5, 0], [3, 27, 0], [0, 2, 28]]
    assert collapse_note(healthy, ["sky", "road", "car"]) is None
    assert collapse_note([[97, 0], [3, 0]], ["road", "car"]) is None  # the labels are 97 % one class too
    assert collapse_note([[0, 0], [0, 0]], ["road", "car"]) is None  # nothing labelled
    # 94 % one class is below the 95 % bar: a strong but not collapsed bias
    assert collapse_note([[6, 44], [0, 50]], ["a", "b"]) is None
    table = eval_table({"confusion": healthy, "miou": 80.0, "per_class": {"sky": 80.0, "road": 75.0, "car": 85.0}})
    assert "note:" not in table
