"""Write a copy of a dataset folder whose images are already resized to ``data.resize``.

Why: training and evaluation only ever see an image after the transform resizes it to
``data.resize`` (bilinear, antialiased); a copy that stores that result (lossless WebP) is
2-3x smaller to store or to move to another machine. Labels are copied unchanged (native size:
``eval.labels=native`` scores against them), and the dataset accepts an image of exactly
``data.resize`` beside a native-size label. Every written
image is decoded again and compared with the in-memory resize, so the copy feeds the model
bit-identical tensors.

    python scripts/resized_copy.py ../shared/data/camvid /tmp/camvid_240x320 --size 240 320
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rc2l.data.imageio import read_image
from rc2l.data.transforms import resize_pair

IMAGE_SUFFIXES = {".webp", ".png", ".jpg", ".jpeg", ".bmp"}


def resized(path: Path, size: list[int]) -> np.ndarray:
    """The image as the transform sees it after its resize → uint8 (H, W, 3)."""
    image = torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous()
    out, _ = resize_pair(image, None, size)
    return out.permute(1, 2, 0).contiguous().numpy()


def copy_tree(src: Path, dst: Path, size: list[int], images_dir: str = "images") -> int:
    """Every file of ``src`` into ``dst``; files under ``images_dir`` resized (as lossless WebP
    with the same stem). Returns the number of images written."""
    n = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(src)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.parts[0] != images_dir or path.suffix.lower() not in IMAGE_SUFFIXES:
            shutil.copy2(path, target)
            continue
        pixels = resized(path, size)
        target = target.with_suffix(".webp")
        Image.fromarray(pixels).save(target, "WEBP", lossless=True, quality=100, method=6)
        if not np.array_equal(read_image(target), pixels):
            raise SystemExit(f"error: {target}: lossless WebP did not round-trip")
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), required=True, help="the config's data.resize")
    a = ap.parse_args(argv)
    if not (a.src / "images").is_dir():
        raise SystemExit(f"error: {a.src}: no images/ folder")
    if a.dst.exists():
        raise SystemExit(f"error: {a.dst} exists; remove it or pick another folder")
    n = copy_tree(a.src, a.dst, list(a.size))
    print(f"wrote {n} images at {a.size[0]}x{a.size[1]} (HxW) and the rest unchanged to {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
