"""From the config to datasets: which files, which partition, which transform.

``build_datasets(cfg)`` → ``{"labeled", "unlabeled", "val"}``:
- data.split == "full": labeled = the whole train list (data.train_split), no unlabeled set;
- otherwise labeled/unlabeled = ``<splits_dir>/<split>/{labeled,unlabeled}.txt`` (checked disjoint);
- val = ``<splits_dir>/<val_split>.txt`` if present, else the dataset's own val list.
For the synthetic dataset data.split is "full", a ratio ("1_8", "0.125") or a count ("20").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rc2l.config import Config, ConfigError
from rc2l.data import synthetic
from rc2l.data.datasets import Item, Reader, SegDataset, collate, make_reader  # noqa: F401 (collate re-exported)
from rc2l.data.splits import make_splits
from rc2l.data.transforms import EvalTransform, TrainTransform, UnlabeledTransform
from rc2l.errors import DataError

REPO_SPLITS = Path(__file__).resolve().parents[2] / "splits"  # rc2l/data/build.py → the repository


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = 255


def dataset_info(cfg: Config) -> DatasetInfo:
    """Classes and palette of ``cfg.data``'s dataset; checks data.num_classes against them."""
    d = cfg.data
    if d.name == "synthetic":
        info = DatasetInfo("synthetic", synthetic.NUM_CLASSES, list(synthetic.CLASS_NAMES), list(synthetic.PALETTE))
    else:
        r = make_reader(d.name, d.root)
        info = DatasetInfo(r.name, r.num_classes, list(r.class_names), list(r.palette))
    if d.num_classes not in (0, info.num_classes):
        raise ConfigError(
            f"config key 'data.num_classes' = {d.num_classes} but dataset '{d.name}' has "
            f"{info.num_classes} classes; set it to 0 (the dataset's own) or {info.num_classes}"
        )
    return info


def splits_dir(cfg: Config) -> Path:
    """data.splits_dir (absolute, or relative to the cwd or the repository), default splits/<name>."""
    d = cfg.data
    if not d.splits_dir:
        return REPO_SPLITS / d.name
    p = Path(d.splits_dir).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_SPLITS.parent / p


def check_disjoint(labeled: list[Item], unlabeled: list[Item], where_l: Path, where_u: Path) -> None:
    """A labeled image that is also unlabeled would leak labels into the unsupervised loss."""
    lab = {it.image.resolve(): it.id for it in labeled}
    both = [lab[p] for p in (it.image.resolve() for it in unlabeled) if p in lab]
    if both:
        raise DataError(f"{where_l} and {where_u} share {len(both)} image(s), e.g. '{both[0]}'")


def _base_list(reader: Reader, sdir: Path, split: str, need_mask: bool) -> list[Item]:
    path = sdir / f"{split}.txt"
    if path.is_file():
        return reader.items_from_file(path, need_mask)
    return reader.list_split(split, need_mask)


def _synthetic(cfg: Config, want_unlabeled: bool, only_val: bool, train_t, unl_t, eval_t) -> dict:
    d, s = cfg.data, cfg.data.synthetic
    val = synthetic.SyntheticDataset(s, "val", None, eval_t)
    if only_val:
        return {"labeled": None, "unlabeled": None, "val": val}
    labeled_idx, unlabeled_idx = list(range(s.num_train)), []
    if d.split != "full":
        try:
            if d.split.isdigit():
                labeled_idx, unlabeled_idx = make_splits(labeled_idx, count=int(d.split), seed=s.seed)
            else:
                labeled_idx, unlabeled_idx = make_splits(labeled_idx, ratio=d.split, seed=s.seed)
        except ValueError as e:
            raise ConfigError(f"config key 'data.split' = {d.split!r} for the synthetic dataset: {e}") from None
    return {
        "labeled": synthetic.SyntheticDataset(s, "train", labeled_idx, train_t),
        "unlabeled": synthetic.SyntheticDataset(s, "train", unlabeled_idx, unl_t) if want_unlabeled else None,
        "val": val,
    }


def build_datasets(cfg: Config, only_val: bool = False, unlabeled_views: int = 0) -> dict:
    """→ {"labeled": train-transform dataset, "unlabeled": dataset or None, "val": eval dataset}.

    ``unlabeled_views``: the strong views each unlabeled sample carries, as the training method
    asks (0: the method uses no unlabeled images). "unlabeled" is None then, or for data.split
    "full" (except a folder dataset, whose images without a mask are its unlabeled set); with
    ``only_val`` (eval, predict) only "val" is built and the train partition is not read at all.
    """
    d = cfg.data
    dataset_info(cfg)
    train_t = TrainTransform(d.crop_size, d.scale_range, d.resize)
    unl_t = UnlabeledTransform(d.crop_size, d.scale_range, d.resize, strong_views=max(unlabeled_views, 1))
    eval_t = EvalTransform(d.resize, native_labels=cfg.eval.labels == "native")
    want_unlabeled = unlabeled_views > 0 and d.split != "full"
    if d.name == "synthetic":
        return _synthetic(cfg, want_unlabeled, only_val, train_t, unl_t, eval_t)

    reader = make_reader(d.name, d.root)
    sdir = splits_dir(cfg)
    if only_val:
        val = _base_list(reader, sdir, d.val_split, need_mask=True)
        return {"labeled": None, "unlabeled": None, "val": SegDataset(reader, val, eval_t, d.bad_samples, d.cache)}
    unlabeled = None
    if d.split == "full":
        labeled = _base_list(reader, sdir, d.train_split, need_mask=True)
        if d.name == "folder" and unlabeled_views > 0:  # images without a mask are the unlabeled set
            unlabeled = _base_list(reader, sdir, "unlabeled", need_mask=False)
            if not unlabeled:
                raise DataError(
                    f"method={cfg.method} needs unlabeled images: {reader.root}/images has none without a mask"
                )
            check_disjoint(labeled, unlabeled, sdir / f"{d.train_split}.txt", sdir / "unlabeled.txt")
    else:
        folder = sdir / d.split
        if not folder.is_dir():
            hint = ""
            if d.split.isdigit() and sdir.is_dir():
                near = [p.name for p in sdir.iterdir() if p.is_dir() and p.name.replace("_", "") == d.split]
                if near:  # YAML 1.1 reads an unquoted 1_8 as the integer 18
                    hint = f"; did you mean '{near[0]}'? quote it in YAML / overrides: data.split='\"{near[0]}\"'"
            raise DataError(f"split folder not found: {folder} (data.split = {d.split!r}, data.splits_dir){hint}")
        labeled = reader.items_from_file(folder / "labeled.txt", need_mask=True)
        if want_unlabeled:
            unlabeled = reader.items_from_file(folder / "unlabeled.txt", need_mask=False)
            check_disjoint(labeled, unlabeled, folder / "labeled.txt", folder / "unlabeled.txt")
    val = _base_list(reader, sdir, d.val_split, need_mask=True)
    return {
        "labeled": SegDataset(reader, labeled, train_t, d.bad_samples, d.cache),
        "unlabeled": None if unlabeled is None else SegDataset(reader, unlabeled, unl_t, d.bad_samples, d.cache),
        "val": SegDataset(reader, val, eval_t, d.bad_samples, d.cache),
    }
