"""Run folders are never overwritten silently: a second trainer on a folder that one holds
refuses in one line naming the holder, and `rc2l train` into a folder that holds an earlier run
refuses (changing no file of it) unless told to continue it (resume=auto) or to start over
(overwrite=true, which moves the earlier run aside). docs/reliability.md lists each case."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rc2l.engine.run_dir as run_dir_mod
from rc2l.cli import main

from reliability_helpers import CONFIG, REPO, TorchSettings, cli, cli_env, tiny_overrides, train_inprocess

TWO_STEPS = ("train.iters=2", "train.eval_every=2", "train.save_every=2")


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` → (sha256 of its bytes, mtime in ns)."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_main(capsys, args: list[str]) -> tuple[int, str]:
    """(exit status, whole stderr) of the CLI entry point, run in this process."""
    capsys.readouterr()
    with TorchSettings():
        rc = main(args)
    return rc, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A finished 2-step run folder, trained once; tests work on copies of it."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    train_inprocess(run, *TWO_STEPS)
    return run


@pytest.fixture
def run(earlier, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(earlier, dst)
    (dst / "notes.txt").write_text("the user's own file\n")
    return dst


def test_training_into_an_earlier_run_is_refused_and_changes_nothing(run, capsys):
    before = snapshot(run)
    rc, err = run_main(capsys, ["train", CONFIG, *tiny_overrides(run, *TWO_STEPS)])
    line = one_line(err)
    assert rc == 2 and line.startswith(f"error: out_dir {run} already holds a run (state.pt, metrics.jsonl")
    assert "resume=auto" in line and "overwrite=true" in line
    assert snapshot(run) == before


def test_overwrite_moves_the_earlier_run_aside_and_trains(run, capsys):
    before = snapshot(run)
    rc, _ = run_main(capsys, ["train", CONFIG, *tiny_overrides(run, *TWO_STEPS, "overwrite=true")])
    assert rc == 0
    (aside,) = run.glob("earlier-run-*")
    moved = {f"{aside.name}/{k}": v for k, v in before.items() if k not in ("notes.txt", ".lock")}
    after = snapshot(run)
    assert {k: after[k] for k in moved} == moved  # every file of the earlier run, byte for byte
    assert after["notes.txt"] == before["notes.txt"]  # files the trainer does not write stay put
    recs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("type") == "end"] == [2]  # one run, not two appended
    # the saved config continues this run; it never moves it aside
    assert "overwrite: false" in (run / "config.yaml").read_text()


def test_resume_auto_still_continues_an_earlier_run(run, capsys):
    rc, err = run_main(
        capsys, ["train", CONFIG, *tiny_overrides(run, "train.iters=3", "train.eval_every=3", "resume=auto")]
    )
    assert rc == 0, err
    recs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("type") == "end"] == [2, 3]
    assert not list(run.glob("earlier-run-*"))


def test_overwrite_with_resume_is_a_contradiction(tmp_path, capsys):
    rc, err = run_main(capsys, ["train", CONFIG, *tiny_overrides(tmp_path, "overwrite=true", "resume=auto")])
    assert rc == 2 and "'overwrite' and 'resume' contradict" in one_line(err)
    assert not any(tmp_path.iterdir())


HOLD = (
    "import sys; from pathlib import Path; from rc2l.engine.run_dir import RunLock; "
    "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); sys.stdin.read()"
)


def test_a_second_trainer_on_a_locked_folder_refuses_naming_the_holder(tmp_path):
    """Another process holds the folder's lock (as a running trainer does): `rc2l train` with
    resume=auto, the case where two runs would both continue the same folder, refuses at once."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)],
        cwd=REPO,
        env=cli_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        r = cli(["train", CONFIG, *tiny_overrides(run, *TWO_STEPS, "resume=auto")])
    finally:
        holder.communicate("", timeout=30)
    line = one_line(r.stderr)
    assert r.returncode == 2
    assert line.startswith(f"error: out_dir {run} is in use by another trainer (pid {holder.pid} on host ")
    assert snapshot(run) == before  # no config.yaml, no metrics.jsonl: nothing was started


def test_the_lock_is_released_when_the_holder_ends(tmp_path):
    """A trainer that ended (or was killed) leaves `.lock` behind, but not the lock."""
    lock = run_dir_mod.RunLock(tmp_path).acquire()
    with pytest.raises(run_dir_mod.TrainingError, match=rf"pid {os.getpid()} on host"):
        run_dir_mod.RunLock(tmp_path).acquire()
    lock.release()
    run_dir_mod.RunLock(tmp_path).acquire().release()


def test_without_fcntl_training_goes_on_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(run_dir_mod, "fcntl", None)
    lock = run_dir_mod.RunLock(tmp_path).acquire()
    assert lock.fd is None and "no file locks on this platform" in caplog.text
    lock.release()
