"""Dataset readers (CamVid, PASCAL VOC 2012, Cityscapes, a user's folder) with one sample format.

A *reader* knows one on-disk layout: its classes, its own split lists, how to find the files of
an id, and how raw mask values map to class indices (a 256-entry lookup table). A
:class:`SegDataset` holds resolved :class:`Item` s and a transform and returns samples:

- labeled / val: ``{"image": float32 (3, h, w) in [0, 1], "mask": int64 (h, w), "id": str}``
- unlabeled: ``{"image_w", "image_s": float32 (3, h, w), "valid": bool (h, w), "id": str}``

Errors name the file (and the split-file line): layout problems surface at construction,
unreadable or wrong files when a sample is loaded. With ``bad_samples="skip"`` a bad sample
is logged once and returned as None; :func:`collate` drops it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors

from rc2l.data.cache import DecodedCache
from rc2l.data.formats import IGNORE, IMAGE_EXTS, voc_palette
from rc2l.data.imageio import read_image, read_mask  # the reader predict uses too: same pixels
from rc2l.data.splits import SplitLine, read_split_file
from rc2l.errors import DataError

log = logging.getLogger("rc2l.data")


@dataclass(frozen=True)
class Item:
    """One sample's files; ``mask`` is None for an image that has no label."""

    image: Path
    mask: Path | None
    id: str


def make_lut(mapping: dict[int, int]) -> np.ndarray:
    """Raw mask value → class index table, (256,) int16; -1 marks a value that is an error."""
    lut = np.full(256, -1, np.int16)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


def _identity_lut(num_classes: int) -> np.ndarray:
    return make_lut({**{i: i for i in range(num_classes)}, IGNORE: IGNORE})


# --------------------------------------------------------------------------- labels


def map_labels(raw: np.ndarray, lut: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    """Raw mask values → uint8 class indices (255 = ignore); a value outside the classes is a DataError."""
    if raw.dtype != np.uint8:
        too_big = raw[(raw < 0) | (raw > 255)]
        if too_big.size:
            raise DataError(f"mask {path}: label value {int(too_big[0])} is not a class of {dataset}")
        raw = raw.astype(np.uint8)
    mapped = lut[raw]
    bad = raw[mapped < 0]
    if bad.size:
        valid = np.flatnonzero(lut >= 0)
        raise DataError(
            f"mask {path}: label value {int(bad[0])} is not a class of {dataset} (valid raw values: {_ranges(valid)})"
        )
    return mapped.astype(np.uint8)


def _ranges(values: np.ndarray) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}..{v}")
            start = None
    return ", ".join(out)


# --------------------------------------------------------------------------- readers


