"""Smoke tests of benchmarks/: each script run as a user runs it (a process of its own; tests
import only rc2l) in --quick mode (tiny sizes, one repetition) writes the table and JSON rows it
promises; the memory method measures a known allocation; a script replaces its own block and
rows and keeps the others'; --plan names the block a command would write. No timing assertions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
# region_vs_pixel.py's rows: the region methods, the sampled pixel loss (--quick: 64 pixels) and
# the two exact pixel losses, which --max-call-s can skip
REGION_METHODS = ["match", "rmc", "rfc", "rcc", "smc", "region_all"]
EXACT = ["pixel_exact", "pixel_exact_chunked"]
# train_speed.py's levers without --levers (compile and points only when named)
DEFAULT_LEVERS = [
    "fp32",
    "bf16",
    "channels_last",
    "cache",
    "teacher_inference_mode",
    "cache_workers2",
    "kept",
    "kept_bf16",
]


def bench(name: str, *args: str, ok: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python benchmarks/<name>.py args`` from the repository root, one OpenMP thread; with
    ``ok`` its exit status must be 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def read_out(out: Path) -> tuple[dict, str]:
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text()


def test_region_vs_pixel_quick(tmp_path):
    # --max-call-s 0: every exact row after the first size must be skipped with a reason
    bench("region_vs_pixel", "--quick", "--sizes", "32", "48", "--max-call-s", "0", "--out", str(tmp_path))
    data, md = read_out(tmp_path)
    meta = data["runs"]["region_vs_pixel/cpu"]
    assert meta["commit"] and meta["command"].endswith("--out " + str(tmp_path)) and meta["machine"]["cpu"]
    rows = [r for r in data["rows"] if r["run"] == "region_vs_pixel/cpu"]
    loss = [r for r in rows if r["kind"] == "loss"]
    methods = {*REGION_METHODS, "pixel_sampled_64", *EXACT}
    assert {(r["method"], r["input"]) for r in loss} == {(x, s) for x in methods for s in ("32×32", "48×48")}
    for r in loss:
        if r["method"] in EXACT and r["input"] == "48×48":
            assert r["status"].startswith("not run") and r["time_s"] is None
        else:
            assert r["status"] == "ok" and r["time_s"] > 0, r
    assert all(r["ratio_vs_reference"] > 0 for r in loss if r["input"] == "32×32")
    ops = {r["method"]: r["ops_per_call"] for r in loss if r["input"] == "32×32"}
    assert all(ops[k] > 0 for k in REGION_METHODS) and ops["region_all"] > ops["rmc"] + ops["smc"]
    (share,) = [r for r in rows if r["kind"] == "step_share"]
    assert 0 < share["ratio_vs_reference"] == share["share"] and isinstance(share["goal_met"], bool)
    assert "<!-- BEGIN region_vs_pixel/cpu" in md and "slope (2 largest)" in md and "not run" in md
    assert (tmp_path / "figures" / "region_vs_pixel.png").stat().st_size > 1000


def test_vs_hf_maskformer_quick(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    bench("vs_hf_maskformer", "--quick", "--out", str(tmp_path))
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


def test_memory_quick(tmp_path):
    cityscapes = str(REPO / "configs" / "cityscapes.yaml")
    args = ["--quick", "--configs", cityscapes, "--methods", "supervised", "rc2l", "unimatch", "--out", str(tmp_path)]
    bench("memory", *args)
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


def test_memory_rejects_mem_off(tmp_path):
    p = bench("memory", "--mem", "off", "--out", str(tmp_path), ok=False)
    assert p.returncode != 0 and "--mem off" in p.stderr
    assert not (tmp_path / "benchmarks.json").exists()


def test_peak_memory_method_sees_an_allocation():
    """In this process and in a fresh one, the peak of a 96 MiB allocation reads as 96 MiB."""
    n = 96 * MiB
    r = json.loads(bench("memory", "--check-method", "96").stdout.splitlines()[-1])
    assert r["bytes"] == n
    for m in (r["inproc"], r["fresh"]):
        assert m["reset_ok"]
        assert n - 2 * MiB <= m["peak"] < n + 16 * MiB, r


OTHER_BLOCK = "<!-- BEGIN other/cpu (written by benchmarks/other.py) -->\nother table\n<!-- END other/cpu -->"


def test_op_counts_quick_replaces_its_rows_and_keeps_others(tmp_path):
    """Every call dispatches as many operations for 1 image as for 3 (no per-image loop, the
    supervised criterion included); the criterion's count grows with its decoder layers. A rerun
    replaces the script's own block and rows, another device/AMP block and another benchmark's
    are kept."""
    (tmp_path / "benchmarks.json").write_text(
        json.dumps({"schema": 1, "runs": {"other/cpu": {"commit": "abc"}}, "rows": [{"run": "other/cpu", "v": 1}]})
    )
    (tmp_path / "benchmarks.md").write_text(f"# Benchmarks\n\n### other/cpu\n\n{OTHER_BLOCK}\n")
    bench("op_counts", "--quick", "--batches", "1", "3", "--out", str(tmp_path))
    data, md = read_out(tmp_path)
    rows = {r["call"]: r for r in data["rows"] if r["run"] == "op_counts/cpu"}
    assert set(rows) == {"match", "rmc", "rfc", "rcc", "smc", "region_all", "criterion"}
    assert all(r["ops_batch_1"] == r["ops_batch_3"] > 0 for r in rows.values())
    assert rows["region_all"]["ops_batch_1"] > rows["match"]["ops_batch_1"] + rows["rmc"]["ops_batch_1"]
    assert "| supervised criterion, 2 layers |" in md  # --quick: at most 2 layers

    bench("op_counts", "--quick", "--batches", "1", "--layers", "1", "--out", str(tmp_path))
    bench("op_counts", "--quick", "--amp", "--batches", "2", "--out", str(tmp_path))
    data, md = read_out(tmp_path)
    assert [r["run"] for r in data["rows"]] == ["other/cpu"] + ["op_counts/cpu"] * 7 + ["op_counts/cpu+amp"] * 7
    assert data["rows"][0]["v"] == 1 and set(data["runs"]) == {"other/cpu", "op_counts/cpu", "op_counts/cpu+amp"}
    again = {r["call"]: r for r in data["rows"] if r["run"] == "op_counts/cpu"}
    assert set(again) == set(rows) and all(set(r) == {"run", "call", "ops_batch_1"} for r in again.values())
    assert again["criterion"]["ops_batch_1"] < rows["criterion"]["ops_batch_1"]  # 1 decoder layer, not 2
    assert again["match"]["ops_batch_1"] == rows["match"]["ops_batch_1"]
    assert md.count("<!-- BEGIN op_counts/cpu ") == 1 and md.count("<!-- BEGIN op_counts/cpu+amp ") == 1
    cpu = md[md.index("<!-- BEGIN op_counts/cpu ") : md.index("<!-- END op_counts/cpu -->")]
    assert "| supervised criterion, 1 layers |" in cpu and "2 layers" not in cpu and "ops, batch 3" not in cpu
    assert OTHER_BLOCK in md


def test_train_speed_quick(tmp_path):
    bench("train_speed", "--quick", "--threads", "1", "--out", str(tmp_path))
    data, md = read_out(tmp_path)
    meta = data["runs"]["train_speed/cpu"]
    assert meta["quick"] and meta["peak_flops"]["fp32"] > 0 and meta["peak_flops"]["bf16"] > 0
    rows = [r for r in data["rows"] if r["run"] == "train_speed/cpu"]
    steps = {(r["method"], r["lever"]): r for r in rows if r["kind"] == "step"}
    expected = {(meth, lv) for meth in ("supervised", "rc2l") for lv in DEFAULT_LEVERS}
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


def plan(name: str, *args: str) -> str:
    """The block ``benchmarks/<name>.py args`` would write (its --plan output)."""
    return bench(name, "--plan", *args).stdout.strip()


def test_train_speed_lever_subset_gets_its_own_block():
    """A subset of levers (compile is only run by name) must not overwrite the full table's block,
    and the fp32 reference cannot be left out."""
    assert plan("train_speed") == "train_speed/cpu"
    assert plan("train_speed", "--levers", *DEFAULT_LEVERS) == "train_speed/cpu"
    assert plan("train_speed", "--levers", "fp32", "compile") == "train_speed/cpu:fp32-compile"
    assert plan("train_speed", "--levers", "fp32", "kept_bf16_compile") == "train_speed/cpu:fp32-kept_bf16_compile"
    p = bench("train_speed", "--plan", "--levers", "compile", ok=False)
    assert p.returncode == 2 and "--levers must include fp32" in p.stderr


def test_train_speed_fresh_quick(tmp_path):
    """Each variant a real `rc2l train` process; steps/s read back from its metrics.jsonl."""
    args = ["--quick", "--threads", "1", "--methods", "rc2l", "--levers", "fp32", "channels_last"]
    # a subset of the usual runs gets a block of its own, leaving the full table's block alone
    block = "train_speed_fresh/cpu:rc2l-fp32-channels_last"
    assert plan("train_speed_fresh") == "train_speed_fresh/cpu" and plan("train_speed_fresh", *args) == block
    bench("train_speed_fresh", *args, "--out", str(tmp_path))
    data, md = read_out(tmp_path)
    rows = [r for r in data["rows"] if r["run"] == block]
    assert [(r["method"], r["lever"]) for r in rows] == [("rc2l", "fp32"), ("rc2l", "channels_last")]
    for r in rows:
        assert r["steps_per_s"] > 0 and len(r["steps_per_s_rounds"]) == 1 and 0 <= r["kernel_share"] < 1
        assert r["speedup"] == pytest.approx(r["steps_per_s"] / rows[0]["steps_per_s"])
    assert f"<!-- BEGIN {block}" in md and "fresh `rc2l train` process" in md


def test_train_speed_fresh_names_a_run_that_fails(tmp_path):
    """A variant whose `rc2l train` exits early stops the benchmark with the run's own error."""
    args = ["--quick", "--threads", "1", "--methods", "rc2l", "--arch", "deeplabv3plus", "--levers", "fp32"]
    p = bench("train_speed_fresh", *args, "--out", str(tmp_path), ok=False)
    assert p.returncode != 0
    assert re.search(r"exited with 2 before step 4(.|\n)*method=rc2l needs model.arch=maskformer", p.stderr), p.stderr
    assert not (tmp_path / "benchmarks.json").exists()
