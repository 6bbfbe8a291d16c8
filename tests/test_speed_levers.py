"""The speed options of issue 15 (train.amp=auto, train.channels_last, data.cache,
eval.batch_size, train.keep_freed_memory) change how fast rc2l runs, never what it computes:
each test compares the option against the plain path. How much they pay is the business of
benchmarks/train_speed.py and train_speed_fresh.py."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
from conftest import data_config

from rc2l.config import load_config
from rc2l.data.build import build_datasets
from rc2l.engine.evaluate import cpu_has_bf16, evaluate, resolve_amp
from rc2l.engine.streams import channels_last_collate
from rc2l.engine.train import Trainer
from rc2l.models.segmenter import build_model

from helpers import tiny_model_config, tiny_model_overrides

TINY = [
    *tiny_model_overrides("resnet18"),
    "data.workers=0",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "train.progress=false",
    "train.threads=1",
    "semi.start_iter=0",
    "semi.tau_cls=0.0",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=4",
    "data.synthetic.size=32",
    "data.crop_size=[32,32]",
]
FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 {}\n"


def test_bf16_detection_reads_the_cpu_flags():
    assert cpu_has_bf16(FLAGS.format("amx_bf16 amx_tile", "amx_bf16 amx_tile"))
    # AVX512-BF16 without AMX computes bf16 slower than fp32 (measured): not "native" for autocast
    assert not cpu_has_bf16(FLAGS.format("avx512_bf16", "avx512_bf16"))
    assert not cpu_has_bf16(FLAGS.format("avx512f", "avx512f"))
    assert not cpu_has_bf16("")  # e.g. no flags line (another OS's format)


def test_amp_auto_resolves_per_device_and_leaves_explicit_choices():
    assert resolve_amp("auto", "cpu", FLAGS.format("amx_bf16 amx_tile", "")) == "bf16"
    assert resolve_amp("auto", "cpu", FLAGS.format("avx512_bf16", "avx512_bf16")) == "off"
    assert resolve_amp("auto", "cpu", FLAGS.format("avx2", "avx2")) == "off"
    for explicit in ("off", "bf16", "fp16"):
        assert resolve_amp(explicit, "cpu", FLAGS.format("avx2", "avx2")) == explicit


def test_trainer_with_amp_auto_uses_the_resolved_dtype(tmp_path):
    tr = Trainer(load_config("configs/synthetic.yaml", TINY + [f"out_dir={tmp_path}", "train.amp=auto"]))
    expected = resolve_amp("auto", "cpu")
    assert tr.amp == expected and tr.amp_dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert not tr.scaler.is_enabled()


def test_channels_last_model_computes_the_same_gradients():
    """NHWC model and input give the NCHW gradients. In float64: a random-init model's float32
    gradients differ by up to ~30 % between layouts (reassociation in ill-conditioned layers),
    which would hide a real layout bug; in float64 they agree to ~1e-10."""
    import copy

    torch.manual_seed(0)
    model = build_model(
        5,
        tiny_model_config(),
    ).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    grads = []
    for cl in (False, True):
        net = copy.deepcopy(model)
        if cl:
            net, inp = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        out = net(inp if cl else x)
        (out["pred_masks"].pow(2).mean() + out["pred_logits"].pow(2).mean()).backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n, g in grads[0].items():
        assert (g - grads[1][n]).norm() <= 1e-8 * g.norm() + 1e-12, n


def test_trainer_channels_last_converts_student_teacher_and_batches(tmp_path):
    over = [f"out_dir={tmp_path}", "method=rc2l", "train.channels_last=true"]
    cfg = load_config("configs/synthetic.yaml", TINY + over)
    tr = Trainer(cfg)
    for net in (tr.model, tr.teacher):
        w = net.backbone.conv1.weight
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    its = tr.streams.iterators()
    batch = next(iter(its["unlabeled"]))
    assert batch["image_w"].is_contiguous(memory_format=torch.channels_last)
    logs = tr.train_step(its)
    assert logs is not None and torch.isfinite(torch.tensor(logs["loss"]))


def test_channels_last_collate_converts_image_batches_only():
    batch = [{"image": torch.rand(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long), "id": "a"}] * 2
    out = channels_last_collate(batch)
    assert out["image"].is_contiguous(memory_format=torch.channels_last) and out["image"].shape == (2, 3, 4, 5)
    assert out["mask"].is_contiguous() and channels_last_collate([None]) is None


def test_cached_dataset_returns_the_uncached_samples(data_camvid):
    """Random train crops under the same seed, twice per index (the second read comes from the
    cache, so a transform writing into the cached tensors would show up)."""
    sets = {}
    for cache in (False, True):
        cfg = data_config(name="camvid", root=str(data_camvid), crop_size=[8, 8], cache=cache)
        cfg.data.splits_dir = str(data_camvid / "splits_none")
        sets[cache] = build_datasets(cfg)
    for part in ("labeled", "val"):
        plain, cached = sets[False][part], sets[True][part]
        for rep in range(2):
            for i in range(len(plain)):
                torch.manual_seed(100 * rep + i)
                a = plain[i]
                torch.manual_seed(100 * rep + i)
                b = cached[i]
                assert a.keys() == b.keys() and a["id"] == b["id"]
                assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
        assert len(cached._read) == len(plain) and cached._read.nbytes() > 0


def test_cache_does_not_keep_a_bad_file(data_camvid):
    cfg = data_config(name="camvid", root=str(data_camvid), cache=True, bad_samples="skip")
    cfg.data.splits_dir = str(data_camvid / "splits_none")
    ds = build_datasets(cfg)["val"]
    ds.items[0].image.write_bytes(b"not an image")
    assert ds[0] is None and ds[0] is None and len(ds._read) == 0


def _val_batches(sizes, label_scale: float = 1.0):
    """label_scale > 1: masks at a larger "native" size than the images (eval.labels=native)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for h, w in sizes:
        mask = torch.randint(0, 5, (1, int(h * label_scale), int(w * label_scale)), generator=g)
        mask[:, :2] = 255
        out.append({"image": torch.rand(1, 3, h, w, generator=g), "mask": mask})
    return out


