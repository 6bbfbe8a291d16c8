import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_CS_LABEL_IDS, DATA_H, DATA_W, data_config, data_labels, data_rgb, data_save
from PIL import Image

from rc2l.cli import main as splits_main
from rc2l.config import ConfigError
from rc2l.data import datasets as D
from rc2l.data.build import build_datasets, dataset_info
from rc2l.errors import DataError


def _raw_mask(path) -> np.ndarray:
    return np.array(Image.open(path))


# ------------------------------------------------------------------ readers on tiny fixtures


def test_camvid_reader(data_camvid):
    ds = build_datasets(data_config(name="camvid", root=str(data_camvid), crop_size=[8, 8]))
    assert (len(ds["labeled"]), ds["unlabeled"], len(ds["val"])) == (4, None, 2)
    s = ds["val"][0]
    assert s["id"] == "0001TP_001000" and set(s) == {"image", "mask", "id"}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 12, 16)
    assert torch.equal(s["image"], torch.from_numpy(data_rgb(1000)).permute(2, 0, 1).float() / 255)  # lossless
    raw = torch.from_numpy(data_labels(1000, list(range(12)))).long()
    assert s["mask"].dtype == torch.int64 and torch.equal(s["mask"], torch.where(raw == 11, 255, raw))
    t = ds["labeled"][1]
    assert t["image"].shape == (3, 8, 8) and t["mask"].shape == (8, 8)
    only = build_datasets(data_config(name="camvid", root=str(data_camvid)), only_val=True)
    assert only["labeled"] is None and only["unlabeled"] is None and len(only["val"]) == 2
    info = dataset_info(data_config(name="camvid", root=str(data_camvid)))
    assert info.num_classes == 11 and info.class_names[3] == "road" and info.palette[0] == (128, 128, 128)


def test_camvid_split_files_both_formats(data_camvid, tmp_path):
    sdir = tmp_path / "sp"
    (sdir / "half").mkdir(parents=True)
    (sdir / "half" / "labeled.txt").write_text(
        "images/train/0001TP_000000.webp labels/train/0001TP_000000.png\n0001TP_000001\n"
    )
    (sdir / "half" / "unlabeled.txt").write_text(
        "0001TP_000002\nimages/train/0001TP_000003.webp labels/train/0001TP_000003.png\n"
    )
    ds = build_datasets(
        data_config(name="camvid", root=str(data_camvid), split="half", splits_dir=str(sdir), method="rc2l"),
        unlabeled_views=1,
    )
    assert [it.id for it in ds["labeled"].items] == ["0001TP_000000", "0001TP_000001"]
    assert len(ds["unlabeled"]) == 2 and len(ds["val"]) == 2
    u = ds["unlabeled"][0]
    assert set(u) == {"image_w", "image_s", "valid", "id"} and u["id"] == "0001TP_000002"
    assert u["valid"].dtype == torch.bool and u["image_s"].dtype == torch.float32


def test_voc_classic_and_blended(data_voc):
    ds = build_datasets(data_config(name="voc", root=str(data_voc)))  # root above VOCdevkit
    assert len(ds["labeled"]) == 2 and len(ds["val"]) == 1
    s = ds["val"][0]
    assert s["id"] == "2007_000002" and s["image"].shape == (3, 12, 16)
    assert torch.equal(s["mask"], torch.from_numpy(data_labels(2, [0, 5, 20, 255])).long())  # palette indices
    info = dataset_info(data_config(name="voc", root=str(data_voc)))
    assert info.num_classes == 21 and info.class_names[15] == "person"
    assert info.palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]

    aug = build_datasets(data_config(name="voc", root=str(data_voc / "VOCdevkit" / "VOC2012"), train_split="train_aug"))
    items = {it.id: it for it in aug["labeled"].items}
    assert len(items) == 4
    assert items["2008_000001"].mask.parent.name == "SegmentationClassAug"
    assert items["2007_000000"].mask.parent.name == "SegmentationClass"  # the official mask wins
    i = [it.id for it in aug["labeled"].items].index("2008_000001")
    assert torch.equal(
        D.SegDataset(aug["labeled"].reader, aug["labeled"].items, aug["val"].transform)[i]["mask"],
        torch.from_numpy(data_labels(4, [0, 5, 20, 255])).long(),
    )


