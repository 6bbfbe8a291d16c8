"""Command line: rc2l {train, eval, splits, demo, ...}. Errors are one line on stderr and a
non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import logging
import sys
from pathlib import Path

from rc2l.config import ConfigError, load_config
from rc2l.errors import RC2LError

REPO = Path(__file__).resolve().parents[1]


def _one_line(e: BaseException) -> str:
    """Errors re-raised from DataLoader workers carry the worker's traceback: keep the message."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return e.__class__.__name__
    last = lines[-1]
    for prefix in ("rc2l.errors.", "rc2l.config."):
        if last.startswith(prefix):
            last = last.split(": ", 1)[-1]
    return last if len(lines) > 1 else lines[0]


def cmd_train(args) -> int:
    from rc2l.engine.train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if result.get("interrupted"):
        return 0
    best = result["best"]
    if int(os.environ.get("RANK", "0")) != 0:  # the process group is gone by now; torchrun's env stays
        return 0
    print(f"done: {result['step']} steps; best val mIoU {best['miou']:.2f} ({best['model']}, step {best['step']}); "
          f"run folder {cfg.out_dir}")
    return 0


def _eval_table(res: dict, class_names: list[str]) -> str:
    width = max(len(n) for n in class_names + ["class"])
    rows = [f"{'class':<{width}}  IoU"]
    for n, v in zip(class_names, res["per_class"]):
        rows.append(f"{n:<{width}}  {v:6.2f}")
    rows.append(f"{'mIoU':<{width}}  {res['miou']:6.2f}")
    return "\n".join(rows)


def cmd_eval(args) -> int:
    import torch

    from rc2l.data.build import build_datasets, dataset_info
    from rc2l.engine.checkpoint import load_weights
    from rc2l.engine.distributed import init_distributed
    from rc2l.engine.evaluate import evaluate
    from rc2l.engine.train import AMP_DTYPES, val_loader
    from rc2l.models.segmenter import build_model

    overrides = list(args.overrides) + ["model.pretrained=none"]
    if args.split:
        overrides.append(f"data.val_split={args.split}")
    if args.mode:
        overrides.append(f"eval.mode={args.mode}")
    cfg = load_config(args.config, overrides)
    device = init_distributed(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    info = dataset_info(cfg)
    model = build_model(info.num_classes, cfg.model).to(device)
    load_weights(model, args.weights)
    ds = build_datasets(cfg, only_val=True)["val"]
    crop = tuple(cfg.eval.crop_size or cfg.data.crop_size)
    res = evaluate(model, val_loader(ds, cfg.data.workers), info.num_classes, cfg.eval.mode, crop,
                   cfg.eval.stride_ratio, device, AMP_DTYPES[cfg.train.amp], progress=True,
                   ignore_index=info.ignore_index)
    head = (f"dataset {cfg.data.name} | split {cfg.data.val_split} ({len(ds)} images) | eval mode {cfg.eval.mode}"
            f" | crop {crop[0]}x{crop[1]} | weights {args.weights}")
    print(head)
    print(_eval_table(res, info.class_names))
    if args.json:
        out = {"dataset": cfg.data.name, "split": cfg.data.val_split, "mode": cfg.eval.mode, "crop": list(crop),
               "weights": str(args.weights), "miou": res["miou"],
               "per_class": dict(zip(info.class_names, res["per_class"])), "images": len(ds),
               "confusion": res["confusion"]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rc2l", description="Semi-supervised semantic segmentation with RC²L.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config and key=value overrides")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.iters=2000 data.split=1_8 resume=auto")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="mIoU of a weights file on a split, printed and optionally as JSON")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--weights", required=True, help="a .safetensors file written by rc2l train")
    e.add_argument("--split", help="split name (default: data.val_split)")
    e.add_argument("--mode", choices=["original", "center_crop", "sliding_window"])
    e.add_argument("--json", help="write the result here")
    e.set_defaults(func=cmd_eval)

    from rc2l import demo
    from rc2l.data import splits

    splits.add_parser(sub)
    demo.add_parser(sub)
    for mod in ("rc2l.engine.ablate", "rc2l.engine.compare", "rc2l.infer.predict", "rc2l.infer.export", "rc2l.infer.report"):
        try:
            module = __import__(mod, fromlist=["add_parser"])
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise
            continue
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RC2LError, ConfigError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
