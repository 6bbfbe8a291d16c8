"""One registry of methods (rc2l/engine/methods/__init__.py): a new method is one file plus one
registry line, and every place that names methods follows the registry."""

import pytest

from rc2l.config import CHOICES
from rc2l.engine.compare import STUDY_ROWS
from rc2l.engine.methods import METHODS
from rc2l.engine.model_dir import model_card
from rc2l.infer.report import loss_keys


def test_config_choices_are_the_registry():
    """config.py sits below engine and cannot import the registry, so its tuple is checked here."""
    assert list(CHOICES["method"]) == list(METHODS)


def _card(method: str) -> str:
    cj = {
        "dataset": "synthetic",
        "method": method,
        "val_miou": None,
        "labeled": 2,
        "split": "1_8",
        "class_names": ["a", "b"],
        "num_classes": 2,
        "command": "",
        "commit": "abc1234",
    }
    return model_card(cj, {"method": method}, ("apache-2.0", "synthetic shapes"))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_reaches_the_model_card_the_report_and_the_study(name):
    cls = METHODS[name]
    assert cls.description
    assert f"| method | {name}: {cls.description} |" in _card(name)
    # a train record: "loss*" terms, the method's own terms, and stats that are not losses
    record = {"type": "train", "step": 5, "loss": 1.0, "loss_ce": 0.5, "lr": 0.1, "conf_frac": 0.2, "lambda_u": 1.0}
    record.update({t: 0.25 for t in cls.loss_terms})
    assert loss_keys([record]) == ["loss", "loss_ce", *cls.loss_terms]
    assert [f"method={name}"] in STUDY_ROWS.values()


def test_an_unregistered_method_gets_no_description():
    assert "| method | other:  |" in _card("other")


@pytest.mark.parametrize("name", list(METHODS))
def test_the_data_carries_the_strong_views_the_method_asks_for(name):
    """data/ names no method: the composition root passes each method's own view count."""
    from rc2l.config import load_config
    from rc2l.data.build import build_datasets

    over = [f"method={name}", "semi.unimatch.views=2", "semi.region_views=2", "data.split=1_4"]
    over += [
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=2",
        "data.synthetic.size=32",
        "data.crop_size=[32,32]",
    ]
    cfg = load_config(None, over)
    views = METHODS[name].unlabeled_views(cfg)
    assert (views > 0) == METHODS[name].uses_unlabeled
    unl = build_datasets(cfg, unlabeled_views=views)["unlabeled"]
    if views == 0:
        assert unl is None
    else:
        assert ("image_s2" in unl[0]) == (views == 2)
    assert views == {"unimatch": 2, "rc2l": 2, "fixmatch": 1, "supervised": 0}.get(name, views)
