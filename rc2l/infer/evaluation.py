"""`rc2l.evaluate` / `rc2l eval`: mIoU of a model on a dataset split, as one record (the JSON
that `rc2l eval --json` writes): dataset, split, eval mode, crop, weights, mIoU, per-class IoU,
image count and confusion matrix."""

from __future__ import annotations

from pathlib import Path

from rc2l.config import Config
from rc2l.errors import RC2LError
from rc2l.infer.loading import resolve_source


def evaluate_weights(cfg: Config, weights: str | Path, progress: bool = False) -> dict:
    """cfg: the resolved config (dataset, split, eval mode); weights: a .safetensors file, a
    model or run folder, or hf://owner/name → the eval record."""
    import torch

    from rc2l.data.build import build_datasets, dataset_info
    from rc2l.engine.checkpoint import load_weights
    from rc2l.engine.distributed import init_distributed
    from rc2l.engine.evaluate import AMP_DTYPES, evaluate_as_configured, resolve_amp, val_loader
    from rc2l.models.segmenter import build_model

    src = resolve_source(weights)
    if src.kind != "torch":
        raise RC2LError(f"{src.file}: evaluation needs PyTorch weights (.safetensors or a model folder), not ONNX")
    device = init_distributed(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    info = dataset_info(cfg)
    model = build_model(info.num_classes, cfg.model).to(device)
    load_weights(model, src.file)
    ds = build_datasets(cfg, only_val=True)["val"]
    amp_dtype = AMP_DTYPES[resolve_amp(cfg.train.amp, device)]
    rec = evaluate_as_configured(model, val_loader(ds, cfg.data.workers), cfg, info, device, amp_dtype, progress)
    rec["per_class"] = dict(zip(info.class_names, rec["per_class"]))
    return {**rec, "weights": str(weights), "images": len(ds)}


def eval_table(rec: dict) -> str:
    """The record as the printed table: one 'class  IoU' row per class, then mIoU, then a note
    if the model predicts one class nearly everywhere."""
    from rc2l.engine.evaluate import collapse_note

    names = list(rec["per_class"])
    width = max(len(n) for n in names + ["class"])
    rows = [f"{'class':<{width}}  IoU"]
    rows += [f"{n:<{width}}  {v:6.2f}" for n, v in rec["per_class"].items()]
    rows.append(f"{'mIoU':<{width}}  {rec['miou']:6.2f}")
    note = collapse_note(rec.get("confusion") or [], names)
    if note:
        rows.append(f"note: the model {note}")
    return "\n".join(rows)


def eval_header(rec: dict) -> str:
    crop = rec["crop"]
    return (
        f"dataset {rec['dataset']} | split {rec['split']} ({rec['images']} images) | eval mode {rec['mode']}"
        f" | crop {crop[0]}x{crop[1]} | weights {rec['weights']}"
    )
