"""The search's pure parts: tune.space as params.yaml declares it, a trial's params, and --apply's edit of
params.yaml (comments, layout and nulls kept)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, Params, parse_params
from components.tune import apply, trial_params


def test_a_dimension_is_a_range_or_choices_and_keys_are_model_or_train() -> None:
    good = Params(tune={"space": {"train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
                                  "model.head.type": {"choices": ["linear", "mlp"]}}})
    assert good.tune.space["model.head.type"].choices == ["linear", "mlp"]
    for space, message in [({"train.epochs": {"low": 1, "high": 4, "choices": [2]}}, "either low and high"),
                           ({"train.epochs": {"low": 4, "high": 1}}, "must be below high"),
                           ({"train.learning_rate": {"low": 0, "high": 1, "log": True}}, "log-scale range needs"),
                           ({"augment.copies_per_example": {"choices": [1, 2]}}, "model.* or train.* keys"),
                           ({}, "tune.space is empty")]:
        with pytest.raises(ConfigError, match=message):
            parse_params({"tune": {"space": space}})


def test_a_trial_s_values_are_checked_as_params_yaml_is() -> None:
    chosen = trial_params({"train": {"epochs": 2}}, {"train.learning_rate": 0.001, "model.head.type": "mlp"})
    assert chosen.train.learning_rate == 0.001 and chosen.model.head.type == "mlp" and chosen.train.epochs == 2
    with pytest.raises(ConfigError, match="train.learning_rate"):
        trial_params({}, {"train.learning_rate": -1.0})


def test_apply_writes_the_values_and_keeps_comments_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rate: auto  # AdamW's\n  seed: 42\nmodel:\n  head:\n    type: linear\n"
                    "data:\n  labels: null           # every label\n")
    apply(path, {"train.learning_rate": 3.5e-05, "model.head.type": "mlp"})
    text = path.read_text()
    assert re.search(r"learning_rate: 3.5e-05 +# AdamW's", text) and "labels: null           # every label" in text
    assert yaml.safe_load(text) == {"train": {"learning_rate": 3.5e-05, "seed": 42}, "model": {"head": {"type": "mlp"}},
                                    "data": {"labels": None}}


@pytest.mark.parametrize(("best", "expected"), [
    (None, "none"),
    ({"val_macro_f1": 0.70, "default": False}, "baseline"),
    ({"val_macro_f1": 0.80, "default": True}, "default"),
    ({"val_macro_f1": 0.80, "default": False}, "apply"),
])
def test_what_a_search_says_to_do_with_its_best_trial(best, expected) -> None:
    from components.tune import outcome

    assert outcome({"best": best, "baseline": {"val_macro_f1": 0.75}}) == expected