def test_batched_evaluation_gives_the_identical_confusion_matrix():
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = build_model(5, cfg)
    loader = _val_batches([(32, 48)] * 5 + [(40, 32)] * 2 + [(32, 48)])  # sizes change mid-way
    for mode in ("original", "center_crop", "sliding_window"):
        ref = evaluate(model, loader, 5, mode, (24, 24), 2 / 3, batch_size=1)
        for bs in (2, 4, 16):
            got = evaluate(model, loader, 5, mode, (24, 24), 2 / 3, batch_size=bs)
            assert got["confusion"] == ref["confusion"], (mode, bs)
        assert ref["pixels"] > 0
    native = _val_batches([(32, 48)] * 3, label_scale=1.5)
    ref = evaluate(model, native, 5, "original", (24, 24), 2 / 3, batch_size=1)
    assert ref["pixels"] > 3 * 32 * 48 and evaluate(model, native, 5, batch_size=3)["confusion"] == ref["confusion"]


FAULTS = """
import resource, sys, torch
from rc2l.engine.malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(10):  # a step's pattern: large activations allocated, freed, allocated again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x, y = torch.ones(2**25), torch.ones(2**23)  # 128 + 32 MiB, over glibc's largest mmap threshold
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[5:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_stops_refaulting_freed_blocks():
    """Once the heap has grown to the pattern's size, freed blocks come back without their
    pages being faulted in again; by default every cycle faults all 40,960 pages anew."""
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(out.stdout.split()[-1])
    assert faults["default"] > 5 * 30000 and faults["keep"] < 3000, faults


def test_trainer_keeps_freed_memory_only_when_configured(tmp_path, monkeypatch):
    import rc2l.engine.build as build_module

    calls = []
    monkeypatch.setattr(build_module, "keep_freed_memory", lambda: calls.append(1) or True)
    for flag, calls_after in (("true", 1), ("false", 1)):
        over = [f"out_dir={tmp_path}/{flag}", f"train.keep_freed_memory={flag}"]
        Trainer(load_config("configs/synthetic.yaml", TINY + over))
        assert len(calls) == calls_after
