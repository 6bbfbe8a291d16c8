"""The images people actually have → uint8 (H, W, 3) RGB as the model was trained on.

Decoding is :mod:`rc2l.data.imageio`, the same reader training and evaluation use (EXIF turned
upright, 16-bit scaled, RGBA / palette / grey / CMYK); this module adds the file inputs of
``predict``: folders and globs, and naming what they skip and why.
"""

from __future__ import annotations

import glob
import logging
from collections import Counter
from pathlib import Path

from rc2l.data.formats import IMAGE_EXTS

log = logging.getLogger("rc2l.predict")

# ----------------------------------------------------------------------------- file inputs


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def skipped_line(folder: str, skipped: list[Path]) -> str:
    """One line: how many files of which kind a folder search skipped, and why."""
    broken = [p for p in skipped if p.is_symlink() and not p.exists()]
    others = [p for p in skipped if p not in broken]
    parts = []
    if others:
        kinds = Counter(p.suffix.lower() or "(no extension)" for p in others)
        listed = ", ".join(f"{n} {ext}" for ext, n in sorted(kinds.items()))
        parts.append(
            f"skipped {len(others)} file(s) that are not a supported image type ({listed}); "
            f"supported: {' '.join(IMAGE_EXTS)}"
        )
    if broken:
        names = ", ".join(str(p) for p in broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        parts.append(f"skipped {len(broken)} link(s) that lead nowhere or to themselves: {names}")
    return f"note: {folder}: " + "; ".join(parts)


def expand_inputs(inputs: list[str], out_dir: Path) -> tuple[list[tuple[Path, str]], list[str], list[str]]:
    """INPUTs (files, folders, globs) → ([(path, base name)], [error lines], [note lines]).

    Folders are searched recursively and keep relative subpaths; files under ``out_dir`` are
    skipped (a previous run's outputs); a file given twice is predicted once; each folder
    names in one note the files it skipped."""
    found: list[tuple[Path, str]] = []
    errors: list[str] = []
    notes: list[str] = []
    seen: set[Path] = set()
    out_res = out_dir.resolve()

    def add(p: Path, name: str) -> bool:
        r = p.resolve()
        if out_res in r.parents or out_res == r:
            return False
        if r not in seen:
            seen.add(r)
            found.append((p, name))
        return True

    def add_folder(d: Path, label: str) -> int:
        n, skipped = 0, []
        for p in sorted(d.rglob("*")):
            if p.is_symlink() and not p.exists():  # dangling, or a loop (a link to itself)
                skipped.append(p)
                continue
            if not p.is_file() or out_res in p.resolve().parents:
                continue
            if _is_image(p):
                n += add(p, p.relative_to(d).with_suffix("").as_posix())
            elif not p.name.startswith("."):
                skipped.append(p)
        if skipped:
            notes.append(skipped_line(label, skipped))
        return n

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            if add_folder(p, item) == 0:
                errors.append(f"{item}: no images in this folder ({', '.join(IMAGE_EXTS)})")
        elif p.is_file():
            add(p, p.stem)
        elif glob.has_magic(item):
            n = 0
            for m in map(Path, sorted(glob.glob(str(p), recursive=True))):
                if m.is_dir():
                    n += add_folder(m, str(m))
                elif _is_image(m):
                    n += add(m, m.stem)
            if n == 0:
                errors.append(f"{item}: no image matches this pattern")
        elif p.is_symlink():
            errors.append(f"{item}: a link that leads nowhere or to itself")
        else:
            errors.append(f"{item}: no such file or folder")
    return found, errors, notes
