"""rc2l's Python API: what notebooks import. Importing rc2l loads nothing heavy; torch comes
with the first call that needs it (and with the first use of ``rc2l.load``, which is
``rc2l.infer.model.load`` imported then).

    model = rc2l.load("runs/x/model")           # weights, .onnx, model/run folder, hf://owner/name
    classes = model.predict("photo.jpg")        # uint8 (H, W) class indices at the photo's size
    result = rc2l.train("configs/synthetic.yaml", **{"train.iters": 10})
    record = rc2l.evaluate("configs/synthetic.yaml", "runs/x/best.safetensors")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rc2l.config import Config
    from rc2l.infer.model import load

__all__ = ["load", "train", "evaluate", "resolve_config"]


def __getattr__(name: str) -> Any:
    """``rc2l.load`` on first use: ``rc2l.infer.model.load`` (its module imports torch)."""
    if name == "load":
        from rc2l.infer.model import load

        globals()["load"] = load
        return load
    raise AttributeError(f"module 'rc2l' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def resolve_config(
    config: str | Path | Config | None, overrides: list[str] | tuple[str, ...] = (), **kw: Any
) -> Config:
    """A YAML path or a Config, then ``overrides`` ("k=v" strings), then keyword overrides
    (dotted keys: ``**{"train.iters": 10}``) → a checked Config; a bad key names itself."""
    from rc2l.config import Config, ConfigError, flatten, load_config, to_dict

    if isinstance(overrides, str):
        raise ConfigError("overrides must be a list of 'key=value' strings, not one string")
    items = list(overrides) + [f"{k}={json.dumps(v)}" for k, v in kw.items()]
    if isinstance(config, Config):
        rebuilt = [f"{k}={json.dumps(v)}" for k, v in flatten(to_dict(config)).items()]
        return load_config(None, rebuilt + items)
    return load_config(config, items)


def train(config: str | Path | Config, overrides: list[str] | tuple[str, ...] = (), **kw: Any) -> dict:
    """Train from a YAML path or Config with overrides (see :func:`resolve_config`) → the
    trainer's result: {"step", "best": {"miou", "model", "step"}, "last_eval", "skipped_samples"}
    (or {"interrupted": True, "step"} after a stop signal). The run folder is cfg.out_dir."""
    from rc2l.engine.train import train as _train

    return _train(resolve_config(config, overrides, **kw))


def evaluate(
    config: str | Path | Config,
    weights: str | Path,
    split: str | None = None,
    mode: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = False,
    **kw: Any,
) -> dict:
    """mIoU of ``weights`` (file, model/run folder, hf://) on ``config``'s dataset → the record
    `rc2l eval --json` writes: dataset, split, mode, crop, weights, miou, per_class
    {name: IoU}, images, confusion. ``split`` / ``mode`` override data.val_split / eval.mode."""
    from rc2l.infer.evaluation import evaluate_weights

    items = list(overrides) + ["model.pretrained=none"]
    if split:
        items.append(f"data.val_split={split}")
    if mode:
        items.append(f"eval.mode={mode}")
    return evaluate_weights(resolve_config(config, items, **kw), weights, progress)
