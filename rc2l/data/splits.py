"""Split files: read, write, and draw labeled/unlabeled partitions (the `rc2l splits` verb).

Format (the field's, as UniMatch writes it): ``splits/<dataset>/<split>/{labeled,unlabeled}.txt``
and ``splits/<dataset>/val.txt``; each line is ``image_rel_path mask_rel_path`` relative to
the dataset root, or just an id/stem (the reader then finds the files). Blank lines and lines
starting with ``#`` are skipped.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from rc2l.errors import DataError, RC2LError


@dataclass(frozen=True)
class SplitLine:
    """One entry of a split file; ``mask`` is None for a bare id or an image-only line."""

    lineno: int
    image: str
    mask: str | None


def read_split_file(path: str | Path) -> list[SplitLine]:
    """Parse a split file; a missing or empty file, or a line with > 2 fields, is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) > 2:
            raise DataError(f"{path}:{n}: expected 'image [mask]', got {len(parts)} fields: {s!r}")
        lines.append(SplitLine(n, parts[0], parts[1] if len(parts) == 2 else None))
    if not lines:
        raise DataError(f"split file is empty: {path}")
    return lines


def write_split_file(path: str | Path, rows: Iterable[str | tuple[str, str | None]]) -> int:
    """Write rows (``"id"`` or ``(image, mask)``; mask may be None) one per line; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        if isinstance(row, str):
            out.append(row)
        else:
            image, mask = row
            out.append(image if mask is None else f"{image} {mask}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in out))
    tmp.replace(path)
    return len(out)


def parse_ratio(text: str | float) -> float:
    """'1/8', '1_8', '0.125' or 0.125 → 0.125; must lie in (0, 1]."""
    try:
        if isinstance(text, (int, float)):
            value = float(text)
        else:
            s = str(text).strip().replace("_", "/")
            num, _, den = s.partition("/")
            value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"ratio must look like 1/8 or 0.125, got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {text!r}")
    return value


def make_splits(ids: Sequence, ratio: float | str | None = None, count: int | None = None, seed: int = 0) -> tuple[list, list]:
    """Draw ``count`` (or ``round(ratio * len(ids))``, halves up) labeled ids; the rest are unlabeled.

    Reproducible for a seed, disjoint, and both lists keep the input order.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ValueError("make_splits: ids contain duplicates")
    if (ratio is None) == (count is None):
        raise ValueError("make_splits: give exactly one of ratio or count")
    n = int(count) if count is not None else int(math.floor(parse_ratio(ratio) * len(ids) + 0.5))
    if not 1 <= n <= len(ids):
        raise ValueError(f"make_splits: {n} labeled out of {len(ids)} ids is not possible")
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:n])
    labeled = [x for i, x in enumerate(ids) if i in chosen]
    unlabeled = [x for i, x in enumerate(ids) if i not in chosen]
    return labeled, unlabeled


# --------------------------------------------------------------------------- CLI verb


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``splits`` verb on an argparse subparsers object."""
    p = subparsers.add_parser(
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
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Write the split files and print a one-line summary; returns the exit status."""
    from rc2l.data.datasets import make_reader  # late import: datasets imports this module

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


def main(argv: list[str] | None = None) -> int:
    """``python -m rc2l.data.splits ...``: the verb without the full CLI."""
    parser = argparse.ArgumentParser(prog="rc2l")
    add_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RC2LError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
