"""Shareable model folders: train → folder → load → same predictions; what config.json and the
model card say; `rc2l export --model-dir`; predict / eval / export take a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import rc2l
from rc2l.errors import CheckpointError

from infer_helpers import REPO, TINY_RUN, TorchSettings, cli, synthetic_image, tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def folder(run_dir, tmp_path_factory) -> Path:
    """The folder as the trainer will write it at the end of a run."""
    from rc2l.engine.model_dir import write_model_dir

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    out = tmp_path_factory.mktemp("model") / "tiny"
    info = {"labeled": 2, "command": "rc2l train configs/synthetic.yaml train.iters=4", "commit": "abc1234"}
    return write_model_dir(out, run_dir / "best.safetensors", cfg, info)


def test_round_trip_same_predictions(run_dir, folder, tmp_path):
    rgbs = [synthetic_image(tmp_path / f"{i}.png", 64, 64, i) for i in range(3)]
    rgbs.append(synthetic_image(tmp_path / "wide.png", 72, 150, 9))  # through the sliding window
    a, b = rc2l.load(run_dir / "best.safetensors", device="cpu"), rc2l.load(folder, device="cpu")
    for x, y in zip(a.predict_many(rgbs), b.predict_many(rgbs)):
        assert (x == y).all()
    assert b.classes == a.classes and b.palette == a.palette and b.info.window == (64, 64)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "config.yaml", "model.safetensors"]


def test_config_json_and_model_card(run_dir, folder):
    cj = json.loads((folder / "config.json").read_text())
    from rc2l.engine.checkpoint import read_meta

    meta = read_meta(run_dir / "best.safetensors")
    assert cj["format"] == "rc2l-model-v1" and cj["num_classes"] == 5
    assert cj["class_names"] == ["background", "disc", "square", "triangle", "ring"]
    assert cj["crop_size"] == [64, 64] and cj["eval"]["mode"] == "original"
    assert cj["model"]["backbone"] == "resnet18" and cj["model"]["num_queries"] == 8
    assert abs(cj["val_miou"] - float(meta["miou"])) < 1e-3 and cj["labeled"] == 2
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["library_name"] == "rc2l"  # synthetic: generated data
    assert "image-segmentation" == front["pipeline_tag"]
    assert f"**{cj['val_miou']:.2f}**" in card and "eval mode original" in card
    assert "synthetic, split 1_8 (2 labeled images)" in card
    from rc2l.engine.model_dir import labeled_count

    assert labeled_count(yaml.safe_load((run_dir / "config.yaml").read_text())) == 2  # 1/8 of 16, without the data
    assert "`rc2l train configs/synthetic.yaml train.iters=4`" in card and "| commit | abc1234 |" in card
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["backbone"] == "resnet18"


def test_model_card_names_the_architecture(folder, tmp_path):
    """The card describes the network the weights are: MaskFormer's mask classification with its
    queries, or DeepLabv3+'s per-pixel classification with its ASPP rates."""
    from dataclasses import asdict

    from rc2l.config import ModelConfig
    from rc2l.engine.model_dir import write_model_dir
    from rc2l.models.segmenter import build_model

    card = (folder / "README.md").read_text()
    assert "A MaskFormer-style semantic segmenter (mask classification" in card and "DeepLab" not in card
    assert "| recipe | backbone resnet18, 8 queries;" in card

    mc = ModelConfig(
        arch="deeplabv3plus", backbone="resnet18", pretrained="none", aspp_dim=32, decoder_dim=32, aspp_rates=[2, 4, 6]
    )
    state = build_model(5, mc).state_dict()
    cfg = {"method": "supervised", "model": asdict(mc), "data": {"name": "synthetic", "crop_size": [64, 64]}}
    names = ["background", "disc", "square", "triangle", "ring"]
    out = write_model_dir(tmp_path / "deeplab", state, cfg, {"class_names": names})
    card = (out / "README.md").read_text()
    assert "A DeepLabv3+ semantic segmenter (per-pixel classification)" in card
    assert "MaskFormer" not in card and "queries" not in card
    assert "| recipe | DeepLabv3+ on backbone resnet18, ASPP rates 2/4/6;" in card
    assert json.loads((out / "config.json").read_text())["model"]["arch"] == "deeplabv3plus"
    model = rc2l.load(out, device="cpu")
    assert type(model.module).__name__ == "DeepLabV3Plus" and model.classes == names


def test_camvid_card_states_the_licence(run_dir, tmp_path):
    """The card names the data's licence: CamVid is CC BY-NC 4.0 (non-commercial)."""
    from rc2l.engine.model_dir import write_model_dir

    cfg = {"method": "rc2l", "model": {}, "data": {"name": "camvid", "split": "1_8", "crop_size": [240, 320]}}
    out = write_model_dir(tmp_path / "m", run_dir / "best.safetensors", cfg, {"dataset": "camvid"})
    card = (out / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "non-commercial" in card and "datasets:\n- camvid" in card
    assert "(46 labeled images)" in card  # counted from splits/camvid/1_8/labeled.txt
    assert "RC²L region-level" in card


def test_export_model_dir_cli_and_folder_inputs(run_dir, tmp_path):
    """`rc2l export --model-dir` from a run folder (its config.yaml comes along); predict, eval
    and export --onnx accept the folder."""
    out = tmp_path / "m"
    code, stdout, stderr = cli(["export", "--weights", str(run_dir), "--model-dir", str(out)])
    assert code == 0, stderr
    assert "wrote model folder" in stdout and (out / "model.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["iters"] == 4
    synthetic_image(tmp_path / "in" / "a.png", 64, 64, 0)
    code, _, stderr = cli(
        ["predict", "--weights", str(out), str(tmp_path / "in"), "--out", str(tmp_path / "p"), "--no-progress"]
    )
    assert code == 0, stderr
    want = rc2l.load(run_dir, device="cpu").predict(tmp_path / "in" / "a.png")
    assert (np.array(Image.open(tmp_path / "p" / "a.png")) == want).all()
    tiny = [o for o in TINY_RUN if o.startswith(("model.", "data."))]
    with TorchSettings():
        code, stdout, stderr = cli(["eval", str(REPO / "configs" / "synthetic.yaml"), *tiny, "--weights", str(out)])
    assert code == 0 and "mIoU" in stdout, stderr
    pytest.importorskip("onnxruntime")
    code, stdout, stderr = cli(["export", "--weights", str(out), "--onnx", str(tmp_path / "m.onnx")])
    assert code == 0 and "-> ok" in stdout, stdout + stderr


def test_bad_folder_config_is_one_line(run_dir, folder, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not a readable JSON file"):
        rc2l.load(bad)
    code, _, stderr = cli(["export", "--weights", str(run_dir)])
    assert code == 2 and stderr.strip() == "error: rc2l export: give --onnx OUT.onnx and/or --model-dir DIR"


def test_command_line():
    from rc2l.engine.model_dir import command_line

    assert command_line(["/venv/bin/rc2l", "train", "c.yaml", "data.split=1_8"]) == "rc2l train c.yaml data.split=1_8"
    assert command_line(["/repo/rc2l/__main__.py", "train", "a b.yaml"]) == "rc2l train 'a b.yaml'"
    assert command_line(["nb.py", "--x"]) == "python nb.py --x"
