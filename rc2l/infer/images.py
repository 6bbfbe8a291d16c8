"""The images people actually have → uint8 (H, W, 3) RGB as the model was trained on.

Cameras and tools write EXIF-rotated JPEGs (turned upright here), 16-bit PNGs (scaled to 8 bit,
not clipped), RGBA / LA / palette images with transparency (composited over white), grayscale,
CMYK and multi-frame files (first frame). Folder inputs name what they skip and why.
"""

from __future__ import annotations

import glob
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from rc2l.data.formats import IMAGE_EXTS
from rc2l.errors import DataError, RC2LError

log = logging.getLogger("rc2l.predict")

READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer or float samples → uint8 by the range of the type (16 bit: × 255/65535), not clipping."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        peak = a.max(initial=0)
        top = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
    elif a.dtype.itemsize <= 2:  # uint16 (16-bit PNG/TIFF): by the type's range, even if the image is dark
        top = float(np.iinfo(a.dtype).max)
    else:  # int32/int64 (PIL's "I" mode, Python lists): 8- or 16-bit samples by their peak
        peak = int(a.max(initial=0))
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else float(peak)
    return np.clip(np.rint(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4) → (H, W, 3): transparent pixels become white, as image viewers show them."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.rint(rgba[..., :3].astype(np.float32) * a + 255.0 * (1 - a)).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image in any mode → uint8 (H, W, 3), upright by its EXIF orientation."""
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith(("I", "F")):  # 16-bit / 32-bit grey: scale by the sample range
        g = _scale_to_uint8(np.array(im))
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info or mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        return _over_white(np.array(im.convert("RGBA")))
    if mode != "RGB":  # L, 1, P, CMYK, YCbCr, LAB, HSV
        im = im.convert("RGB")
    return np.array(im)


def array_to_rgb(a: np.ndarray, where: str = "image array") -> np.ndarray:
    """(H, W), (H, W, 1|3|4) uint8 / uint16 / float → uint8 (H, W, 3)."""
    if not isinstance(a, np.ndarray):
        raise RC2LError(f"{where}: expected a numpy array, got {type(a).__name__}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or 0 in a.shape[:2]:
        raise RC2LError(f"{where}: expected an H×W×3 array, got shape {a.shape}")
    a = _scale_to_uint8(a)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return _over_white(a) if a.shape[2] == 4 else np.ascontiguousarray(a)


def read_image(path: str | Path) -> np.ndarray:
    """Decode fully (so truncated files fail) → uint8 (H, W, 3), upright."""
    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_rgb(im)
    except READ_ERRORS as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def header_size(path: Path) -> tuple[int, int]:
    """(H, W) of the upright image from the header (cheap; the full decode may still fail)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except READ_ERRORS as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def as_rgb(image, where: str = "image") -> np.ndarray:
    """A path, a PIL image or an array → uint8 (H, W, 3)."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    return array_to_rgb(image, where)


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
