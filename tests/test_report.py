"""rc2l report: plots from metrics.jsonl, the val gallery, and the page rendered in headless
Chromium with every image loaded."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infer_helpers import cli, tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


PROBE = (
    '<img id="probe-missing" src="report/does-not-exist.png" alt="negative control">\n<script>\n'
    "window.addEventListener('load', function () {\n"
    "  var imgs = Array.prototype.slice.call(document.images);\n"
    "  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })\n"
    "               .map(function (i) { return i.getAttribute('src'); });\n"
    "  document.body.setAttribute('data-images', String(imgs.length));\n"
    "  document.body.setAttribute('data-broken', bad.join('|'));\n"
    "});\n</script>\n"
)


def _render(chromium: str, page: Path, tmp: Path) -> tuple[int, list[str]]:
    """Load a copy of ``page`` (same folder, so relative paths hold) with a probe script and a
    deliberately missing image; → (number of <img>, srcs that did not load)."""
    probe_page = page.with_name("_probe_" + page.name)
    probe_page.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe_page.resolve().as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", r.stdout)
    assert body, r.stdout[:500]
    n = re.search(r'data-images="(\d+)"', body.group(1))
    assert n, f"the probe script did not run: {body.group(0)[:300]}"
    broken = re.search(r'data-broken="([^"]*)"', body.group(1)).group(1)
    return int(n.group(1)), [b for b in broken.split("|") if b]


def test_report_page_loads_every_image(run_dir, chromium, tmp_path):
    code, stdout, stderr = cli(["report", str(run_dir), "--gallery", "2"])
    assert code == 0, stderr
    page = run_dir / "report.html"
    text = page.read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    expect = {
        "report/losses.png",
        "report/miou.png",
        "report/per_class.png",
        "report/confusion.png",
        "report/gallery_000.png",
        "report/gallery_001.png",
    }
    assert set(srcs) == expect, srcs
    n, broken = _render(chromium, page, tmp_path)
    assert n == len(srcs) + 1  # + the probe
    assert broken == ["report/does-not-exist.png"], broken  # the check sees a broken image, and only it
    # the gallery strip is image | ground truth | prediction at the val image size (64×64)
    g = Image.open(run_dir / "report" / "gallery_000.png")
    assert g.size == (3 * 64 + 2 * 4, 64)


def test_report_out_elsewhere_uses_relative_paths(run_dir, tmp_path):
    out = tmp_path / "pages" / "r.html"
    code, _, stderr = cli(["report", str(run_dir), "--out", str(out), "--gallery", "0"])
    assert code == 0, stderr
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', out.read_text())
    assert srcs and all((out.parent / s).resolve().is_file() for s in srcs), srcs
    assert not any(s.startswith("/") for s in srcs)


def _write_metrics(path: Path) -> None:
    k = 3
    recs = []
    for step in range(1, 7):
        recs.append(
            {
                "step": step,
                "type": "train",
                "loss": 3.0 / step,
                "loss_ce": 1.0 / step,
                "rmc": 0.5,
                "rfc": 0.2,
                "fixmatch": 0.1,
                "pixel_contrast": 0.05,
                "grad_norm": 9.0,
                "lr": 1e-4,
                "it_s": 2.0,
                "skipped_steps": 0,
            }
        )
    for step, ms, mt in ((3, 20.0, 25.0), (6, 30.0, 28.0)):
        for model, m in (("student", ms), ("teacher", mt)):
            recs.append(
                {
                    "step": step,
                    "split": "val",
                    "mode": "original",
                    "miou": m,
                    "model": model,
                    "per_class": [m, float("nan"), m / 2],
                    "crop": [64, 64],
                    "dataset": "synthetic",
                    "confusion": [[5, 5, 0], [0, 0, 0], [1, 0, 3]][:k],
                }
            )
    recs[:0] = [{"type": "start", "step": 0, "commit": "aaa1111", "torch": "2.14.1", "device": "cpu: X"}]
    recs.insert(4, {"type": "start", "step": 3, "commit": "bbb2222", "torch": "2.14.1", "device": "cuda: H"})
    recs.append({"type": "end", "step": 6, "wall_s": 150.0, "wall_s_this_part": 90.0})
    lines = [json.dumps(r) for r in recs]
    lines.insert(3, '{"step": 4, "type": "tra')  # a line cut off by a crash
    path.write_text("\n".join(lines) + "\n")


def test_report_from_metrics_only(tmp_path):
    """No weights/config: every plot from metrics.jsonl, the gallery says why it is missing,
    a broken line is reported by its line number."""
    from rc2l.infer.report import best_record, loss_keys, normalise_rows, plot_miou, read_run_log

    run = tmp_path / "run"
    run.mkdir()
    _write_metrics(run / "metrics.jsonl")
    train, evals, _, warns = read_run_log(run / "metrics.jsonl")
    assert len(train) == 6 and len(evals) == 4
    assert warns == [f"{run / 'metrics.jsonl'}:4: not valid JSON, skipped"]
    assert loss_keys(train) == ["loss", "loss_ce", "rmc", "rfc", "fixmatch", "pixel_contrast"]
    assert plot_miou(evals, tmp_path / "m.png") == ["student", "teacher"]  # a line per model
    best = best_record(evals)
    assert (best["model"], best["step"]) == ("student", 6)
    norm = normalise_rows(np.array(best["confusion"]))
    np.testing.assert_allclose(norm, [[0.5, 0.5, 0], [0, 0, 0], [0.25, 0, 0.75]])

    code, _, stderr = cli(["report", str(run)])
    assert code == 0, stderr
    html = (run / "report.html").read_text()
    assert "gallery not available: best.safetensors not found" in html
    assert ":4: not valid JSON, skipped" in html
    for name in ("losses", "miou", "per_class", "confusion"):
        assert f'src="report/{name}.png"' in html
        with Image.open(run / "report" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert "30.00 (student, step 6" in html and "28.00 (step 6)" in html  # best + last teacher
    assert "<th>started</th><td>commit aaa1111, torch 2.14.1, cpu: X</td>" in html  # which code ran which steps
    assert "<th>resumed at step 3</th><td>commit bbb2222, torch 2.14.1, cuda: H</td>" in html
    assert "<th>finished at step 6</th><td>wall time 2.5 min, every part of the run counted</td>" in html


def test_report_without_a_run_folder(tmp_path):
    code, _, stderr = cli(["report", str(tmp_path / "missing")])
    assert code == 2 and "run folder not found" in stderr
    code, _, stderr = cli(["report", str(tmp_path)])
    assert code == 2 and "metrics.jsonl not found" in stderr


def test_metrics_log_after_a_cut_off_line_keeps_the_next_record(tmp_path):
    """A run killed mid-write leaves half a line; the resumed run's first record must still
    parse (only the half line is lost, and read_run_log names it)."""
    from rc2l.engine.metrics_log import MetricsLog
    from rc2l.infer.report import read_run_log

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "type": "train", "loss": 1.0}\n{"step": 2, "type": "tra')
    log = MetricsLog(tmp_path, enabled=True)
    log.write({"step": 2, "type": "train", "loss": 0.5}, "train")
    log.close()
    train, _, _, warns = read_run_log(path)
    assert [r["step"] for r in train] == [1, 2]
    assert warns == [f"{path}:2: not valid JSON, skipped"]
