"""Bad input never crashes obscurely: each fault gives one ``error: ...`` line naming the file,
line or key, and exit status 2. Most cases call the CLI entry point ``rc2l.cli.main`` in this
process (the same code path as ``python -m rc2l``, without 4 s of interpreter start-up each);
a few run ``python -m rc2l`` in a subprocess to check the real exit status and stderr.
docs/reliability.md lists every case with the message a user sees."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rc2l.data.datasets as datasets_mod
from rc2l.cli import main

from reliability_helpers import (
    CONFIG,
    TINY,
    TorchSettings,
    cli,
    last_line,
    tiny_overrides,
    train_inprocess,
    train_records,
    weights,
)

SIDE = 32  # folder-dataset images are 32 x 32 (padded to the 64 x 64 crop)


def make_folder(root: Path, n: int = 6) -> Path:
    """A folder dataset: images/im<i>.png, masks/im<i>.png (classes 0..2), classes.txt."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background 0 0 0\nred 255 0 0\ngreen 0 255 0\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(rng.integers(0, 3, (SIDE, SIDE), dtype=np.uint8)).save(root / "masks" / f"im{i}.png")
    return root


def folder_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        CONFIG,
        *tiny_overrides(
            out,
            "data.name=folder",
            f"data.root={root}",
            "train.iters=2",
            "train.eval_every=2",
            "train.save_every=2",
            *extra,
        ),
    ]


def run_main(capsys, args: list[str]) -> tuple[int, str]:
    """(exit status, last stderr line) of the CLI entry point, run in this process."""
    datasets_mod._warned.clear()
    capsys.readouterr()
    with TorchSettings():
        rc = main(args)
    return rc, last_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- the faults
# Each builder gets tmp_path and returns (CLI args, a regex the error line must match).


def corrupt_image(t):
    root = make_folder(t / "ds")
    (root / "images" / "im1.png").write_bytes(b"this is not a PNG file")
    return folder_args(root, t / "run"), rf"error: cannot read image {root}/images/im1\.png: cannot identify image file"


def truncated_image(t):
    root = make_folder(t / "ds")
    p = root / "images" / "im1.png"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return folder_args(root, t / "run"), rf"error: cannot read image {root}/images/im1\.png: image file is truncated"


def missing_image(t):
    root = make_folder(t / "ds")
    (root / "images" / "im4.png").unlink()  # its mask stays; the split file still names it
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("images/im0.png masks/im0.png\nimages/im4.png masks/im4.png\n")
    return folder_args(root, t / "run"), rf"error: {root}/splits/train\.txt:2: image not found: {root}/images/im4\.png"


def split_names_unknown_id(t):
    root = make_folder(t / "ds")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("im0\n\nim9\n")
    return folder_args(root, t / "run"), rf"error: {root}/splits/train\.txt:3: no image found for 'im9'"