class Reader:
    """Base reader. Subclasses set the class list and implement the layout hooks."""

    name = ""
    class_names: list[str] = []
    palette: list[tuple[int, int, int]] = []

    def __init__(self, root: str | Path):
        if not str(root):
            raise DataError(f"dataset root for {self.name} is not set (data.root)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"dataset root not found: {self.root} (data.root)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # hooks --------------------------------------------------------------
    def list_split(self, split: str, need_mask: bool = True) -> list[Item]:
        """The dataset's own list named ``split`` (e.g. train / val)."""
        raise NotImplementedError

    def find_id(self, token: str) -> Path | None:
        """Image path of a bare id/stem, or None."""
        raise NotImplementedError

    def mask_for_image(self, image: Path) -> Path | None:
        """Where this layout keeps the mask of ``image`` (the path may not exist)."""
        raise NotImplementedError

    def lut(self, mask: Path) -> np.ndarray:
        return _identity_lut(self.num_classes)

    def id_of(self, image: Path) -> str:
        return image.stem

    # shared -------------------------------------------------------------
    def item_for_line(self, line: SplitLine, where: str, need_mask: bool) -> Item:
        """Resolve one split line (``image mask``, ``image`` or a bare id) to existing files."""
        if line.mask is not None:
            image, mask = self.root / line.image, self.root / line.mask
            if not image.is_file():
                raise DataError(f"{where}: image not found: {image}")
            if not mask.is_file():
                raise DataError(f"{where}: mask not found: {mask}")
            return Item(image, mask, self.id_of(image))
        image = self.root / line.image
        if not (image.suffix.lower() in IMAGE_EXTS and image.is_file()):
            image = self.find_id(line.image)
            if image is None:
                raise DataError(f"{where}: no image found for '{line.image}' under {self.root}")
        mask = self.mask_for_image(image)
        if mask is not None and not mask.is_file():
            if need_mask:
                raise DataError(f"{where}: mask not found: {mask}")
            mask = None
        if need_mask and mask is None:
            raise DataError(f"{where}: '{line.image}' has no mask, but a labeled image needs one")
        return Item(image, mask, self.id_of(image))

    def items_from_file(self, path: str | Path, need_mask: bool) -> list[Item]:
        """Read a split file and check every file it names exists (errors give the line)."""
        path = Path(path)
        return [self.item_for_line(line, f"{path}:{line.lineno}", need_mask) for line in read_split_file(path)]

    def rel_row(self, item: Item) -> tuple[str, str | None]:
        """(image, mask) paths relative to the root, for writing split files."""
        rel = lambda p: p.relative_to(self.root).as_posix()  # noqa: E731
        return rel(item.image), None if item.mask is None else rel(item.mask)


def _find_with_ext(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        for e in (ext, ext.upper()):
            p = folder / f"{stem}{e}"
            if p.is_file():
                return p
    return None


class CamVidReader(Reader):
    """CamVid (SegNet 11 classes): images/<split>/<stem>.webp, labels/<split>/<stem>.png,
    splits/<split>.txt with stems. Raw value 11 (void) → 255."""

    name = "camvid"
    class_names = [
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "signsymbol",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    ]
    palette = [
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ]
    _lut = make_lut({**{i: i for i in range(11)}, 11: IGNORE, IGNORE: IGNORE})

    def list_split(self, split: str, need_mask: bool = True) -> list[Item]:
        path = self.root / "splits" / f"{split}.txt"
        items = []
        for line in read_split_file(path):
            if line.mask is None and "/" not in line.image:  # a stem: look in images/<split>/ first
                image = _find_with_ext(self.root / "images" / split, line.image)
                if image is not None:
                    line = SplitLine(line.lineno, image.relative_to(self.root).as_posix(), None)
            items.append(self.item_for_line(line, f"{path}:{line.lineno}", need_mask))
        return items

    def find_id(self, token: str) -> Path | None:
        folders = sorted(p for p in (self.root / "images").glob("*") if p.is_dir())
        for folder in folders:
            if (p := _find_with_ext(folder, token)) is not None:
                return p
        return None

    def mask_for_image(self, image: Path) -> Path | None:
        return self.root / "labels" / image.parent.name / f"{image.stem}.png"

    def lut(self, mask: Path) -> np.ndarray:
        return self._lut


class VOCReader(Reader):
    """PASCAL VOC 2012 (root = VOC2012 folder, or VOCdevkit, or its parent): JPEGImages/<id>.jpg,
    SegmentationClass/<id>.png (palette indices; 255 = border), SBD's SegmentationClassAug/<id>.png
    used where the official mask is missing (the blended set), ImageSets/Segmentation/<split>.txt
    (also ImageSets/SegmentationAug/, e.g. train_aug.txt)."""

    name = "voc"
    class_names = [
        "background",
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ]
    palette = voc_palette(21)

    def __init__(self, root: str | Path):
        super().__init__(root)
        for cand in (self.root, self.root / "VOC2012", self.root / "VOCdevkit" / "VOC2012"):
            if (cand / "JPEGImages").is_dir():
                self.root = cand
                break
        else:
            raise DataError(
                f"not a PASCAL VOC 2012 root: {self.root} has no JPEGImages/ (nor VOC2012/ or VOCdevkit/VOC2012/)"
            )

    def list_split(self, split: str, need_mask: bool = True) -> list[Item]:
        sets = self.root / "ImageSets"
        for path in (sets / "Segmentation" / f"{split}.txt", sets / "SegmentationAug" / f"{split}.txt"):
            if path.is_file():
                return self.items_from_file(path, need_mask)
        raise DataError(f"split file not found: {sets / 'Segmentation' / f'{split}.txt'}")

    def find_id(self, token: str) -> Path | None:
        p = self.root / "JPEGImages" / f"{token}.jpg"
        return p if p.is_file() else _find_with_ext(self.root / "JPEGImages", token)

    def mask_for_image(self, image: Path) -> Path | None:
        official = self.root / "SegmentationClass" / f"{image.stem}.png"
        aug = self.root / "SegmentationClassAug" / f"{image.stem}.png"
        return aug if not official.is_file() and aug.is_file() else official


# Cityscapes labelIds (0..33) → trainIds (0..18), everything else → 255.
_CS_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


class CityscapesReader(Reader):
    """Cityscapes: leftImg8bit/<split>/<city>/<x>_leftImg8bit.png with gtFine/<split>/<city>/
    <x>_gtFine_labelTrainIds.png if present, else <x>_gtFine_labelIds.png (mapped to trainIds)."""

    name = "cityscapes"
    class_names = [
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ]
    palette = [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ]
    # 255 in a labelIds file is the license plate (-1); it is ignored like every non-train id.
    _label_ids_lut = make_lut({**{i: IGNORE for i in range(34)}, **_CS_TRAIN_IDS, IGNORE: IGNORE})
    _suffix = "_leftImg8bit"

    def list_split(self, split: str, need_mask: bool = True) -> list[Item]:
        folder = self.root / "leftImg8bit" / split
        images = sorted(folder.glob(f"*/*{self._suffix}.png"))
        if not images:
            raise DataError(f"no images found in {folder} (expected <city>/<name>{self._suffix}.png)")
        items = []
        for image in images:
            rel = image.relative_to(self.root).as_posix()
            items.append(self.item_for_line(SplitLine(0, rel, None), str(image), need_mask))
        return items

    def find_id(self, token: str) -> Path | None:
        base = token.removesuffix(self._suffix)
        city = base.split("_")[0]
        for split in ("train", "val", "test", "train_extra"):
            p = self.root / "leftImg8bit" / split / city / f"{base}{self._suffix}.png"
            if p.is_file():
                return p
        return None

    def mask_for_image(self, image: Path) -> Path | None:
        base = image.name.removesuffix(f"{self._suffix}.png")
        folder = self.root / "gtFine" / image.parent.parent.name / image.parent.name
        train_ids = folder / f"{base}_gtFine_labelTrainIds.png"
        return train_ids if train_ids.is_file() else folder / f"{base}_gtFine_labelIds.png"

    def lut(self, mask: Path) -> np.ndarray:
        return _identity_lut(19) if mask.name.endswith("labelTrainIds.png") else self._label_ids_lut

    def id_of(self, image: Path) -> str:
        return image.stem.removesuffix(self._suffix)


class FolderReader(Reader):
    """A user's own data: images/*.{jpg,jpeg,png,webp,bmp}, masks/<stem>.png (class indices,
    255 = ignore), classes.txt (``name r g b`` per class). Images without a mask are unlabeled.

    Lists: ``splits/<name>.txt`` in the root if present; otherwise "train" = every image with a
    mask, "unlabeled" = every image without one, "val" = every image with a mask (a warning
    says so: better give splits/val.txt)."""

    name = "folder"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.class_names, self.palette = self._read_classes(self.root / "classes.txt")
        if not (self.root / "images").is_dir():
            raise DataError(f"folder dataset {self.root} has no images/ folder")
        self._index: dict[str, Path] | None = None

    @staticmethod
    def _read_classes(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
        if not path.is_file():
            raise DataError(f"classes file not found: {path} (one line per class: name r g b)")
        names, palette = [], []
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.split()
            try:
                if len(parts) < 4:
                    raise ValueError
                rgb = tuple(int(v) for v in parts[-3:])
                if not all(0 <= v <= 255 for v in rgb):
                    raise ValueError
            except ValueError:
                raise DataError(f"{path}:{n}: expected 'name r g b' with 0..255 colours, got {s!r}") from None
            names.append(" ".join(parts[:-3]))
            palette.append(rgb)
        if not names:
            raise DataError(f"classes file is empty: {path}")
        if len(names) > 255:
            raise DataError(f"{path}: {len(names)} classes; at most 255 fit a mask (255 = ignore)")
        return names, palette

    def _images(self) -> dict[str, Path]:
        if self._index is None:
            index: dict[str, Path] = {}
            for p in sorted((self.root / "images").iterdir()):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                    if p.stem in index:
                        raise DataError(f"two images share the stem '{p.stem}': {index[p.stem]} and {p}")
                    index[p.stem] = p
            self._index = index
        return self._index

    def list_split(self, split: str, need_mask: bool = True) -> list[Item]:
        path = self.root / "splits" / f"{split}.txt"
        if path.is_file():
            return self.items_from_file(path, need_mask)
        items = [
            Item(p, m if m.is_file() else None, stem)
            for stem, p in self._images().items()
            for m in [self.mask_for_image(p)]
        ]
        if split == "unlabeled":
            return [Item(it.image, None, it.id) for it in items if it.mask is None]
        if split not in ("train", "val"):
            raise DataError(f"split file not found: {path}")
        if split == "val":
            log.warning("folder dataset %s has no splits/val.txt: validating on every labeled image", self.root)
        labeled = [it for it in items if it.mask is not None]
        if not labeled:
            raise DataError(f"folder dataset {self.root}: no image in images/ has a mask in masks/")
        return labeled if need_mask else items

    def find_id(self, token: str) -> Path | None:
        return self._images().get(token)

    def mask_for_image(self, image: Path) -> Path | None:
        return self.root / "masks" / f"{image.stem}.png"


READERS = {"camvid": CamVidReader, "voc": VOCReader, "cityscapes": CityscapesReader, "folder": FolderReader}


def make_reader(name: str, root: str | Path) -> Reader:
    """Reader for dataset ``name`` at ``root``; an unknown name is a DataError."""
    if name not in READERS:
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(READERS)}, synthetic)")
    return READERS[name](root)


# --------------------------------------------------------------------------- dataset


_warned: set[str] = set()


class SegDataset(Dataset):
    """Resolved items + a transform → samples (format in the module docstring).

    transform: ``TrainTransform`` / ``EvalTransform`` (need the mask) or
    ``UnlabeledTransform`` (``needs_mask = False``: the mask is never read).
    bad_samples: "error" raises the DataError; "skip" logs it once and returns None.
    """

    def __init__(self, reader: Reader, items: list[Item], transform, bad_samples: str = "error", cache: bool = False):
        if bad_samples not in ("error", "skip"):
            raise ValueError(f"bad_samples must be 'error' or 'skip', got {bad_samples!r}")
        self.reader, self.items, self.transform, self.bad_samples = reader, list(items), transform, bad_samples
        self.needs_mask = getattr(transform, "needs_mask", True)
        # an image may be stored already at data.resize beside its label at the label's own size
        # (smaller files, the same model input: the transform's resize is a no-op on such an image)
        self.resized = tuple(getattr(transform, "resize", None) or ())
        if self.needs_mask:
            missing = next((it for it in self.items if it.mask is None), None)
            if missing is not None:
                raise DataError(f"labeled image {missing.image} has no mask")
        # data.cache: decode each file once (a bad file raises on every read, it is never cached)
        self._read = DecodedCache(self.load) if cache else self.load

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
        """→ image uint8 (3, H, W), mask uint8 (H, W) class indices or None."""
        item = self.items[i]
        image = read_image(item.image)
        mask = None
        if self.needs_mask:
            raw = read_mask(item.mask)
            if raw.shape != image.shape[:2] and image.shape[:2] != self.resized:
                raise DataError(
                    f"mask {item.mask} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image "
                    f"{item.image} is {image.shape[1]}x{image.shape[0]}"
                )
            mask = tv_tensors.Mask(
                torch.from_numpy(map_labels(raw, self.reader.lut(item.mask), item.mask, self.reader.name))
            )
        return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()), mask

    def __getitem__(self, i: int) -> dict | None:
        try:
            image, mask = self._read(i)
        except DataError as e:
            if self.bad_samples != "skip":
                raise
            if str(e) not in _warned:
                _warned.add(str(e))
                log.warning("skipping bad sample: %s", e)
            return None
        sample = self.transform(image, mask)
        sample["id"] = self.items[i].id
        return sample


def collate(batch: list[dict | None]) -> dict | None:
    """``default_collate`` after dropping None (bad, skipped) samples; None if all are bad.

    The batch gets ``"num_skipped": int``, the samples dropped from it: the count travels with
    the batch, so it is right with DataLoader workers too (the trainer sums it).
    """
    good = [b for b in batch if b is not None]
    n_bad = len(batch) - len(good)
    if not good:
        return None
    out = default_collate(good)
    out["num_skipped"] = n_bad
    return out
