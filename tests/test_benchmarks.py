"""Smoke tests of benchmarks/: each script in --quick mode (tiny sizes, one repetition) writes
the table and JSON rows it promises; the memory method measures a known allocation; the
output merging keeps other benchmarks' rows. No timing assertions."""

from __future__ import annotations

import importlib
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setattr(sys, "argv", ["benchmarks/test"])

    def load(name):
        return importlib.import_module(f"benchmarks.{name}")

    return load


def read_out(out: Path) -> tuple[dict, str]:
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text()


def test_region_vs_pixel_quick(bench, tmp_path):
    m = bench("region_vs_pixel")
    # --max-call-s 0: every exact row after the first size must be skipped with a reason
    assert m.main(["--quick", "--sizes", "32", "48", "--max-call-s", "0", "--out", str(tmp_path)]) == 0
    data, md = read_out(tmp_path)
    meta = data["runs"]["region_vs_pixel/cpu"]
    assert meta["commit"] and meta["command"].endswith("--out " + str(tmp_path)) and meta["machine"]["cpu"]
    rows = [r for r in data["rows"] if r["run"] == "region_vs_pixel/cpu"]
    loss = [r for r in rows if r["kind"] == "loss"]
    methods = set(m.methods_for([64]))
    assert {(r["method"], r["input"]) for r in loss} == {(x, s) for x in methods for s in ("32×32", "48×48")}
    for r in loss:
        if r["method"] in m.EXACT and r["input"] == "48×48":
            assert r["status"].startswith("not run") and r["time_s"] is None
        else:
            assert r["status"] == "ok" and r["time_s"] > 0, r
    assert all(r["ratio_vs_reference"] > 0 for r in loss if r["input"] == "32×32")
    ops = {r["method"]: r["ops_per_call"] for r in loss if r["input"] == "32×32"}
    assert all(ops[k] > 0 for k in m.REGION_METHODS) and ops["region_all"] > ops["rmc"] + ops["smc"]
    (share,) = [r for r in rows if r["kind"] == "step_share"]
    assert 0 < share["ratio_vs_reference"] == share["share"] and isinstance(share["goal_met"], bool)
    assert "<!-- BEGIN region_vs_pixel/cpu" in md and "slope (2 largest)" in md and "not run" in md
    assert (tmp_path / "figures" / "region_vs_pixel.png").stat().st_size > 1000


