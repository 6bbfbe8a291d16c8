"""Command line: rc2l {train, eval, splits, predict, export, report, ablate, compare, demo}. Each verb
parses its arguments and calls the Python API (rc2l/__init__.py) or its module; torch is
imported only by the verbs that need it, so `rc2l --help` answers at once. Errors are one line
on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rc2l.config import ConfigError
from rc2l.errors import DataError, RC2LError

NAMING_HELP = (
    "Output names: <out>/<name>.png (class indices, palette PNG), <name>_overlay.png (colours over the "
    "image, alpha 0.5) and with --confidence <name>_conf.png (max of the class-normalised scores S, "
    "0..255). <name> is the image's stem; images found inside a FOLDER keep their path relative to "
    "that folder (a/x.jpg -> <out>/a/x.png). If two inputs still map to the same name (e.g. x.jpg in "
    "two folders given separately, or x.jpg and x.png), the later one gets a suffix: x_2, x_3, ... and "
    "a note says so. Files in a folder that are not a supported image type are named in one note. "
    "Exit status: 0 if every image was written, 1 if any failed, 2 on a usage error."
)
# verbs whose modules import torch: their parsers are built only when the verb is the one asked for
LAZY_VERBS = {
    "ablate": "run the ablation rows (supervised, +RCC, ... all four) and tabulate them",
    "compare": "rows x seeds: mean ± std of final and best mIoU, paired differences, a plot",
}


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


def _os_error_line(e: OSError) -> str:
    """An OSError as one line naming the path(s) it is about."""
    reason = e.strerror or _one_line(e)
    if e.filename is None:
        return reason
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {reason}"


# ----------------------------------------------------------------------------- verbs


def cmd_train(args) -> int:
    import rc2l

    result = rc2l.train(args.config, args.overrides)
    if result.get("interrupted"):
        return 0
    if int(os.environ.get("RANK", "0")) != 0:  # the process group is gone by now; torchrun's env stays
        return 0
    best = result["best"]
    out_dir = rc2l.resolve_config(args.config, args.overrides).out_dir
    print(
        f"done: {result['step']} steps; best val mIoU {best['miou']:.2f} ({best['model']}, step {best['step']}); "
        f"run folder {out_dir}"
    )
    return 0


def cmd_eval(args) -> int:
    import rc2l
    from rc2l.infer.evaluation import eval_header, eval_table

    rec = rc2l.evaluate(args.config, args.weights, args.split, args.mode, args.overrides, progress=True)
    print(eval_header(rec))
    print(eval_table(rec))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rec, indent=1))
    return 0


def cmd_splits(args) -> int:
    """Write labeled.txt / unlabeled.txt (and val.txt one level up if missing); one summary line."""
    from rc2l.data.datasets import make_reader
    from rc2l.data.splits import make_splits, write_split_file

    reader = make_reader(args.dataset, args.root)
    items = reader.list_split(args.train_split, need_mask=False)
    labeled_pool = [it for it in items if it.mask is not None]
    no_mask = [it for it in items if it.mask is None]  # folder images without a mask
    if args.ratio is None and args.count is None:
        if args.dataset != "folder":
            raise DataError("rc2l splits: give --ratio or --count")
        labeled, unlabeled = labeled_pool, []
    else:
        try:
            labeled, unlabeled = make_splits(labeled_pool, ratio=args.ratio, count=args.count, seed=args.seed)
        except ValueError as e:
            raise DataError(f"rc2l splits: {e}") from None
    unlabeled = unlabeled + no_mask
    if not labeled:
        raise DataError(f"rc2l splits: no labeled images in the '{args.train_split}' list of {reader.root}")
    out = Path(args.out)
    write_split_file(out / "labeled.txt", [reader.rel_row(it) for it in labeled])
    write_split_file(out / "unlabeled.txt", [reader.rel_row(it) for it in unlabeled])
    val_path = out.parent / "val.txt"
    val_note = "kept"
    if not val_path.exists():
        val_items = reader.list_split(args.val_split, need_mask=True)
        write_split_file(val_path, [reader.rel_row(it) for it in val_items])
        val_note = f"wrote {len(val_items)}"
    print(
        f"splits: {out}: {len(labeled)} labeled, {len(unlabeled)} unlabeled "
        f"({args.dataset} '{args.train_split}', {len(items)} images, seed {args.seed}); {val_path}: {val_note}"
    )
    return 0


def cmd_predict(args) -> int:
    import rc2l
    from rc2l.infer.predict import predict_files

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if not 0 < args.stride_ratio <= 1:
        raise ConfigError("--stride-ratio must be in (0, 1]")
    model = rc2l.load(args.weights, args.config, args.backend, args.device, args.window)
    if model.num_classes > 256:
        raise ConfigError(f"{args.weights}: {model.num_classes} classes do not fit an 8-bit class PNG (at most 256)")
    return predict_files(
        model, args.inputs, args.out, args.confidence, args.batch_size, args.stride_ratio, not args.no_progress
    )


def cmd_export(args) -> int:
    if not args.onnx and not args.model_dir:
        raise ConfigError("rc2l export: give --onnx OUT.onnx and/or --model-dir DIR")
    code = 0
    if args.model_dir:
        from rc2l.infer.export import export_model_dir

        export_model_dir(args.weights, args.model_dir, args.config)
    if args.onnx:
        from rc2l.infer.export import export_and_check

        int8 = None
        if args.int8:
            if not args.calibrate:
                raise ConfigError("rc2l export --int8 needs --calibrate IMAGES (training images, a folder or a glob)")
            int8 = {
                "calibrate": args.calibrate,
                "count": args.calib_count,
                "min_agreement": args.min_agreement,
                "form": args.int8_form,
            }
        code = export_and_check(args.weights, args.onnx, args.config, args.opset, args.check, args.tol, int8)
    return code


def cmd_report(args) -> int:
    from rc2l.infer.loading import resolve_device
    from rc2l.infer.report import build_report

    out = build_report(args.run_dir, args.out, args.gallery, str(resolve_device(args.device)))
    print(f"wrote {out} (plots in {Path(args.run_dir) / 'report'})")
    return 0


# ----------------------------------------------------------------------------- parsers


def add_train_eval_parsers(sub) -> None:
    from rc2l.config import keys_help

    t = sub.add_parser(
        "train",
        help="train a model from a YAML config and key=value overrides",
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.iters=2000 data.split=1_8 resume=auto")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="mIoU of a weights file on a split, printed and optionally as JSON")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*")
    e.add_argument(
        "--weights", required=True, help="a .safetensors file, a model folder, a run folder or hf://owner/name"
    )
    e.add_argument("--split", help="split name (default: data.val_split)")
    e.add_argument("--mode", choices=["original", "center_crop", "sliding_window"])
    e.add_argument("--json", help="write the result here")
    e.set_defaults(func=cmd_eval)


def add_splits_parser(sub) -> None:
    p = sub.add_parser(
        "splits",
        help="write labeled/unlabeled split files for a dataset",
        description="Draw a labeled/unlabeled partition of a dataset's train list and write "
        "labeled.txt / unlabeled.txt (lines 'image mask', relative to --root) into --out, "
        "plus val.txt one level up if it is missing.",
    )
    p.add_argument("--dataset", required=True, choices=["camvid", "voc", "cityscapes", "folder"])
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--ratio", default=None, help="labeled fraction: 1/8 or 0.125")
    p.add_argument("--count", type=int, default=None, help="number of labeled images (instead of --ratio)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder, e.g. splits/camvid/1_8")
    p.add_argument("--train-split", default="train", help="the dataset's list to partition (default: train)")
    p.add_argument("--val-split", default="val", help="the dataset's list copied to val.txt (default: val)")
    p.set_defaults(func=cmd_splits)


def add_predict_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images (files, folders, globs) with trained weights, a model folder or ONNX",
        description="Write a class-index PNG, a colour overlay and optionally a confidence map per image. "
        "Images larger than the window are predicted with a sliding window (stride 2/3).",
        epilog=NAMING_HELP,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    p.add_argument(
        "--weights",
        required=True,
        help="a .safetensors file, a .onnx from rc2l export, a model or run folder, or hf://owner/name",
    )
    p.add_argument(
        "--config", help="training config: its dataset's class names/palette, crop and resize override the metadata"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=["torch", "onnx"], help="default: onnx for a .onnx file, else torch")
    p.add_argument("--confidence", action="store_true", help="also write <name>_conf.png")
    p.add_argument("--batch-size", type=int, default=4, help="images of the same size per forward pass (default 4)")
    p.add_argument(
        "--window",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="sliding-window size (default: the training crop); 0 0 = the whole image (up to 4 MP)",
    )
    p.add_argument("--stride-ratio", type=float, default=2 / 3, help="window stride / window size (default 2/3)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def add_export_report_parsers(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export weights to ONNX and/or a shareable model folder (Hugging Face layout)",
        description="--onnx: input 'images' float32 (B,3,H,W) RGB in [0,1], output 'scores' (B,K,H,W); argmax "
        "over K is the prediction; parity with PyTorch is checked with ONNX Runtime. --model-dir: "
        "model.safetensors, config.json, config.yaml and a README.md model card.",
    )
    p.add_argument("--weights", required=True, help="a .safetensors file, a model or run folder, or hf://owner/name")
    p.add_argument("--config", help="training config (its dataset's classes/palette/crop override the metadata)")
    p.add_argument("--onnx", help="output .onnx path")
    p.add_argument("--model-dir", help="output model folder")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--check", metavar="IMAGE", help="also check ONNX parity on this image (at its own size)")
    p.add_argument("--tol", type=float, default=1e-3, help="max allowed |Δscores| (default 0.001)")
    p.add_argument(
        "--int8", action="store_true", help="also write OUT.int8.onnx: static int8, calibrated on --calibrate"
    )
    p.add_argument(
        "--int8-form",
        choices=["portable", "vnni"],
        default="portable",
        help="portable (default): 7-bit weights, exact on every x86 CPU; vnni: 8-bit weights, only for CPUs "
        "with VNNI/AMX or not x86 (elsewhere its products saturate and loading refuses it)",
    )
    p.add_argument("--calibrate", nargs="+", metavar="IMAGES", help="calibration images (files, folders, globs)")
    p.add_argument("--calib-count", type=int, default=32, help="calibration images used (default 32)")
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.98,
        help="refuse the int8 model when its argmax agrees with fp32 on fewer calibration pixels (0.98)",
    )
    p.set_defaults(func=cmd_export)

    r = sub.add_parser("report", help="HTML report of a training run (losses, mIoU, per-class IoU, confusion, gallery)")
    r.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by rc2l train")
    r.add_argument(
        "--out",
        help="page path (default RUN_DIR/report.html); the plots always go to RUN_DIR/report/ "
        "(rewritten by every report of this run)",
    )
    r.add_argument(
        "--gallery", type=int, default=6, metavar="N", help="val images in the gallery (default 6, 0 = none)"
    )
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="for the gallery predictions")
    r.set_defaults(func=cmd_report)


def add_lazy_parser(sub, verb: str) -> None:
    if verb == "ablate":
        from rc2l.engine.ablate import add_parser
    else:
        from rc2l.engine.compare import add_parser
    add_parser(sub)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """All verbs; a verb whose module imports torch (``LAZY_VERBS``) is fully built only when it
    is the one asked for (``verb``), so `rc2l --help` stays fast."""
    from rc2l import demo

    p = argparse.ArgumentParser(prog="rc2l", description="Semi-supervised semantic segmentation with RC²L.")
    sub = p.add_subparsers(dest="command", required=True)
    add_train_eval_parsers(sub)
    add_splits_parser(sub)
    demo.add_parser(sub)
    for name, help_ in LAZY_VERBS.items():
        if name == verb:
            add_lazy_parser(sub, name)
        else:
            sub.add_parser(name, help=help_, add_help=False).add_argument("rest", nargs=argparse.REMAINDER)
    add_predict_parser(sub)
    add_export_report_parsers(sub)
    return p


def _verb(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_verb(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RC2LError, ConfigError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # read-only folder, disk full, name too long, ...: the path and the reason
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
