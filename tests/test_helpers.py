"""The test suite's own rules (tests/helpers.py): where the shared data is looked for, and a
missing prerequisite skips with its reason on a developer machine but fails in CI."""

from __future__ import annotations

import pytest

import helpers


def test_shared_data_is_repo_relative_unless_overridden(monkeypatch, tmp_path):
    monkeypatch.delenv("RC2L_SHARED_DATA", raising=False)
    assert helpers.shared_data_root() == (helpers.REPO.parent / "shared" / "data").resolve()
    monkeypatch.setenv("RC2L_SHARED_DATA", str(tmp_path))
    assert helpers.shared_data_root() == tmp_path.resolve()
    (tmp_path / "camvid" / "splits").mkdir(parents=True)
    (tmp_path / "camvid" / "splits" / "train.txt").write_text("a\n")
    assert helpers.shared_dataset("camvid") == tmp_path.resolve() / "camvid"


@pytest.mark.parametrize("ci", [False, True])
def test_a_missing_prerequisite_skips_with_its_reason_or_fails_in_ci(monkeypatch, tmp_path, ci):
    monkeypatch.setenv("RC2L_SHARED_DATA", str(tmp_path))
    monkeypatch.setattr(helpers, "IN_CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match=rf"shared dataset 'camvid' not found: {tmp_path}/camvid/splits/train\.txt"):
        helpers.shared_dataset("camvid")
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on this PATH
    monkeypatch.setattr(helpers, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(outcome, match="headless Chromium .* run: make chromium"):
        helpers.chromium_exe()


def test_tiny_model_helper():
    assert helpers.tiny_model_overrides("resnet18", dec_layers=1)[:3] == [
        "model.pretrained=none",
        "model.backbone=resnet18",
        "model.hidden_dim=32",
    ]
    assert "model.dec_layers=1" in helpers.tiny_model_overrides(dec_layers=1)
    mc = helpers.tiny_model_config("efficientnet_lite0", num_queries=4)
    assert (mc.backbone, mc.pretrained, mc.num_queries, mc.hidden_dim) == ("efficientnet_lite0", "none", 4, 32)