def test_cityscapes_label_ids_and_train_ids(data_cityscapes):
    ds = build_datasets(data_config(name="cityscapes", root=str(data_cityscapes)))
    assert len(ds["labeled"]) == 2 and len(ds["val"]) == 1
    s = ds["val"][0]
    assert s["id"] == "frankfurt_000000_000000"
    raw = torch.from_numpy(data_labels(0, DATA_CS_LABEL_IDS)).long()
    want = torch.full_like(raw, 255)
    for label_id, train_id in ((7, 0), (26, 13), (33, 18)):
        want[raw == label_id] = train_id
    assert torch.equal(s["mask"], want)
    # a labelTrainIds file, when present, is read as is
    gt = data_cityscapes / "gtFine" / "val" / "frankfurt"
    data_save(gt / "frankfurt_000000_000000_gtFine_labelTrainIds.png", data_labels(5, [0, 18, 255]))
    s = build_datasets(data_config(name="cityscapes", root=str(data_cityscapes)))["val"][0]
    assert torch.equal(s["mask"], torch.from_numpy(data_labels(5, [0, 18, 255])).long())
    assert dataset_info(data_config(name="cityscapes", root=str(data_cityscapes))).num_classes == 19


def test_folder_with_unlabeled_images(data_folder, tmp_path):
    info = dataset_info(data_config(name="folder", root=str(data_folder)))
    assert info.class_names == ["background", "red car", "tree"] and info.palette[2] == (0, 128, 0)
    full = build_datasets(data_config(name="folder", root=str(data_folder)))
    assert sorted(it.id for it in full["labeled"].items) == ["a", "b"]
    # `rc2l splits` on a folder: masked images labeled, the others unlabeled (image-only lines)
    out = tmp_path / "splits" / "mine" / "all"
    assert splits_main(["splits", "--dataset", "folder", "--root", str(data_folder), "--out", str(out)]) == 0
    assert (out / "unlabeled.txt").read_text() == "images/c.webp\n"
    ds = build_datasets(
        data_config(
            name="folder",
            root=str(data_folder),
            split="all",
            splits_dir=str(out.parent),
            method="fixmatch",
            crop_size=[8, 8],
        ),
        unlabeled_views=1,
    )
    assert len(ds["labeled"]) == 2 and [it.id for it in ds["unlabeled"].items] == ["c"]
    assert ds["unlabeled"][0]["image_w"].shape == (3, 8, 8)
    assert ds["val"][1]["mask"].unique().tolist() == [0, 2]


# ------------------------------------------------------------------ the real CamVid


def test_real_camvid_with_committed_split(camvid_root):
    cfg = data_config(
        name="camvid", root=str(camvid_root), split="1_8", splits_dir="", method="rc2l", crop_size=[64, 64]
    )
    ds = build_datasets(cfg, unlabeled_views=1)
    assert (len(ds["labeled"]), len(ds["unlabeled"]), len(ds["val"])) == (46, 321, 101)
    s = ds["val"][0]
    assert s["image"].shape == (3, 360, 480) and s["mask"].shape == (360, 480)
    raw = torch.from_numpy(_raw_mask(ds["val"].items[0].mask)).long()
    assert torch.equal(s["mask"], torch.where(raw == 11, 255, raw))
    assert set(s["mask"].unique().tolist()) <= set(range(11)) | {255}
    assert ds["labeled"][0]["mask"].shape == (64, 64)


# ------------------------------------------------------------------ errors at construction


