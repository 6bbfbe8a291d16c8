"""Config overrides keep their meaning: choice strings that YAML 1.1 would turn into booleans
(``off``) and split names it would turn into integers (``1_8``) stay strings."""

import pytest

from rc2l.config import ConfigError, flatten, load_config, to_dict

from helpers import SYNTHETIC


def test_yaml_1_1_booleans_stay_strings_in_overrides_and_files(tmp_path):
    cfg = load_config(SYNTHETIC, ["train.amp=off", "data.split=1_8", "model.sync_bn=true"])
    assert cfg.train.amp == "off" and cfg.data.split == "1_8" and cfg.model.sync_bn is True
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  amp: off\nmodel:\n  sync_bn: False\n")
    cfg = load_config(f)
    assert cfg.train.amp == "off" and cfg.model.sync_bn is False


def test_yes_is_not_a_boolean():
    with pytest.raises(ConfigError, match="model.sync_bn"):
        load_config(SYNTHETIC, ["model.sync_bn=yes"])


def test_flatten_gives_the_dotted_keys_overrides_name():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
    flat = flatten(to_dict(load_config(None, ["semi.unimatch.threshold=0.5"])))
    assert flat["semi.unimatch.threshold"] == 0.5 and "semi.unimatch" not in flat


def test_train_help_lists_every_key_with_the_ablation_ones_apart():
    from rc2l.config import ABLATION_KEYS, Config, flatten, keys_help, to_dict

    text = keys_help()
    head, _, ablation = text.partition("ablation-only")
    listed = {ln.strip().split("=")[0] for ln in text.splitlines() if "=" in ln and ln.startswith("  ")}
    assert listed == set(flatten(to_dict(Config())))
    assert all(f"  {k}=" in ablation and f"  {k}=" not in head for k in ABLATION_KEYS)
    assert "  method='supervised' (supervised | fixmatch | rc2l | unimatch)" in head
