"""train.device=cuda where there is no CUDA: one ``error:`` line and exit status 2, not a
traceback (issue 17, bug 2). The subprocess hides every GPU (CUDA_VISIBLE_DEVICES=""), so the
test means the same on a machine with one."""

from __future__ import annotations

import pytest
import torch

from helpers import SYNTHETIC
from reliability_helpers import cli, tiny_overrides

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("command", ["train", "eval"])
def test_cuda_without_cuda_is_one_error_line_and_exit_2(tmp_path, command):
    args = [command, SYNTHETIC, *tiny_overrides(tmp_path / "run", "train.device=cuda")]
    if command == "eval":
        args += ["--weights", str(tmp_path / "none.safetensors")]  # the device is resolved first
    r = cli(args, **NO_GPU)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("error: train.device=cuda but "), lines[0]
    assert "train.device=cpu" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing written before the device is known


def test_init_distributed_raises_an_rc2l_error(monkeypatch):
    from rc2l.engine.distributed import init_distributed
    from rc2l.errors import RC2LError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RC2LError, match=r"^train\.device=cuda but .*; use train\.device=cpu or train\.device=auto$"):
        init_distributed("cuda")
    assert init_distributed("auto") == torch.device("cpu")
    assert init_distributed("cpu") == torch.device("cpu")
