"""The conventions every reader, transform and predictor shares: the ignore label and the
image files we read (whatever Pillow decodes)."""

from __future__ import annotations

from PIL import features

IGNORE = 255  # label value ignored by every loss and metric
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif") + (
    (".avif",) if features.check("avif") else ()
)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The standard PASCAL VOC colour map (bit-interleaved)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out
