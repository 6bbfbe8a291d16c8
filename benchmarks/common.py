"""Shared pieces of the benchmark scripts: machine / commit description, interleaved timing,
peak memory (RSS high-water of a fresh process on CPU, the CUDA allocator's peak on GPU),
log-log slope fits, and output (stdout table, a marked section of docs/benchmarks.md and the
rows of docs/benchmarks.json).

Why a fresh process for CPU memory: torch's CPU allocations are invisible to tracemalloc, and
in a process that already ran something, freed-but-kept heap pages make a second peak look
smaller than it is. ``fresh_peak`` runs a measurement in a child forked from a pristine
"forkserver" process (it has only imported modules), resets the kernel's high-water mark
(``/proc/self/clear_refs`` = 5) after the inputs are built, runs the operation once and reports
VmHWM − VmRSS-before: the extra resident memory the operation needed at its peak.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from rc2l.provenance import cpu_model, git_commit

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
GiB = 1024 * MiB


# ----------------------------------------------------------------------------- CLI
def base_parser(description: str) -> argparse.ArgumentParser:
    """--device, --amp, --out, --quick, --mem shared by every script."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast bf16 (CUDA and CPU)")
    p.add_argument(
        "--out", default=str(REPO / "docs"), help="folder of benchmarks.md / benchmarks.json / figures (default docs/)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 repetitions: a smoke test, not a measurement")
    p.add_argument(
        "--mem",
        choices=("fresh", "inproc", "off"),
        default=None,
        help="CPU peak memory: fresh process per measurement (default), in this process (--quick default; "
        "under-reports when freed heap is reused), or off",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = PyTorch default)")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the block this command would write in <out>/benchmarks.md (name/device[+amp][:subset]) "
        "and exit without measuring",
    )
    return p


def finish_args(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """Defaults that depend on other options, the device check and the thread count; with
    ``--plan``, print the block ``name`` would write (``section_key``) and exit."""
    if args.plan:
        print(section_key(name, args))
        raise SystemExit(0)
    if args.mem is None:
        args.mem = "inproc" if args.quick else "fresh"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    return args


def amp_context(device: str, amp: bool):
    import torch

    return torch.autocast(device, dtype=torch.bfloat16, enabled=amp)


# ----------------------------------------------------------------------------- description
def command_line(script: str | None = None, argv: list[str] | None = None) -> str:
    """The exact command: interpreter, the script (relative to the repository root when
    possible) and its arguments (``argv`` when main() was called with them, else sys.argv)."""

    def rel(p: str) -> str:
        try:
            return str(Path(p).resolve().relative_to(REPO)) if Path(p).is_absolute() or Path(p).exists() else p
        except ValueError:
            return p

    args = list(sys.argv[1:]) if argv is None else list(argv)
    py = sys.executable
    try:
        py = str(Path(py).relative_to(REPO))  # keep .venv/bin/python unresolved (symlink)
    except ValueError:
        pass
    return shlex.join([py, rel(script or sys.argv[0])] + args)


def machine_info(device: str, amp: bool) -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "amp": "bf16" if amp else "off",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1)
    except (ValueError, OSError):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def run_meta(name: str, args: argparse.Namespace, argv: list[str] | None = None, script: str | None = None) -> dict:
    return {
        "benchmark": name,
        "commit": git_commit(),
        "command": command_line(script, argv),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "mem_method": mem_method_name(args),
        "machine": machine_info(args.device, args.amp),
    }


def mem_method_name(args) -> str:
    if args.device == "cuda":
        return "torch.cuda.max_memory_allocated (peak minus allocated before)"
    return {
        "fresh": "RSS high-water (VmHWM) minus RSS before, fresh process per measurement",
        "inproc": "RSS high-water (VmHWM) minus RSS before, in the benchmark process (may under-report)",
        "off": "not measured",
    }[args.mem]


# ----------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(
    fns: dict[str, Callable[[], object]], device: str, reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each callable ``reps`` times in round-robin order A, B, C, A, B, C, ... after
    ``warmup`` untimed calls each, so slow drifts of the machine's load hit all alike.
    Returns name → list of seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            out[k].append(time_once(fn, device))
    return out


