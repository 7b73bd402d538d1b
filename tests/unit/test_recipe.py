"""train.recipe: the rule that picks the method, learning rate, epochs and augmentation from the rows per class, and
what a key set in params.yaml does to it."""

import logging

import pandas as pd
import pytest

from components import recipe
from components.config import AugmentParams, ConfigError, ModelParams, TrainParams, parse_params

AUTO = TrainParams()


def frame(per_class: int, labels: tuple[str, ...] = ("a", "b"), copies: int = 0) -> pd.DataFrame:
    rows = pd.DataFrame({"label": list(labels) * per_class, "augmented": False})
    return pd.concat([rows] + [rows.assign(augmented=True)] * copies, ignore_index=True)


def test_rows_per_class_count_the_originals_only() -> None:
    assert recipe.original_rows_per_class(frame(16, copies=3), ["a", "b"]) == 16
    assert recipe.original_rows_per_class(frame(16).drop(columns="augmented"), ["a", "b"]) == 16
    assert recipe.original_rows_per_class(frame(10, ("a", "b", "c")), ["a", "b", "c"]) == 10


@pytest.mark.parametrize(("rows", "method", "copies"), [
    (8, "contrastive", 0.0), (recipe.CONTRASTIVE_UP_TO, "contrastive", 0.0),
    (recipe.CONTRASTIVE_UP_TO + 0.5, "finetune", 0.5), (1000, "finetune", 0.5),
])
def test_auto_picks_by_rows_per_class(rows, method, copies) -> None:
    chosen = recipe.choose(AUTO, AugmentParams(), ModelParams(), rows)
    assert (chosen.method, chosen.copies_per_example) == (method, copies)
    assert chosen.learning_rate == recipe.BY_METHOD[method][0]
    assert chosen.chosen == ("method", "learning_rate", "copies_per_example")
    assert f"train.method {method}" in chosen.describe() and f"{rows:.1f} train rows per class" in chosen.describe()


@pytest.mark.parametrize(("train", "model", "can"), [
    (AUTO, ModelParams(), False),  # a modality without contrastive tuning (images)
    (TrainParams(num_processes=2), ModelParams(), True),
    (AUTO, ModelParams(adapter="lora"), True),
    (AUTO, ModelParams(gradual_unfreeze=1), True),
])
def test_finetune_where_contrastive_cannot_run(train, model, can) -> None:
    chosen = recipe.choose(train, AugmentParams(), model, 8, modality_can=can)
    assert chosen.method == "finetune" and chosen.copies_per_example == 0.5


def test_a_key_set_in_params_wins_over_the_rule() -> None:
    set_keys = TrainParams(method="finetune", learning_rate=1e-4)
    chosen = recipe.choose(set_keys, AugmentParams(copies_per_example=2.0), ModelParams(), 8)
    assert (chosen.method, chosen.learning_rate, chosen.copies_per_example) == ("finetune", 1e-4, 2.0)
    assert chosen.chosen == () and "every choice is set" in chosen.describe()
    # the method set, the rest from the rule's row for that method
    forced = recipe.choose(TrainParams(method="contrastive"), AugmentParams(), ModelParams(), 1000)
    assert (forced.method, forced.copies_per_example, forced.chosen) == ("contrastive", 0.0,
                                                                         ("learning_rate", "copies_per_example"))


def test_fixed_recipe_gives_every_auto_key_one_value_whatever_the_size() -> None:
    fixed = TrainParams(recipe="fixed")
    for rows in (8, 1000):
        chosen = recipe.choose(fixed, AugmentParams(), ModelParams(), rows)
        assert (chosen.method, chosen.learning_rate, chosen.copies_per_example) == ("finetune", 5e-5, 0.5)
        assert recipe.epochs(fixed, rows * 2) == 3.0


@pytest.mark.parametrize(("rows", "batch", "accumulation", "world", "expected"), [
    (5273, 16, 1, 1, 3.0),   # the built-in corpus: the usual three epochs (~990 steps)
    (48, 16, 1, 1, 20.0),    # 16 examples of 3 classes: 3 steps an epoch, capped at 20 epochs
    (288, 16, 1, 1, 17.0),   # 64 of 3 classes with half as many copies: 18 steps an epoch, 17 epochs ~ 300 steps
    (1600, 16, 1, 1, 3.0),   # 100 steps an epoch: 3
    (1600, 8, 2, 2, 6.0),    # 32 rows per optimiser step across 2 processes: 50 steps an epoch, 6 epochs
])
def test_auto_epochs_aim_at_a_step_budget(rows, batch, accumulation, world, expected) -> None:
    params = TrainParams(batch_size=batch, gradient_accumulation_steps=accumulation)
    assert params.epochs == "auto"
    assert recipe.epochs(params, rows, world) == expected


def test_explicit_epochs_win_over_auto() -> None:
    assert recipe.epochs(TrainParams(epochs=2.5), 10) == 2.5


