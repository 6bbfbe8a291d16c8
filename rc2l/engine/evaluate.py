"""Confusion matrix, mIoU and the field's three eval modes (docs/method.md, "Protocol"):
``original`` (whole image), ``center_crop`` and ``sliding_window`` (window = crop, stride 2/3)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as Fn
from torch import Tensor
from torch.utils.data import DataLoader

from rc2l.config import Config
from rc2l.data.datasets import collate
from rc2l.engine import distributed as D
from rc2l.engine.distributed import all_reduce_sum
from rc2l.provenance import read_cpuinfo

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# AMX only: a 2-core Xeon VM with AVX512-BF16 but no AMX ran a bf16 matmul at half the fp32 rate
# (174 vs 327 GFLOP/s) and CamVid training at 0.8x fp32's steps/s (docs/benchmarks.md, section 4)
BF16_CPU_FLAGS = ("amx_bf16",)


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 faster than fp32 (AMX in /proc/cpuinfo): only then does CPU
    bf16 autocast pay. False where unreadable."""
    flags = set()
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_amp(amp: str, device: torch.device | str, cpuinfo: str | None = None) -> str:
    """train.amp with "auto" resolved: bf16 on CUDA devices that support it and on CPUs with
    AMX (``cpu_has_bf16``), else "off"; other values are returned as they are."""
    if amp != "auto":
        return amp
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    return "bf16" if device.type == "cpu" and cpu_has_bf16(cpuinfo) else "off"


ScoreFn = Callable[[Tensor], Tensor]  # images (B, 3, H, W) → scores (B, K, H, W)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """pred, target: (…) int → (K, K) int64, rows = ground truth, columns = prediction."""
    valid = target != ignore_index
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(cm: Tensor) -> tuple[float, list[float]]:
    """Per-class IoU = TP / (TP + FP + FN); mIoU averages classes that occur in the ground
    truth or the prediction (a class absent from both is NaN in per_class, not a zero)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union
    present = union > 0
    miou = iou[present].mean().item() if present.any() else float("nan")
    return miou, [float(v) for v in iou]


def collapse_note(confusion: list[list[int]], class_names: list[str], share: float = 0.95) -> str | None:
    """A sentence when one class takes at least ``share`` of the predicted pixels but not of the
    labelled ones (rows = ground truth, columns = prediction), else None. Such a model's mIoU is
    that class's IoU alone; a number that small looks like a weak model, not a broken one."""
    total = sum(map(sum, confusion))
    if total <= 0:
        return None
    predicted = [sum(col) / total for col in zip(*confusion)]
    k = max(range(len(predicted)), key=predicted.__getitem__)
    labelled = sum(confusion[k]) / total
    if predicted[k] < share or labelled >= share:
        return None
    name = class_names[k] if k < len(class_names) else f"class {k}"
    return (
        f"predicts '{name}' for {predicted[k] * 100:.1f} % of the labelled pixels "
        f"({labelled * 100:.1f} % are '{name}'): the model has collapsed to one class"
    )


def sliding_window(
    score_fn: ScoreFn, image: Tensor, crop: tuple[int, int], stride_ratio: float, num_classes: int
) -> Tensor:
    """image: (1, 3, H, W) → (1, K, H, W) mean of window scores; window = crop (clipped to
    the image), stride = window * stride_ratio, last window flush with the border."""
    _, _, h, w = image.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = max(1, int(math.ceil(ch * stride_ratio))), max(1, int(math.ceil(cw * stride_ratio)))
    ys = list(range(0, max(h - ch, 0) + 1, sh))
    xs = list(range(0, max(w - cw, 0) + 1, sw))
    if ys[-1] + ch < h:
        ys.append(h - ch)
    if xs[-1] + cw < w:
        xs.append(w - cw)
    total = image.new_zeros(1, num_classes, h, w)
    count = image.new_zeros(1, 1, h, w)
    for y in ys:
        for x in xs:
            total[..., y : y + ch, x : x + cw] += score_fn(image[..., y : y + ch, x : x + cw]).float()
            count[..., y : y + ch, x : x + cw] += 1
    return total / count