def test_missing_root_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="dataset root not found: .*nowhere"):
        build_datasets(data_config(name="camvid", root=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="unknown dataset 'kitti'"):
        D.make_reader("kitti", tmp_path)


def _split_dir(tmp_path, labeled: str, unlabeled: str = "0001TP_000003\n") -> Path:
    sdir = tmp_path / "sp"
    (sdir / "s").mkdir(parents=True, exist_ok=True)
    (sdir / "s" / "labeled.txt").write_text(labeled)
    (sdir / "s" / "unlabeled.txt").write_text(unlabeled)
    return sdir


def _build_split(root, sdir):
    return build_datasets(
        data_config(name="camvid", root=str(root), split="s", splits_dir=str(sdir), method="rc2l"), unlabeled_views=1
    )


def test_split_line_naming_a_missing_file(data_camvid, tmp_path):
    sdir = _split_dir(tmp_path, "0001TP_000000\nimages/train/gone.webp labels/train/gone.png\n")
    with pytest.raises(DataError, match=r"labeled\.txt:2: image not found: .*gone\.webp"):
        _build_split(data_camvid, sdir)
    sdir = _split_dir(tmp_path, "0001TP_000000\n\n0001TP_999999\n")
    with pytest.raises(DataError, match=r"labeled\.txt:3: no image found for '0001TP_999999'"):
        _build_split(data_camvid, sdir)


def test_overlap_empty_and_missing_split(data_camvid, tmp_path):
    sdir = _split_dir(
        tmp_path, "0001TP_000000\n0001TP_000001\n", "images/train/0001TP_000001.webp labels/train/0001TP_000001.png\n"
    )
    with pytest.raises(
        DataError, match=r"labeled\.txt and .*unlabeled\.txt share 1 image\(s\), e\.g\. '0001TP_000001'"
    ):
        _build_split(data_camvid, sdir)
    sdir = _split_dir(tmp_path, "\n# nothing\n")
    with pytest.raises(DataError, match=r"split file is empty: .*labeled\.txt"):
        _build_split(data_camvid, sdir)
    (sdir / "s" / "labeled.txt").unlink()
    with pytest.raises(DataError, match=r"split file not found: .*labeled\.txt"):
        _build_split(data_camvid, sdir)
    with pytest.raises(DataError, match=r"split folder not found: .*1_8"):
        build_datasets(data_config(name="camvid", root=str(data_camvid), split="1_8", splits_dir=str(sdir)))


def test_bad_classes_file_and_num_classes(data_folder, data_camvid):
    (data_folder / "classes.txt").write_text("background 0 0 0\ncar 255 0\n")
    with pytest.raises(DataError, match=r"classes\.txt:2:"):
        dataset_info(data_config(name="folder", root=str(data_folder)))
    with pytest.raises(ConfigError, match="data.num_classes.*11"):
        dataset_info(data_config(name="camvid", root=str(data_camvid), num_classes=12))
    assert dataset_info(data_config(name="camvid", root=str(data_camvid), num_classes=11)).num_classes == 11


# ------------------------------------------------------------------ errors at load time


def _val(root, bad_samples="error"):
    return build_datasets(data_config(name="camvid", root=str(root), bad_samples=bad_samples))["val"]


def test_corrupt_and_truncated_images(data_camvid):
    img = data_camvid / "images" / "val" / "0001TP_001000.webp"
    img.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read image .*0001TP_001000\.webp"):
        _val(data_camvid)[0]
    png = data_camvid / "images" / "val" / "0001TP_001001.png"
    data_save(png, data_rgb(5, 40, 40))
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    (data_camvid / "images" / "val" / "0001TP_001001.webp").unlink()
    with pytest.raises(DataError, match=r"cannot read image .*0001TP_001001\.png"):
        _val(data_camvid)[1]


def test_truncated_mask(data_camvid):
    m = data_camvid / "labels" / "val" / "0001TP_001000.png"
    data = m.read_bytes()
    m.write_bytes(data[: len(data) * 2 // 3])  # same size header, cut inside the pixel data
    with pytest.raises(DataError, match=r"cannot read mask .*0001TP_001000\.png"):
        _val(data_camvid)[0]


def test_size_mismatch_and_bad_label(data_camvid):
    data_save(data_camvid / "labels" / "val" / "0001TP_001000.png", np.zeros((10, 16), np.uint8))
    with pytest.raises(
        DataError, match=r"mask .*0001TP_001000\.png is 16x10 \(WxH\) but its image .*0001TP_001000\.webp is 16x12"
    ):
        _val(data_camvid)[0]
    bad = data_labels(1, [0, 3])
    bad[4, 5] = 12
    data_save(data_camvid / "labels" / "val" / "0001TP_001001.png", bad)
    with pytest.raises(DataError, match=r"0001TP_001001\.png: label value 12 is not a class of camvid"):
        _val(data_camvid)[1]


def test_skip_mode_returns_none_and_collate_drops_it(data_camvid, caplog):
    (data_camvid / "images" / "val" / "0001TP_001000.webp").write_bytes(b"garbage")
    val = _val(data_camvid, bad_samples="skip")
    with caplog.at_level(logging.WARNING, logger="rc2l.data"):
        assert val[0] is None and val[0] is None
    assert sum("0001TP_001000.webp" in r.getMessage() for r in caplog.records) == 1  # logged once
    batch = D.collate([val[0], val[1]])
    assert batch["image"].shape == (1, 3, 12, 16) and batch["id"] == ["0001TP_001001"] and batch["num_skipped"] == 1
    assert D.collate([None, None]) is None
    loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=D.collate)
    assert [(b["id"], b["num_skipped"]) for b in loader] == [(["0001TP_001001"], 1)]


# ------------------------------------------------------------------ one reader: EXIF, 16 bit


def _phone_folder(root: Path, ext: str, orientation: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A folder dataset of one phone photo stored sideways with an EXIF orientation tag, its mask
    drawn on the upright photo (h × w): a red block in the top-left area is class 1."""
    upright = np.full((h, w, 3), 96, np.uint8)
    labels = np.zeros((h, w), np.uint8)
    upright[0:16, 0:24] = (255, 0, 0)
    labels[0:16, 0:24] = 1
    # 6 = "rotate 90° clockwise to display", 8 = counter-clockwise: store the inverse turn
    stored = np.rot90(upright, k=1 if orientation == 6 else -1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.ascontiguousarray(stored)).save(root / "images" / f"p{ext}", exif=exif, quality=95)
    data_save(root / "masks" / "p.png", labels)
    (root / "classes.txt").write_text("background 96 96 96\nred 255 0 0\n")
    return upright, labels


@pytest.mark.parametrize(
    "ext,orientation,h,w",
    [(".jpg", 6, 40, 40), (".png", 8, 40, 40), (".jpg", 8, 32, 48), (".png", 6, 48, 32)],
)
def test_exif_rotated_photos_align_with_masks_drawn_upright(tmp_path, ext, orientation, h, w):
    """Training sees the photo upright, as predict does and as its labels were drawn: a square
    photo is not silently 90° off its mask, a non-square one is not refused as a size mismatch."""
    root = tmp_path / "phone"
    upright, labels = _phone_folder(root, ext, orientation, h, w)
    sample = build_datasets(data_config(name="folder", root=str(root)))["val"][0]
    image, mask = sample["image"], sample["mask"]
    assert tuple(image.shape) == (3, h, w) and tuple(mask.shape) == (h, w)
    red = (image[0] > 0.7) & (image[1] < 0.3)
    assert (red == (mask == 1)).float().mean() > 0.98
    assert (mask.numpy() == labels).all()
    err = np.abs(image.permute(1, 2, 0).numpy() * 255 - upright)
    assert err.max() < 1 if ext == ".png" else err.mean() < 8  # JPEG: lossy at the block's edges


def test_mask_with_its_own_orientation_tag_is_turned_too(tmp_path):
    """A mask that carries an orientation tag follows the same rule as its photo, so a pair
    saved sideways by the same tool stays aligned."""
    root = tmp_path / "phone"
    upright, labels = _phone_folder(root, ".png", 6, 32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(labels, k=1))).save(root / "masks" / "p.png", exif=exif)
    sample = build_datasets(data_config(name="folder", root=str(root)))["val"][0]
    assert (sample["mask"].numpy() == labels).all()


def test_16bit_png_training_input_is_scaled_not_clipped(data_folder):
    """A 16-bit grey PNG at 40000/65535 trains as 156/255 (as predict reads it), not as white."""
    (data_folder / "images" / "b.png").unlink()
    Image.fromarray(np.full((DATA_H, DATA_W), 40000, np.uint16)).save(data_folder / "images" / "b.png")
    ds = build_datasets(data_config(name="folder", root=str(data_folder)))["val"]
    image = ds[[it.id for it in ds.items].index("b")]["image"]
    assert torch.allclose(image, torch.full_like(image, round(40000 * 255 / 65535) / 255), atol=1e-6)
