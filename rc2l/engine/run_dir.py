"""A run folder belongs to one trainer at a time, and an earlier run in it is never replaced
without being asked.

- Lock: ``OUT_DIR/.lock``, an advisory ``fcntl.flock`` held from before the trainer is built
  until it ends (rank 0 only under torchrun: the ranks share one folder). The file names its
  holder (pid, host, start time), so a second trainer refuses at once with one line naming it.
  The kernel drops the lock when the holder exits, however it exits (SIGKILL included), so a
  stale ``.lock`` file never blocks a new run. Where ``fcntl`` does not exist (Windows) or the
  file system refuses locks (some NFS mounts), training goes on unlocked with a warning.
- Earlier run: a folder that holds ``state.pt``, ``metrics.jsonl`` or ``best``/``last``
  weights is refused unless ``resume`` is set (the run continues) or ``overwrite=true`` (its
  files are moved to ``OUT_DIR/earlier-run-<time>/``, nothing is deleted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from rc2l.config import Config
from rc2l.errors import TrainingError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs go on unlocked (see the module docstring)
    fcntl = None

log = logging.getLogger("rc2l.train")

LOCK_FILE = ".lock"
RUN_FILES = ("state.pt", "metrics.jsonl", "best.safetensors", "last.safetensors")  # a run has started
WRITTEN = ("config.yaml", *RUN_FILES, "model", "tb")  # every file and folder the trainer writes


def earlier_run(run_dir: Path) -> list[str]:
    """The files in ``run_dir`` that show a run was trained there."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_earlier_run(run_dir: Path, resume: str, overwrite: bool) -> None:
    """Refuse a folder holding a run unless the config says to continue it or to replace it."""
    found = earlier_run(run_dir)
    if found and not resume and not overwrite:
        raise TrainingError(
            f"out_dir {run_dir} already holds a run ({', '.join(found)}); continue it with resume=auto, "
            f"start a new one there with overwrite=true (the earlier run's files are moved to "
            f"{run_dir}/earlier-run-<time>/), or choose another out_dir"
        )


def move_earlier_run(run_dir: Path) -> Path | None:
    """Move what the trainer writes (config, state, log, weights, model/, tb/) into a new
    ``earlier-run-<time>`` subfolder; other files stay. Returns that folder, or None if empty."""
    present = [name for name in WRITTEN if (run_dir / name).exists()]
    if not earlier_run(run_dir) or not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = run_dir / f"earlier-run-{stamp}", 1
    while dest.exists():
        n += 1
        dest = run_dir / f"earlier-run-{stamp}-{n}"
    try:
        dest.mkdir()
        for name in present:
            os.replace(run_dir / name, dest / name)
    except OSError as e:
        raise TrainingError(f"overwrite=true: cannot move the earlier run in {run_dir} aside: {e}") from None
    log.warning("overwrite=true: moved the earlier run's files (%s) to %s", ", ".join(present), dest)
    return dest


def _holder(fd: int) -> str:
    """The holder line a lock file holds, cut short (it is read from a file anyone can write)."""
    try:
        text = os.pread(fd, 300, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    line = (text.strip().splitlines() or ["holder unknown"])[0]
    return line[:200]


class RunLock:
    """The advisory lock on ``run_dir/.lock``; :meth:`release` (or process exit) frees it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            log.warning("no file locks on this platform: a second trainer on %s would not be refused", self.path.parent)
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TrainingError(f"cannot write to out_dir {self.path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise TrainingError(
                f"out_dir {self.path.parent} is in use by another trainer ({holder}); "
                f"wait for it to end or choose another out_dir"
            ) from None
        except OSError as e:  # e.g. ENOLCK on a file system without locks
            os.close(fd)
            log.warning("cannot lock %s (%s): a second trainer on this folder would not be refused", self.path, e)
            return self
        since = time.strftime("%Y-%m-%d %H:%M:%S %z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {since}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def claim_run_dir(cfg: Config):
    """Hold ``cfg.out_dir`` for a run: refuse an earlier run there (unless resume / overwrite),
    lock the folder, and with overwrite move the earlier run aside, only once the lock is held."""
    run_dir = Path(cfg.out_dir)
    check_earlier_run(run_dir, cfg.resume, cfg.overwrite)  # before anything is written
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"cannot create out_dir {run_dir}: {e.strerror or e}") from None
    lock = RunLock(run_dir).acquire()
    try:
        check_earlier_run(run_dir, cfg.resume, cfg.overwrite)  # a run may have begun before the lock was ours
        if cfg.overwrite:
            move_earlier_run(run_dir)
        yield lock
    finally:
        lock.release()