def center_crop(t: Tensor, crop: tuple[int, int]) -> Tensor:
    h, w = t.shape[-2:]
    ch, cw = min(crop[0], h), min(crop[1], w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return t[..., y : y + ch, x : x + cw]


def predict_scores(
    score_fn: ScoreFn, image: Tensor, mode: str, crop: tuple[int, int], stride_ratio: float, num_classes: int
) -> Tensor:
    """Scores for one image (1, 3, H, W) in the given eval mode (center_crop returns the crop)."""
    if mode == "original":
        return score_fn(image).float()
    if mode == "center_crop":
        return score_fn(center_crop(image, crop)).float()
    if mode == "sliding_window":
        return sliding_window(score_fn, image, crop, stride_ratio, num_classes)
    raise ValueError(f"unknown eval mode {mode!r}")


def _score_chunk(
    score_fn: ScoreFn,
    chunk: list[tuple[Tensor, Tensor]],
    mode: str,
    crop: tuple[int, int],
    stride_ratio: float,
    num_classes: int,
    ignore_index: int,
) -> Tensor:
    """Confusion matrix of same-size (image (3, H, W), mask (H, W)) pairs, scored in one forward
    (original, center_crop) or image by image (sliding_window); scores are upsampled to masks
    kept at their native size (eval.labels=native)."""
    images = torch.stack([im for im, _ in chunk])
    masks = torch.stack([m for _, m in chunk])
    if mode == "sliding_window":
        scores = torch.cat(
            [
                predict_scores(score_fn, images[i : i + 1], mode, crop, stride_ratio, num_classes)
                for i in range(len(chunk))
            ]
        )
    else:
        scores = predict_scores(score_fn, images, mode, crop, stride_ratio, num_classes)
    if mode == "center_crop":
        masks = center_crop(masks, crop)
    if scores.shape[-2:] != masks.shape[-2:]:  # labels at their native size: upsample the scores to it
        scores = Fn.interpolate(scores, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return confusion_matrix(scores.argmax(1), masks, num_classes, ignore_index)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    num_classes: int,
    mode: str = "original",
    crop: tuple[int, int] = (512, 512),
    stride_ratio: float = 2 / 3,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    ignore_index: int = 255,
    batch_size: int = 1,
) -> dict:
    """mIoU of ``model`` (a Segmenter) over ``loader`` (batches of {"image", "mask"}); the
    confusion matrix is all-reduced across processes. ``batch_size``: up to that many
    consecutive same-size images go through the model at once (fewer, larger matmuls; eval mode
    makes every image's scores independent of its batch mates), sliding windows one image at
    a time."""
    was_training = model.training
    model.eval()
    device = torch.device(device)

    def score_fn(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return model.semantic_scores(x)

    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=f"eval ({mode})", leave=False, dynamic_ncols=True)
    pending: list[tuple[Tensor, Tensor]] = []  # consecutive same-size images of one forward

    def flush() -> None:
        nonlocal cm
        if pending:
            cm += _score_chunk(score_fn, pending, mode, crop, stride_ratio, num_classes, ignore_index)
            pending.clear()

    for batch in it:
        if batch is None:
            continue
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        for i in range(images.shape[0]):
            if pending and (
                pending[0][0].shape != images[i].shape
                or pending[0][1].shape != masks[i].shape
                or len(pending) >= batch_size
            ):
                flush()
            pending.append((images[i], masks[i]))
    flush()
    all_reduce_sum(cm)
    model.train(was_training)
    miou, per_class = iou_from_confusion(cm.cpu())
    return {
        "miou": miou * 100,
        "per_class": [v * 100 for v in per_class],
        "mode": mode,
        "crop": list(crop),
        "pixels": int(cm.sum()),
        "confusion": cm.cpu().tolist(),
    }


def evaluate_as_configured(
    model: torch.nn.Module, loader, cfg: Config, info, device, amp_dtype, progress=False
) -> dict:
    """:func:`evaluate` with the eval settings ``cfg`` names, for the trainer's log and `rc2l
    eval` alike → the fields of their eval records: dataset, split, mode, labels, crop, miou,
    per_class (list, in class order), confusion. ``info``: the dataset's ``DatasetInfo``."""
    r = evaluate(
        model,
        loader,
        info.num_classes,
        cfg.eval.mode,
        tuple(cfg.eval.crop_size or cfg.data.crop_size),
        cfg.eval.stride_ratio,
        device,
        amp_dtype,
        progress=progress,
        ignore_index=info.ignore_index,
        batch_size=cfg.eval.batch_size,
    )
    return {
        "dataset": cfg.data.name,
        "split": cfg.data.val_split,
        "mode": r["mode"],
        "labels": cfg.eval.labels,
        "crop": r["crop"],
        "miou": r["miou"],
        "per_class": r["per_class"],
        "confusion": r["confusion"],
    }


def val_loader(dataset, workers: int):
    """Rank r evaluates images r, r + world, ...: every image exactly once over all ranks (a
    DistributedSampler would pad with repeats and count them twice in the all-reduced confusion)."""
    sampler = None
    if D.is_dist():
        sampler = list(range(D.rank(), len(dataset), D.world_size()))
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=min(workers, 2), collate_fn=collate)