def mask_other_size(t):
    root = make_folder(t / "ds")
    Image.fromarray(np.zeros((SIDE // 2, SIDE), np.uint8)).save(root / "masks" / "im2.png")
    return folder_args(
        root, t / "run"
    ), rf"error: mask {root}/masks/im2\.png is 32x16 \(WxH\) but its image .* is 32x32"


def mask_value_outside_classes(t):
    root = make_folder(t / "ds")
    Image.fromarray(np.full((SIDE, SIDE), 7, np.uint8)).save(root / "masks" / "im3.png")
    return folder_args(
        root, t / "run"
    ), rf"error: mask {root}/masks/im3\.png: label value 7 is not a class of folder \(valid raw values: 0\.\.2, 255\)"


def empty_split(t):
    root = make_folder(t / "ds")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("# nothing here\n\n")
    return folder_args(root, t / "run"), rf"error: split file is empty: {root}/splits/train\.txt"


def overlapping_splits(t):
    root = make_folder(t / "ds")
    sdir = t / "splits" / "half"
    sdir.mkdir(parents=True)
    (sdir / "labeled.txt").write_text("im0\nim1\n")
    (sdir / "unlabeled.txt").write_text("im1\nim2\nim3\n")
    args = folder_args(root, t / "run", "method=rc2l", f"data.splits_dir={t / 'splits'}", "data.split=half")
    return args, rf"error: {sdir}/labeled\.txt and {sdir}/unlabeled\.txt share 1 image\(s\), e\.g\. 'im1'"


def missing_root(t):
    return folder_args(t / "nowhere", t / "run"), rf"error: dataset root not found: {t}/nowhere \(data\.root\)"


def unknown_key_override(t):
    return ["train", CONFIG, "train.lrr=0.1"], r"error: override: unknown config key 'train\.lrr' \(known: accum_steps"


def wrong_type_override(t):
    return ["train", CONFIG, "train.iters=many"], r"error: override: key 'train\.iters' expects int, got 'many'"


def unknown_key_in_file(t):
    cfg = t / "my.yaml"
    cfg.write_text("data:\n  name: synthetic\n  batchsize: 4\n")
    return ["train", str(cfg)], rf"error: {cfg}: unknown config key 'data\.batchsize'"


def wrong_type_in_file(t):
    cfg = t / "my.yaml"
    cfg.write_text("train:\n  amp: true\n  iters: 3.5\n")
    return ["train", str(cfg)], rf"error: {cfg}: key 'train\.amp' expects str, got True"


def invalid_yaml(t):
    cfg = t / "my.yaml"
    cfg.write_text("train:\n  iters: [5\n")
    return ["train", str(cfg)], rf"error: {cfg} line 3: invalid YAML"


def bad_choice(t):
    return ["train", CONFIG, "train.amp=fp8"], r"error: config key 'train\.amp' = 'fp8' is not one of off, bf16, fp16"


def nan_loss(t):
    args = [
        "train",
        CONFIG,
        *tiny_overrides(t / "run", "train.iters=4", "loss.mask_weight=1e300", "train.max_bad_steps=3"),
    ]
    return args, (
        r"error: 3 non-finite losses or gradients in a row at step 0 \(train\.max_bad_steps=3\): stopping; "
        r".*no state saved yet"
    )


FAULTS = [
    corrupt_image,
    truncated_image,
    missing_image,
    split_names_unknown_id,
    mask_other_size,
    mask_value_outside_classes,
    empty_split,
    overlapping_splits,
    missing_root,
    unknown_key_override,
    wrong_type_override,
    unknown_key_in_file,
    wrong_type_in_file,
    invalid_yaml,
    bad_choice,
    nan_loss,
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_fault_gives_one_error_line_and_exit_2(fault, tmp_path, capsys):
    import re

    args, pattern = fault(tmp_path)
    rc, line = run_main(capsys, args)
    assert rc == 2
    assert line.startswith("error: ") and re.match(pattern, line), line
    if fault is nan_loss:  # never a NaN model on disk
        assert not (tmp_path / "run" / "state.pt").exists() and not (tmp_path / "run" / "last.safetensors").exists()


def test_data_error_in_a_loader_worker_subprocess(tmp_path):
    """Through ``python -m rc2l`` with data.workers=1: the error raised in the DataLoader worker
    process reaches the user as one line naming the sample, exit status 2."""
    args, _ = corrupt_image(tmp_path)
    r = cli([*args, "data.workers=1"])
    line = last_line(r.stderr)
    assert r.returncode == 2, r.stderr[-2000:]
    assert line == (
        f"error: cannot read image {tmp_path}/ds/images/im1.png: cannot identify image file "
        f"'{tmp_path}/ds/images/im1.png'"
    ), line
    assert "Traceback" not in r.stderr


def test_config_error_subprocess(tmp_path):
    r = cli(["train", CONFIG, "data.nmae=camvid"])
    assert r.returncode == 2
    assert last_line(r.stderr).startswith("error: override: unknown config key 'data.nmae'")
    assert r.stdout == "" and "Traceback" not in r.stderr


@pytest.mark.slow
def test_bad_samples_skip_end_to_end(tmp_path):
    """data.bad_samples=skip: a folder dataset with one corrupt image trains to the end, names the
    skipped file in a warning and counts the skipped draws in metrics.jsonl."""
    root = make_folder(tmp_path / "ds")
    (root / "images" / "im1.png").write_bytes(b"garbage")
    r = cli(
        folder_args(
            root, tmp_path / "run", "data.bad_samples=skip", "train.iters=4", "train.eval_every=4", "data.workers=1"
        )
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipping bad sample: cannot read image {root}/images/im1.png" in r.stderr
    assert "bad training sample draw(s) skipped (data.bad_samples=skip)" in r.stderr
    assert (tmp_path / "run" / "last.safetensors").exists()
    recs = train_records(tmp_path / "run")
    assert [x["step"] for x in recs] == [1, 2, 3, 4]
    # 4 steps x batch 2 = 8 draws from 6 images: im1 is drawn at least once
    assert recs[-1]["skipped_samples"] >= 1
    assert "done: 4 steps" in r.stdout


# ----------------------------------------------------------------------------- resume / weights faults


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A finished 1-step synthetic run (5 classes): state.pt and last.safetensors."""
    run = tmp_path_factory.mktemp("syn")
    train_inprocess(run, "train.iters=1", "train.eval_every=1", "train.save_every=1")
    return run


def test_resume_with_another_model_config_is_refused(synthetic_run, tmp_path, capsys):
    rc, line = run_main(
        capsys,
        [
            "train",
            CONFIG,
            *tiny_overrides(tmp_path, f"resume={synthetic_run}/state.pt", "model.hidden_dim=48", "train.iters=2"),
        ],
    )
    assert rc == 2
    assert line == (
        f"error: {synthetic_run}/state.pt: saved with a different model config (differs in: model.hidden_dim)"
    ), line


def test_resume_with_another_class_count_is_refused(synthetic_run, tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    rc, line = run_main(capsys, folder_args(root, tmp_path / "run", f"resume={synthetic_run}/state.pt"))
    assert rc == 2
    assert line == f"error: {synthetic_run}/state.pt: saved for 5 classes, this run's dataset 'folder' has 3", line


def test_resume_from_a_corrupt_state_is_refused(synthetic_run, tmp_path, capsys):
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "state.pt").write_bytes((synthetic_run / "state.pt").read_bytes()[:1000])
    rc, line = run_main(capsys, ["train", CONFIG, *tiny_overrides(bad, "resume=auto", "train.iters=2")])
    assert rc == 2
    assert line.startswith(f"error: {bad}/state.pt: cannot load training state ("), line
    rc, line = run_main(capsys, ["train", CONFIG, *tiny_overrides(bad, f"resume={tmp_path}/none.pt")])
    assert rc == 2 and line == f"error: training state not found: {tmp_path}/none.pt"


def test_eval_with_weights_of_another_class_count_is_refused(synthetic_run, tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    rc, line = run_main(
        capsys,
        [
            "eval",
            CONFIG,
            *TINY,
            "data.name=folder",
            f"data.root={root}",
            "--weights",
            str(synthetic_run / "last.safetensors"),
        ],
    )
    assert rc == 2
    assert line == f"error: {synthetic_run}/last.safetensors: weights are for 5 classes, the model has 3", line


# ----------------------------------------------------------------------------- NaN / Inf handling


def test_nonfinite_steps_are_skipped_counted_and_training_goes_on(tmp_path, monkeypatch):
    """Two NaN losses (max_bad_steps=3) are skipped without touching the weights; the run ends
    with the requested number of good steps and reports skipped_steps."""
    from rc2l.engine.methods import Supervised

    real, calls = Supervised.step, []

    def sometimes_nan(self, bl, bu, step):
        calls.append(step)
        terms = real(self, bl, bu, step)
        if len(calls) in (2, 3):
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Supervised, "step", sometimes_nan)
    out = train_inprocess(
        tmp_path, "train.iters=3", "train.max_bad_steps=3", "train.eval_every=100", "train.save_every=100"
    )
    assert out["step"] == 3 and calls == [0, 1, 1, 1, 2]
    recs = train_records(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[-1]["skipped_steps"] == 2
    assert all(
        torch.isfinite(v).all() for v in weights(tmp_path / "last.safetensors").values() if v.is_floating_point()
    )


def test_infinite_gradient_with_finite_loss_is_skipped_without_clipping(tmp_path, monkeypatch):
    """train.clip_grad=0: a finite loss whose gradient is Inf must not be applied (it would
    write a NaN model); it counts as a bad step like a NaN loss."""
    from rc2l.engine.methods import Supervised

    real, calls = Supervised.step, []

    def inf_grad_once(self, bl, bu, step):
        calls.append(step)
        terms = real(self, bl, bu, step)
        if len(calls) == 2:  # this backward: the loss stays finite, one gradient becomes Inf
            p = next(self.net.parameters())

            def once(g):
                handle.remove()
                return torch.full_like(g, math.inf)

            handle = p.register_hook(once)
        return terms

    monkeypatch.setattr(Supervised, "step", inf_grad_once)
    out = train_inprocess(
        tmp_path, "train.iters=3", "train.clip_grad=0", "train.eval_every=100", "train.save_every=100"
    )
    assert out["step"] == 3 and calls == [0, 1, 1, 2]
    assert train_records(tmp_path)[-1]["skipped_steps"] == 1
    assert all(
        torch.isfinite(v).all() for v in weights(tmp_path / "last.safetensors").values() if v.is_floating_point()
    )
