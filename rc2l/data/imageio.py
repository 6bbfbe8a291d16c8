"""The one image reader that training, evaluation and prediction share, so all three see the
same pixels.

Cameras and tools write EXIF-rotated JPEGs (turned upright here), 16-bit PNGs (scaled to 8 bit,
not clipped), RGBA / LA / palette images with transparency (composited over white), grayscale,
CMYK and multi-frame files (first frame).

Masks are label maps: their values are kept as they are, never converted. A mask is turned by
its own EXIF orientation tag (a mask PNG normally has none) and by nothing else, because labels
are drawn on the photo as it is shown, i.e. upright: the upright photo and its mask line up.

Every file is decoded fully, so a truncated file fails here; Pillow's decompression-bomb limit
stays on, and a zero-byte, truncated or oversized file is one ``DataError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from rc2l.errors import DataError, RC2LError

READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MASK_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")
ORIENTATION = 0x0112


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


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a single-channel mask → (H, W) raw values (palette indices for 'P'), upright by its
    own EXIF tag if it has one (transposing moves pixels, it never changes a label value)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in MASK_MODES:
                raise DataError(f"mask {path} must be single-channel (palette or grey), not mode {im.mode}")
            return np.array(ImageOps.exif_transpose(im))
    except DataError:
        raise
    except READ_ERRORS as e:
        raise DataError(f"cannot read mask {path}: {e}") from None


def header_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the upright image from the header (cheap; the full decode may still fail)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(ORIENTATION, 1)
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