def test_the_train_stage_resolves_every_auto_key_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from components import modalities
    from components.train import resolved

    caplog.set_level(logging.INFO, logger="components")
    text = modalities.get("text")()
    params, line = resolved(AUTO, ModelParams(), text, frame(16, ("a", "b", "c")), ["a", "b", "c"])
    assert (params.method, params.learning_rate, params.epochs) == ("contrastive", 5e-5, 20.0)
    assert line in caplog.text and "train.method contrastive" in line and "epochs 20" in line
    assert params.contrastive_loss == "cosine" and "train.contrastive_loss cosine (3 labels)" in line
    assert params.contrastive_epochs == 1.0 and "train.contrastive_epochs 1" in line
    params, line = resolved(AUTO, ModelParams(), text, frame(16), ["a", "b"])
    assert params.contrastive_loss == "cosent" and "train.contrastive_loss cosent (2 labels)" in line
    params, line = resolved(AUTO, ModelParams(), text, frame(64, copies=1), ["a", "b"])
    assert params.contrastive_epochs == 2.0 and "train.contrastive_epochs 2," in line
    assert params.contrastive_pairs == 20 and line.endswith("train.contrastive_pairs 20")
    params, line = resolved(AUTO, ModelParams(), text, frame(recipe.CONTRASTIVE_UP_TO), ["a", "b"])
    assert params.contrastive_pairs == recipe.contrastive_pairs(AUTO, recipe.CONTRASTIVE_UP_TO) < 20
    assert line.endswith(f"train.contrastive_pairs {params.contrastive_pairs}")
    params, line = resolved(TrainParams(contrastive_pairs=20), ModelParams(), text, frame(16), ["a", "b"])
    assert params.contrastive_pairs == 20 and "contrastive_pairs" not in line  # a set key is not the rule's choice
    image = modalities.get("image")()
    params, _ = resolved(AUTO, ModelParams(), image, frame(16), ["a", "b"])
    assert params.method == "finetune"


def test_contrastive_loss_auto_picks_by_label_count() -> None:
    assert [recipe.contrastive_loss(AUTO, labels) for labels in (2, 3, 20)] == ["cosent", "cosine", "cosine"]
    assert recipe.contrastive_loss(TrainParams(contrastive_loss="cosine"), 2) == "cosine"  # a set key wins
    assert recipe.contrastive_loss(TrainParams(contrastive_loss="cosent"), 3) == "cosent"
    assert recipe.contrastive_loss(TrainParams(recipe="fixed"), 3) == "cosent"  # the loss before the rule


def test_contrastive_epochs_auto_takes_a_second_pass_above_32_per_class() -> None:
    assert [recipe.contrastive_epochs(AUTO, rows) for rows in (8, 32, 32.5, 64)] == [1.0, 1.0, 2.0, 2.0]
    assert recipe.contrastive_epochs(TrainParams(contrastive_epochs=3), 8) == 3.0  # a set key wins
    assert recipe.contrastive_epochs(TrainParams(contrastive_epochs=1), 64) == 1.0
    assert recipe.contrastive_epochs(TrainParams(recipe="fixed"), 64) == 1.0  # its value before the rule


def test_contrastive_pairs_auto_keeps_the_pairs_per_label_at_64s_above_64_per_class() -> None:
    rounds = [recipe.contrastive_pairs(AUTO, rows) for rows in (8, 64, 65, 128, 256, 500)]
    assert rounds == [20, 20, 20, 10, 5, 3]  # ceil(20 * 64 / rows): 1280 / 65 = 19.7 rounds up to 20
    assert all(rows * recipe.contrastive_pairs(AUTO, rows) >= 20 * 64 for rows in (64, 100, 128, 256, 500))
    assert recipe.contrastive_pairs(AUTO, 10**6) == 1
    assert recipe.contrastive_pairs(TrainParams(contrastive_pairs=20), 256) == 20  # a set key wins
    assert recipe.contrastive_pairs(TrainParams(recipe="fixed"), 256) == 20  # its value before the rule


def test_recipe_and_auto_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="train.recipe: Input should be 'auto' or 'fixed'"):
        parse_params({"train": {"recipe": "smart"}})
    with pytest.raises(ConfigError, match="train.contrastive_loss: Input should be 'auto', 'cosent' or 'cosine'"):
        parse_params({"train": {"contrastive_loss": "triplet"}})
    with pytest.raises(ConfigError, match="train.contrastive_epochs"):
        parse_params({"train": {"contrastive_epochs": "twice"}})
    with pytest.raises(ConfigError, match="train.contrastive_pairs"):
        parse_params({"train": {"contrastive_pairs": 0}})
    with pytest.raises(ConfigError, match="augment.copies_per_example"):
        parse_params({"augment": {"copies_per_example": "lots"}})
    with pytest.raises(ConfigError, match="above max_copies_per_example"):
        parse_params({"augment": {"copies_per_example": 9}})
    assert parse_params({"augment": {"copies_per_example": "auto", "max_copies_per_example": 1}})
