"""Split files: read, write, and draw labeled/unlabeled partitions (a leaf: no CLI, no dataset
imports; the `rc2l splits` verb lives in rc2l/cli.py).

Format (the field's, as UniMatch writes it): ``splits/<dataset>/<split>/{labeled,unlabeled}.txt``
and ``splits/<dataset>/val.txt``; each line is ``image_rel_path mask_rel_path`` relative to
the dataset root, or just an id/stem (the reader then finds the files). Blank lines and lines
starting with ``#`` are skipped.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from rc2l.errors import DataError


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


def make_splits(
    ids: Sequence, ratio: float | str | None = None, count: int | None = None, seed: int = 0
) -> tuple[list, list]:
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
