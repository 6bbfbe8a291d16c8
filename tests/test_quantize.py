"""rc2l export --int8: static int8 ONNX calibrated on images; argmax parity with the fp32
model on a test image, and refusal (no file written) when the agreement is too low. The
portable form (the default) cannot saturate on any x86 CPU, whatever this one is; a model
that is not exact on the loading CPU is refused there, both branches tested by simulation."""

from __future__ import annotations

import pytest

from rc2l.errors import RC2LError

from infer_helpers import cli, synthetic_image, tiny_run

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def export_int8(run, path, calib, *extra) -> tuple[int, str, str]:
    weights = str(run / "best.safetensors")
    return cli(["export", "--weights", weights, "--onnx", str(path), "--int8", "--calibrate", str(calib), *extra])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = tiny_run(tmp_path_factory)
    d = tmp_path_factory.mktemp("int8")
    calib = d / "calib"
    for i in range(6):
        synthetic_image(calib / f"{i}.png", 64, 64, 100 + i)
    path = d / "model.onnx"
    code, out, err = export_int8(run, path, calib, "--min-agreement", "0.5")
    assert code == 0, out + err
    return run, path, calib, out


def int8_weights(path) -> list:
    """The int8 weight tensors (initializers) of a QDQ model, as numpy arrays."""
    import onnx
    from onnx import TensorProto, numpy_helper

    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == TensorProto.INT8]


def quant_meta(path) -> dict:
    import json

    import onnx

    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["quantization"])


def with_quant_meta(src, dst, **changes):
    """A copy of the int8 model at ``src`` with its quantization metadata changed."""
    import json

    import onnx

    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == "quantization":
            q = json.loads(p.value)
            q.update(changes)
            p.value = json.dumps({k: v for k, v in q.items() if v is not None})
    onnx.save(m, str(dst))
    return dst


def test_int8_model_is_written_with_metadata_and_agrees_with_fp32(exported, tmp_path):
    import onnx

    import rc2l

    run, path, _, out = exported
    q = path.with_name("model.int8.onnx")
    assert q.is_file() and "argmax agrees with fp32" in out
    meta = {p.key: p.value for p in onnx.load(str(q)).metadata_props}
    assert "quantization" in meta and "class_names" in meta
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(q)).graph.node)
    synthetic_image(tmp_path / "test.png", 64, 80, 999)  # not a calibration image, another size
    fp32 = rc2l.load(path).predict(str(tmp_path / "test.png"), mode="original")
    int8 = rc2l.load(q).predict(str(tmp_path / "test.png"), mode="original")
    assert int8.shape == fp32.shape and (int8 == fp32).mean() > 0.9


def test_default_form_is_portable_7bit_weights_with_a_probe(exported):
    """7-bit weights keep every pair of u8×s8 products under 2^15: no saturation on AVX2."""
    q = exported[1].with_name("model.int8.onnx")
    meta = quant_meta(q)
    assert meta["form"] == "portable" and meta["weight_bits"] == 7 and "portable form" in exported[3]
    weights = int8_weights(q)
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64
    c, h, w = meta["probe"]["shape"]
    assert c == 3 and h % 32 == 0 and w % 32 == 0 and meta["probe"]["agreement_at_export"] >= 0.5


def test_vnni_form_is_refused_on_a_cpu_without_vnni(exported, tmp_path, monkeypatch):
    import onnxruntime as ort

    from rc2l.infer import quantize
    from rc2l.infer.quantize import check_int8

    run, _, calib, _ = exported
    path = tmp_path / "model.onnx"
    code, out, err = export_int8(run, path, calib, "--int8-form", "vnni", "--min-agreement", "0")
    q = path.with_name("model.int8.onnx")
    assert code == 0 and quant_meta(q)["form"] == "vnni", out + err
    assert max(int(abs(w.astype(int)).max()) for w in int8_weights(q)) > 64  # the full 8-bit range
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    code, _, err = cli(["predict", "--weights", str(q), str(calib / "0.png"), "--out", str(tmp_path / "p")])
    assert code != 0 and err.count("\n") == 1 and "VNNI-only form" in err and "rc2l export --int8" in err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
    # a file from before the forms (no "form" key) had 8-bit weights: the same refusal
    old = with_quant_meta(q, tmp_path / "old.onnx", form=None, probe=None)
    sess = ort.InferenceSession(str(old), providers=["CPUExecutionProvider"])
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    with pytest.raises(RC2LError, match="VNNI-only"):
        check_int8(sess, meta, str(old))
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: True)
    assert check_int8(sess, meta, str(old)) == "vnni"  # no probe to run: accepted where VNNI is


