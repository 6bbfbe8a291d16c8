"""rc2l.provenance: the commit a run records is the checkout's own, marked dirty when the tree
differs from it, and never a commit of some unrelated enclosing repository."""

import subprocess

import torch

from rc2l.provenance import git_commit, run_record


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_clean_dirty_nested_and_outside(tmp_path, monkeypatch):
    monkeypatch.delenv("RC2L_COMMIT", raising=False)
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("a")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "--short", "HEAD")
    assert git_commit(repo) == head
    (repo / "b.txt").write_text("untracked")
    assert git_commit(repo) == head + "+dirty"
    # a package folder inside someone else's checkout (e.g. site-packages of a venv in a repo)
    assert git_commit(repo / "pkg") == "unknown"
    (tmp_path / "plain").mkdir()
    assert git_commit(tmp_path / "plain") == "unknown"
    monkeypatch.setenv("RC2L_COMMIT", "abc1234")
    assert git_commit(repo) == "abc1234"


def test_run_record_names_step_code_and_device(monkeypatch):
    monkeypatch.setenv("RC2L_COMMIT", "abc1234")
    rec = run_record(7, torch.device("cpu"))
    assert (rec["type"], rec["step"], rec["commit"], rec["torch"]) == ("start", 7, "abc1234", torch.__version__)
    assert rec["device"].startswith("cpu: ")


def test_cpu_model_names_the_generation_a_vm_hides():
    from rc2l.provenance import cpu_model

    info = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: other\n"
    assert cpu_model(info) == "AMD EPYC (family 26, model 2)"
    assert cpu_model("model name\t: Apple M2\n") == "Apple M2"  # no family/model fields: the name alone
    assert cpu_model("") != ""  # no cpuinfo at all: the platform's own name