def test_vs_hf_maskformer_quick(bench, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    m = bench("vs_hf_maskformer")
    assert m.main(["--quick", "--out", str(tmp_path)]) == 0
    data, md = read_out(tmp_path)
    rows = [r for r in data["rows"] if r["run"] == "vs_hf_maskformer/cpu"]
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["breakdown", "infer", "onnx", "train", "train"]
    for r in rows:
        assert r["network_attempts"] == 0
        if r["kind"] in ("train", "infer"):
            assert r["speedup"] == pytest.approx(r["hf_s"] / r["ours_s"]) and r["ratio_vs_reference"] == pytest.approx(
                1 / r["speedup"]
            )
    (onnx,) = [r for r in rows if r["kind"] == "onnx"]
    assert onnx["max_abs_diff"] < 1e-3 and onnx["speedup"] > 0
    (bd,) = [r for r in rows if r["kind"] == "breakdown"]
    assert {"ours/train_aux", "hf/train_aux", "ours/infer", "hf/infer"} <= set(bd["parts"])
    assert "backward" in bd["parts"]["ours/train_aux"]
    assert "speed-up (HF/ours)" in md


def test_memory_quick(bench, tmp_path):
    m = bench("memory")
    cityscapes = str(REPO / "configs" / "cityscapes.yaml")
    args = ["--quick", "--configs", cityscapes, "--methods", "supervised", "rc2l", "unimatch", "--out", str(tmp_path)]
    assert m.main(args) == 0
    data, md = read_out(tmp_path)
    rows = [r for r in data["rows"] if r["run"] == "memory/cpu"]
    assert [(r["config"], r["method"]) for r in rows] == [
        ("configs/cityscapes.yaml", "supervised"),
        ("configs/cityscapes.yaml", "rc2l"),
        ("configs/cityscapes.yaml", "unimatch"),
    ]
    for r in rows:
        assert r["status"] == "ok" and r["peak_mem_bytes"] > 100 * MiB and r["step_s"] > 0
        assert "crop 801×801 → 256×256" in r["notes"] and r["gpu_config"] is True
        assert r.get("schedule_hours") is None  # a reduced crop and batch say nothing of the config's schedule
    assert rows[1]["ratio_vs_reference"] > 0 and rows[1]["batch"] == "2+2"
    assert "increase during the step" in md and "train.iters × step time" in md


def test_memory_rejects_mem_off(bench, tmp_path, capsys):
    m = bench("memory")
    with pytest.raises(SystemExit, match="--mem off"):
        m.main(["--mem", "off", "--out", str(tmp_path)])


def test_peak_memory_method_sees_an_allocation(bench):
    cm = bench("common")
    n = 96 * MiB
    inproc = cm.alloc_probe(n)
    fresh = cm.FreshRunner(["benchmarks.common"])("benchmarks.common:alloc_probe", nbytes=n)
    for r in (inproc, fresh):
        assert r["reset_ok"]
        assert n - 2 * MiB <= r["peak"] < n + 16 * MiB, r


def test_publish_replaces_own_rows_and_keeps_others(bench, tmp_path):
    cm = bench("common")
    meta = {
        "commit": "abc",
        "command": "x",
        "date": "d",
        "quick": True,
        "mem_method": "m",
        "machine": {
            "cpu": "c",
            "cores": 2,
            "torch_threads": 2,
            "torch": "t",
            "python": "p",
            "device": "cpu",
            "amp": "off",
            "loadavg_start": [1, 2, 3],
        },
    }
    a = Namespace(out=str(tmp_path), device="cpu", amp=False)
    cm.publish("one", a, meta, [{"v": 1}], "table one")
    cm.publish("two", a, meta, [{"v": 2}], "table two")
    cm.publish("one", a, meta, [{"v": 3}, {"v": 4}], "table one again")
    cm.publish("one", Namespace(out=str(tmp_path), device="cuda", amp=True), meta, [{"v": 5}], "gpu table")
    data, md = read_out(tmp_path)
    assert [(r["run"], r["v"]) for r in data["rows"]] == [
        ("two/cpu", 2),
        ("one/cpu", 3),
        ("one/cpu", 4),
        ("one/cuda+amp", 5),
    ]
    assert md.count("<!-- BEGIN one/cpu") == 1 and "table one again" in md and "table one\n" not in md
    assert "table two" in md and "gpu table" in md


def test_op_counts_quick(bench, tmp_path):
    """Every call dispatches as many operations for 1 image as for 3 (no per-image loop, the
    supervised criterion included); the criterion's count grows with its decoder layers."""
    m = bench("op_counts")
    assert m.main(["--quick", "--batches", "1", "3", "--out", str(tmp_path)]) == 0
    data, md = read_out(tmp_path)
    rows = {r["call"]: r for r in data["rows"] if r["run"] == "op_counts/cpu"}
    assert set(rows) == {"match", "rmc", "rfc", "rcc", "smc", "region_all", "criterion"}
    assert all(r["ops_batch_1"] == r["ops_batch_3"] > 0 for r in rows.values())
    assert rows["region_all"]["ops_batch_1"] > rows["match"]["ops_batch_1"] + rows["rmc"]["ops_batch_1"]
    assert m.counts(1, layers=1)["criterion"] < rows["criterion"]["ops_batch_1"]  # --quick: 2 layers
    assert "| supervised criterion, 2 layers |" in md


def test_train_speed_quick(bench, tmp_path):
    m = bench("train_speed")
    assert m.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    data, md = read_out(tmp_path)
    meta = data["runs"]["train_speed/cpu"]
    assert meta["quick"] and meta["peak_flops"]["fp32"] > 0 and meta["peak_flops"]["bf16"] > 0
    rows = [r for r in data["rows"] if r["run"] == "train_speed/cpu"]
    steps = {(r["method"], r["lever"]): r for r in rows if r["kind"] == "step"}
    expected = {(meth, lv) for meth in ("supervised", "rc2l") for lv in m.DEFAULT_LEVERS}
    assert set(steps) == expected - {("supervised", "teacher_inference_mode")}
    for (meth, lv), r in steps.items():
        assert r["step_s"] > 0 and r["flops_per_step"] > 0 and 0 < r["share_of_peak"]
        assert r["ratio_vs_reference"] == pytest.approx(r["step_s"] / steps[(meth, "fp32")]["step_s"])
        assert r["peak_dtype"] == ("bf16" if "bf16" in lv else "fp32")
    assert steps[("rc2l", "fp32")]["flops_per_step"] > steps[("supervised", "fp32")]["flops_per_step"]
    profiles = [r for r in rows if r["kind"] == "profile"]
    pairs = {(x, y) for x in ("supervised", "rc2l") for y in ("fp32", "kept")}
    assert {(r["method"], r["lever"]) for r in profiles} == pairs
    assert all(r["top_ops"] and r["top_ops"][0]["self_ms"] > 0 for r in profiles)
    evals = {r["variant"] for r in rows if r["kind"] == "eval"}
    assert evals == {"fp32_bs1", "fp32_bs8", "bf16_bs1", "bf16_bs8"}
    assert "<!-- BEGIN train_speed/cpu" in md and "speed-up vs fp32" in md and "Top ops" in md


def test_train_speed_lever_subset_gets_its_own_block(bench):
    """A subset of levers (compile is only run by name) must not overwrite the full table's block,
    and the fp32 reference cannot be left out."""
    m = bench("train_speed")
    assert not set(m.COMPILED) & set(m.DEFAULT_LEVERS) and m.parse([]).block == ""
    assert set(m.COMPILED) <= set(m.LEVERS)
    assert m.parse(["--levers", "fp32", "compile"]).block == ":fp32-compile"
    with pytest.raises(SystemExit):
        m.parse(["--levers", "compile"])


def test_train_speed_fresh_quick(bench, tmp_path):
    """Each variant a real `rc2l train` process; steps/s read back from its metrics.jsonl."""
    m = bench("train_speed_fresh")
    args = ["--quick", "--threads", "1", "--methods", "rc2l", "--levers", "fp32", "channels_last"]
    assert m.main([*args, "--out", str(tmp_path)]) == 0
    data, md = read_out(tmp_path)
    # a subset of the usual runs gets a block of its own, leaving the full table's block alone
    block = "train_speed_fresh/cpu:rc2l-fp32-channels_last"
    assert m.parse([]).block == "" and m.parse(args).block == block[len("train_speed_fresh/cpu") :]
    rows = [r for r in data["rows"] if r["run"] == block]
    assert [(r["method"], r["lever"]) for r in rows] == [("rc2l", "fp32"), ("rc2l", "channels_last")]
    for r in rows:
        assert r["steps_per_s"] > 0 and len(r["steps_per_s_rounds"]) == 1 and 0 <= r["kernel_share"] < 1
        assert r["speedup"] == pytest.approx(r["steps_per_s"] / rows[0]["steps_per_s"])
    assert f"<!-- BEGIN {block}" in md and "fresh `rc2l train` process" in md


def test_train_speed_fresh_names_a_run_that_fails(bench, tmp_path):
    m = bench("train_speed_fresh")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="exited with 2 before step 4(.|\n)*train.no_such_key"):
        m.run_variant(["train.no_such_key=1"], out, steps=4, timeout_s=120)