def test_int8_model_whose_probe_disagrees_on_this_cpu_is_refused(exported, tmp_path):
    """What a CPU whose int8 kernels go wrong would see: the stored fp32 classes no longer match
    the int8 model's output on the probe. Simulated by shifting the stored classes."""
    import base64

    import numpy as np

    import rc2l

    q = exported[1].with_name("model.int8.onnx")
    probe = quant_meta(q)["probe"]
    labels = np.frombuffer(base64.b64decode(probe["labels_i32"]), np.int32)
    wrong = dict(probe, labels_i32=base64.b64encode(((labels + 1) % 5).astype(np.int32).tobytes()).decode())
    bad = with_quant_meta(q, tmp_path / "bad.onnx", probe=wrong)
    with pytest.raises(RC2LError, match=r"probe image on this CPU.*not exact here"):
        rc2l.load(bad)
    code, _, err = cli(["predict", "--weights", str(bad), str(exported[2] / "0.png"), "--out", str(tmp_path / "p")])
    assert code != 0 and err.count("\n") == 1 and err.startswith("error:") and "fp32 model" in err
    malformed = with_quant_meta(q, tmp_path / "malformed.onnx", probe={"shape": [3, "x"]})
    with pytest.raises(RC2LError, match="probe in its metadata is malformed"):
        rc2l.load(malformed)
    assert rc2l.load(q).predict(np.zeros((64, 64, 3), np.uint8)).shape == (64, 64)  # the real one loads


def test_cpu_flags_decide_vnni():
    import platform

    from rc2l.infer.quantize import cpu_has_vnni

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the flags are read on x86 only; elsewhere cpu_has_vnni() is True")
    assert cpu_has_vnni("processor : 0\nflags : fpu sse avx2 fma\n") is False
    assert cpu_has_vnni("processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n") is True
    assert cpu_has_vnni("flags : avx2 avx_vnni\n") is True and cpu_has_vnni("flags : amx_int8\n") is True
    assert cpu_has_vnni("model name : something\n") is None


def test_int8_is_refused_when_the_agreement_is_too_low(exported, tmp_path):
    run, _, calib, _ = exported
    path = tmp_path / "model.onnx"
    code, out, err = cli(
        [
            "export",
            "--weights",
            str(run / "best.safetensors"),
            "--onnx",
            str(path),
            "--int8",
            "--calibrate",
            str(calib),
            "--min-agreement",
            "1.01",
        ]
    )
    assert code == 2 and "not writing" in err and err.strip().startswith("error:")
    assert path.is_file() and not path.with_name("model.int8.onnx").exists()


def test_int8_needs_calibration_images(exported, tmp_path):
    run = exported[0]
    code, _, err = cli(
        ["export", "--weights", str(run / "best.safetensors"), "--onnx", str(tmp_path / "m.onnx"), "--int8"]
    )
    assert code == 2 and "--calibrate" in err


def test_onnx_int8_benchmark_quick(tmp_path):
    """The benchmark script run as a user runs it (a process of its own: tests import only rc2l)."""
    import json
    import os
    import subprocess
    import sys

    from infer_helpers import REPO

    args = ["--quick", "--reps", "1", "--calib", "2", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "onnx_int8.py"), *args], cwd=REPO, env=env, capture_output=True
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    from rc2l.infer.quantize import cpu_has_vnni

    run = "onnx_int8/cpu:" + ("vnni" if cpu_has_vnni() else "no-vnni")
    rows = [r for r in data["rows"] if r["run"] == run]
    assert [r["backend"] for r in rows] == ["eager fp32", "onnx fp32", "onnx int8 portable", "onnx int8 vnni"]
    assert rows[0]["speedup_vs_eager_fp32"] == 1.0 and all(r["ms_per_image"] > 0 for r in rows)
    md = (tmp_path / "benchmarks.md").read_text()
    assert "× eager fp32" in md and "CPU flags: " in md and f"### {run}" in md


def test_stem_and_depthwise_convolutions_stay_fp32(exported):
    """The stem and grouped convolutions lose the most in int8 (measured on CamVid): they are
    left unquantised, every other Conv gets a quantised weight."""
    import onnx
    from onnx import TensorProto, helper

    from rc2l.infer.quantize import fp32_nodes

    def conv(name, x, y, group=1):
        return helper.make_node("Conv", [x, name + ".w"], [y], name=name, group=group)

    g = helper.make_graph(
        [conv("stem", "x", "a"), conv("pw", "a", "b"), conv("dw", "b", "c", group=8), conv("head", "c", "y")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    assert fp32_nodes(g) == ["stem", "dw"]

    _, path, _, _ = exported
    q = onnx.load(str(path.with_name("model.int8.onnx"))).graph
    made_by = {out: n.op_type for n in q.node for out in n.output}
    kept = set(fp32_nodes(q))
    convs = [n for n in q.node if n.op_type == "Conv"]
    assert kept and len(kept) < len(convs)
    for n in convs:
        assert (made_by.get(n.input[1]) == "DequantizeLinear") == (n.name not in kept), n.name
