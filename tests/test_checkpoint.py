"""Checkpoints: atomic writes (an interrupted or killed write keeps the previous file and leaves
no temp file), safetensors weights with architecture metadata, refusal of files that do not fit
(saying what differs), training state read with weights_only=True, and no NaN model saved."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from rc2l.config import load_config
from rc2l.engine import checkpoint as ck
from rc2l.errors import CheckpointError, TrainingError
from rc2l.models.segmenter import build_model

from reliability_helpers import CONFIG, REPO, TINY, TorchSettings, tiny_config


def _temps(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _tiny_model(k=5, *extra):
    cfg = load_config(CONFIG, [*TINY, *extra])
    torch.manual_seed(0)
    return build_model(k, cfg.model), cfg


def test_state_write_interrupted_by_exception_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    ck.save_state({"step": 1, "w": torch.arange(4.0)}, path)
    real_save = torch.save

    def dies_half_way(obj, f, *a, **kw):  # writes part of the file, then the disk is "full"
        real_save(obj, f, *a, **kw)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        ck.save_state({"step": 2, "w": torch.zeros(4)}, path)
    st = ck.load_state(path)
    assert st["step"] == 1 and torch.equal(st["w"], torch.arange(4.0))
    assert _temps(tmp_path) == []


def test_weights_write_interrupted_keeps_previous(tmp_path, monkeypatch):
    model, _ = _tiny_model()
    path = tmp_path / "last.safetensors"
    ck.save_weights(model, path, ck.model_meta(model))
    before = path.read_bytes()

    def boom(state, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        ck.save_weights(model, path, ck.model_meta(model))
    assert path.read_bytes() == before
    assert _temps(tmp_path) == []
    ck.load_weights(_tiny_model()[0], path)


def test_writer_killed_mid_write_keeps_previous_and_next_write_cleans_up(tmp_path):
    """SIGKILL gives no chance to clean up: the temp file stays, the target is untouched, and the
    next atomic_write (e.g. the resumed run's first save) removes the dead writer's temp file."""
    path = tmp_path / "state.pt"
    ck.save_state({"step": 1}, path)
    script = textwrap.dedent(f"""
        import os, signal
        from rc2l.engine.checkpoint import atomic_write
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"x" * (1 << 20))
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(path)!r}, write)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120)
    assert r.returncode == -9
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".state.pt.")
    assert ck.load_state(path)["step"] == 1
    ck.save_state({"step": 2}, path)
    assert _temps(tmp_path) == [] and ck.load_state(path)["step"] == 2


def test_a_live_writers_temp_file_is_not_removed(tmp_path):
    live = tmp_path / f".state.pt.{os.getppid()}.abc.tmp"  # the parent process is alive
    live.write_bytes(b"busy")
    ck.save_state({"step": 1}, tmp_path / "state.pt")
    assert live.exists()


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        ck.save_state({"step": 1}, tmp_path / "state.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state.pt").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_state_is_read_with_weights_only(tmp_path):
    """A pickle that would run code on load is refused, and its code does not run."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "state.pt"
    torch.save({"step": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"state\.pt: cannot load training state \(UnpicklingError"):
        ck.load_state(path)
    assert not marker.exists()


def test_truncated_or_foreign_state_is_a_clear_error(tmp_path):
    path = tmp_path / "state.pt"
    ck.save_state({"step": 1, "w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=f"{path}: cannot load training state"):
        ck.load_state(path)
    with pytest.raises(CheckpointError, match="training state not found"):
        ck.load_state(tmp_path / "nope.pt")


def test_weights_metadata_round_trip(tmp_path):
    model, cfg = _tiny_model()
    from rc2l.config import to_dict

    path = tmp_path / "w.safetensors"
    ck.save_weights(model, path, ck.model_meta(model, to_dict(cfg)["model"], {"class_names": ["a", "b"]}))
    k, mcfg = ck.model_config_from_weights(path)
    assert k == 5 and mcfg["backbone"] == "efficientnet_lite0" and mcfg["hidden_dim"] == 32
    assert ck.read_meta(path)["class_names"] == '["a", "b"]'


def test_weights_of_another_class_count_are_refused(tmp_path):
    model, _ = _tiny_model(5)
    path = tmp_path / "w.safetensors"
    ck.save_weights(model, path, ck.model_meta(model))
    with pytest.raises(CheckpointError, match=r"w\.safetensors: weights are for 5 classes, the model has 3"):
        ck.load_weights(_tiny_model(3)[0], path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    model, cfg = _tiny_model(5)
    from rc2l.config import to_dict

    path = tmp_path / "w.safetensors"
    ck.save_weights(model, path, ck.model_meta(model, to_dict(cfg)["model"]))
    other, _ = _tiny_model(5, "model.dec_layers=3")
    with pytest.raises(
        CheckpointError, match=r"different architecture: \d+ missing and 0 unexpected tensors.*file architecture"
    ):
        ck.load_weights(other, path)
    wider, _ = _tiny_model(5, "model.dim_feedforward=96")
    with pytest.raises(CheckpointError, match=r"tensor '.*' has shape \(\d+, 32\), model expects \(96, 32\)"):
        ck.load_weights(wider, path)
    resnet, _ = _tiny_model(5, "model.backbone=resnet18")
    with pytest.raises(CheckpointError, match="different architecture"):
        ck.load_weights(resnet, path)


def test_non_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors weights file"):
        ck.load_weights(_tiny_model()[0], path)


def test_a_nan_model_is_never_saved(tmp_path):
    """The trainer refuses to write non-finite weights; the previous state.pt stays."""
    from rc2l.engine.train import Trainer
    from rc2l.engine.train_state import save

    with TorchSettings():
        tr = Trainer(tiny_config(tmp_path, "train.iters=1"))
        save(tr)
        good = ck.load_state(tmp_path / "state.pt")
        with torch.no_grad():
            next(tr.model.parameters())[0].fill_(float("nan"))
        tr.step = 7
        with pytest.raises(TrainingError, match=r"student tensor '.*' is not finite at step 7: not saving"):
            save(tr)
    st = ck.load_state(tmp_path / "state.pt")
    assert st["step"] == good["step"] == 0
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