def count_ops(fn: Callable[[], object]) -> int:
    """Tensor operations one call of ``fn`` dispatches to the backend, backward included, not
    counting views and aliases (they only make metadata): on a GPU each of the others is a
    kernel launch, which is what makes small losses launch-bound, and unlike a time the count
    does not depend on the machine or its load."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not (func.is_view or func.__name__.startswith("lift_fresh")):
                self.n += 1
            return func(*args, **(kwargs or {}))

    counter = _Count()
    with counter:
        fn()
    return counter.n


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def iqr(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x (≈1 linear, ≈2 quadratic); NaN if < 2 points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else float("nan")


# ----------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else -1


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0). False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Give free heap pages back to the OS (glibc), so an allocation that reuses them shows up
    in RSS again instead of hiding in memory the process already had."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_bytes() -> int:
    hwm = _status_kib("VmHWM")
    if hwm >= 0:
        return hwm * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMeter:
    """Peak extra memory of the code run inside ``with``: CUDA allocator peak on GPU,
    RSS high-water minus RSS before on CPU. ``.peak`` in bytes, ``.absolute`` the process'
    absolute peak (RSS or allocated)."""

    def __init__(self, device: str):
        self.device = device
        self.peak = None
        self.absolute = None

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            import gc

            gc.collect()
            malloc_trim()
            self.reset_ok = reset_peak_rss()
            self.before = rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.absolute = torch.cuda.max_memory_allocated()
        else:
            self.absolute = peak_rss_bytes()
        self.peak = max(0, self.absolute - self.before)
        return False


def _fresh_child(conn, target: str, kwargs: dict) -> None:
    import importlib

    try:
        mod_name, fn_name = target.rsplit(":", 1)
        fn = getattr(importlib.import_module(mod_name), fn_name)
        conn.send(("ok", fn(**kwargs)))
    except BaseException as e:  # report, never hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


class FreshRunner:
    """Runs ``module:function(**kwargs)`` in a fresh child process per call, forked from a
    pristine forkserver that pre-imported ``preload`` (so a child starts in milliseconds and
    inherits no heap from earlier measurements). The function should build its inputs, then
    measure with ``PeakMeter`` and return a picklable result."""

    def __init__(self, preload: list[str]):
        self.ctx = mp.get_context("forkserver")
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        self.ctx.set_forkserver_preload(preload)

    def __call__(self, target: str, timeout: float = 900.0, **kwargs):
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_fresh_child, args=(child, target, kwargs))
        proc.start()
        child.close()
        try:
            if not parent.poll(timeout):
                proc.kill()
                raise RuntimeError(f"{target} timed out after {timeout:.0f} s in a fresh process")
            status, value = parent.recv()
        except EOFError:
            proc.join()
            raise RuntimeError(
                f"{target} died in a fresh process (exit code {proc.exitcode}; out of memory?)"
            ) from None
        finally:
            proc.join(timeout=30)
        if status != "ok":
            raise RuntimeError(f"{target} failed in a fresh process: {value}")
        return value


# ----------------------------------------------------------------------------- output
def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_bytes(b: float | None) -> str:
    if b is None or not math.isfinite(b):
        return "–"
    if b >= GiB:
        return f"{b / GiB:.2f} GiB"
    return f"{b / MiB:.1f} MiB"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def meta_block(meta: dict) -> str:
    m = meta["machine"]
    hw = f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m.get('mem_total_gib', '?')} GiB RAM"
    if m.get("gpu"):
        hw += f", GPU {m['gpu']} (CUDA {m.get('cuda')})"
    return "\n".join(
        [
            f"- machine: {hw}; torch {m['torch']}, Python {m['python']}; device {m['device']}, AMP {m['amp']}",
            f"- load average at start: {', '.join(str(x) for x in m['loadavg_start'])} (1/5/15 min)",
            f"- commit: `{meta['commit']}`, {meta['date']}"
            + (" — QUICK smoke run, not a measurement" if meta["quick"] else ""),
            f"- command: `{meta['command']}`",
            f"- peak memory: {meta['mem_method']}",
        ]
    )


def section_key(name: str, args) -> str:
    """``name/device[+amp]``, then ``args.block`` where a script measured a subset of its usual
    table (so it does not overwrite the full block)."""
    return f"{name}/{args.device}" + ("+amp" if args.amp else "") + getattr(args, "block", "")


def publish(name: str, args, meta: dict, rows: list[dict], markdown: str) -> None:
    """Print the report, replace this benchmark's (and device's) rows in <out>/benchmarks.json
    and its marked section in <out>/benchmarks.md (created when missing)."""
    key = section_key(name, args)
    text = f"{meta_block(meta)}\n\n{markdown}\n"
    print(f"\n## {key}\n{text}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "benchmarks.json"
    data = {"schema": 1, "runs": {}, "rows": []}
    if jpath.exists():
        try:
            data = json.loads(jpath.read_text())
        except json.JSONDecodeError:
            print(f"warning: {jpath} was not valid JSON; rewriting it", file=sys.stderr)
    data.setdefault("runs", {})[key] = meta
    data["rows"] = [r for r in data.get("rows", []) if r.get("run") != key] + [{"run": key, **r} for r in rows]
    jpath.write_text(json.dumps(data, indent=1, sort_keys=False, default=_json_default) + "\n")
    mpath = out / "benchmarks.md"
    begin, end = f"<!-- BEGIN {key} (written by benchmarks/{name}.py) -->", f"<!-- END {key} -->"
    block = f"{begin}\n{text}{end}"
    doc = mpath.read_text() if mpath.exists() else "# Benchmarks\n"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + f"\n\n### {key}\n\n{block}\n"
    mpath.write_text(doc)
    print(f"wrote {jpath} and {mpath}")


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def clean_json(x):
    """NaN/inf → None so the JSON is standard."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    return x


def alloc_probe(nbytes: int) -> dict:
    """Self-check of the memory method: allocate and touch ``nbytes`` inside ``PeakMeter``;
    the reported peak should be ≈ nbytes."""
    with PeakMeter("cpu") as m:
        buf = bytearray(nbytes)
        buf[::4096] = b"\x01" * len(range(0, nbytes, 4096))
        del buf
    return {"peak": m.peak, "absolute": m.absolute, "reset_ok": m.reset_ok}
