"""Which code and machine made a run, recorded by the run itself, so that a result in
docs/results.json or a shared best.safetensors can be traced back without anyone typing a hash."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]


def git_commit(repo: Path = SOURCE) -> str:
    """Short HEAD hash of ``repo``, with "+dirty" when tracked or untracked files differ from it;
    "unknown" outside a git checkout (an installed wheel). RC2L_COMMIT overrides it for copies of
    the tree without .git (e.g. a rented GPU machine)."""
    if os.environ.get("RC2L_COMMIT"):
        return os.environ["RC2L_COMMIT"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        # A wheel installed in a virtualenv that sits inside some checkout must not report that
        # checkout's commit: the package's source folder has to be the repository's top level.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(repo).resolve():
            return "unknown"
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text, "" where there is none (macOS, Windows, a sandbox)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, with its x86 family and model numbers: a VM often reports only
    "AMD EPYC", which hides a generation that changes training speed about twofold."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def run_record(step: int, device) -> dict:
    """The metrics.jsonl line written at every (re)start of a training run."""
    import torch  # not at module level: benchmarks import git_commit into torch-free processes

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "type": "start",
        "step": step,
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": f"{device.type}: {name}",
        "host": platform.node(),
    }
