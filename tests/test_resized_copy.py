"""scripts/resized_copy.py: a copy whose images are stored at data.resize feeds the model the
same tensors as the original (training views and evaluation), with its labels at native size."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import data_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import resized_copy  # noqa: E402

from rc2l.data.build import build_datasets  # noqa: E402
from rc2l.errors import DataError  # noqa: E402


def _datasets(root: Path, resize: list[int]):
    cfg = data_config(name="camvid", root=str(root), resize=resize, crop_size=[8, 8], method="rc2l")
    cfg.eval.labels = "native"
    return build_datasets(cfg, unlabeled_views=1)


def test_copy_gives_identical_training_and_evaluation_tensors(data_camvid, tmp_path):
    size = [6, 10]
    assert resized_copy.main([str(data_camvid), str(tmp_path / "small"), "--size", *map(str, size)]) == 0
    image = next((tmp_path / "small" / "images").rglob("*.webp"))
    label = next((tmp_path / "small" / "labels").rglob("*.png"))
    assert resized_copy.read_image(image).shape[:2] == tuple(size)
    assert label.read_bytes() == (data_camvid / label.relative_to(tmp_path / "small")).read_bytes()
    orig, small = _datasets(data_camvid, size), _datasets(tmp_path / "small", size)
    for part in ("labeled", "val"):
        assert len(orig[part]) == len(small[part]) > 0
        for i in range(len(orig[part])):
            torch.manual_seed(i)
            a = orig[part][i]
            torch.manual_seed(i)
            b = small[part][i]
            assert a.keys() == b.keys()
            for k, v in a.items():
                assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], (part, i, k)


def test_an_image_of_another_size_than_its_label_and_data_resize_is_still_refused(data_camvid, tmp_path):
    resized_copy.main([str(data_camvid), str(tmp_path / "small"), "--size", "6", "10"])
    with pytest.raises(DataError, match="mask .* but its image"):
        _datasets(tmp_path / "small", [7, 10])["val"][0]


def test_refuses_an_existing_destination(data_camvid, tmp_path):
    (tmp_path / "dst").mkdir()
    with pytest.raises(SystemExit, match="exists"):
        resized_copy.main([str(data_camvid), str(tmp_path / "dst"), "--size", "6", "10"])
