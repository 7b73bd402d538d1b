"""The recipe options through a real transformers Trainer run on the pip-shipped MiniLM (a few steps)."""

from pathlib import Path

import pytest
import torch

from components import modalities, recipe
from components.config import DataParams, ModelParams, TrainParams
from components.io import read_json, read_split, write_split
from components.modalities import load_predictor
from components.modalities.text.model import resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from components import prepare

    folder = tmp_path_factory.mktemp("recipe") / "prepared"
    prepare.run(DataParams(max_rows=150), modalities.get("text")(), folder)
    return folder


def test_frozen_layers_stay_put_while_weighted_smoothed_head_trains(prepared: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from components import train

    augmented = tmp_path / "augmented"
    augmented.mkdir()
    write_split(augmented, "train", read_split(prepared, "train"))
    model_params = ModelParams(freeze_embeddings=True, freeze_layers=3)
    train_params = TrainParams(method="finetune", max_steps=4, batch_size=4, gradient_accumulation_steps=2,
                               class_weights="balanced", label_smoothing=0.1, head_learning_rate=1e-3,
                               early_stopping_patience=0)
    result = train.run(model_params, train_params, modalities.for_prepared(prepared), augmented, prepared,
                       tmp_path / "model", tmp_path / "m.json")

    assert result.steps == 4
    assert result.trainable_params < result.total_params
    base = load_file(str(Path(resolve_model(model_params)[0]) / "model.safetensors"))
    tuned = load_file(str(tmp_path / "model" / "model.safetensors"))

    def weight(state: dict, suffix: str) -> torch.Tensor:
        return next(value for key, value in state.items() if key.endswith(suffix))

    frozen = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
              "encoder.layer.2.output.dense.weight"]
    for name in frozen:
        assert torch.equal(weight(base, name), weight(tuned, name)), name
    assert not torch.equal(weight(base, "encoder.layer.5.output.dense.weight"),
                           weight(tuned, "encoder.layer.5.output.dense.weight"))
    assert read_json(tmp_path / "model" / "tuneline.json")["train"]["class_weights"] == "balanced"
    probabilities = load_predictor(tmp_path / "model").predict_proba(["a fine film", "dull"])
    assert probabilities.shape == (2, 3)
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_contrastive_method_tunes_the_encoder_and_ships_one_plain_folder(prepared: Path, tmp_path: Path) -> None:
    """train.method auto on ~35 rows per class: SetFit's recipe (pairs, then a logistic-regression head on the
    frozen tuned encoder) saved as an ordinary safetensors folder that evaluate and the gate read as any other."""
    from safetensors.torch import load_file

    from components import evaluate, train
    from components.config import EvaluateParams
    from components.modalities.text.pooling import NORMALISED_MEAN

    augmented = tmp_path / "augmented"
    augmented.mkdir()
    write_split(augmented, "train", read_split(prepared, "train").assign(augmented=False))
    train_params = TrainParams(contrastive_pairs=1, epochs=1, batch_size=16)
    result = train.run(ModelParams(), train_params, modalities.for_prepared(prepared), augmented, prepared,
                       tmp_path / "model", tmp_path / "train.json")

    summary = read_json(tmp_path / "train.json")
    rows = len(read_split(prepared, "train"))
    assert summary["method"] == "contrastive" and summary["contrastive_pairs"] == 2 * rows
    assert rows / 3 > recipe.ONE_PASS_UP_TO  # so train.contrastive_epochs auto makes two passes over the pairs
    assert summary["contrastive_steps"] == 2 * -(-2 * rows // 16)
    meta = read_json(tmp_path / "model" / "tuneline.json")
    assert meta["pooling"] == NORMALISED_MEAN and meta["model"]["freeze_backbone"] is True
    assert meta["train"]["method"] == "contrastive"
    assert result.trainable_params < result.total_params / 100  # the head alone trained after the tuning
    assert not list((tmp_path / "model").glob("*.pkl")) and (tmp_path / "model" / "model.safetensors").is_file()
    base = load_file(str(Path(resolve_model(ModelParams())[0]) / "model.safetensors"))
    tuned = load_file(str(tmp_path / "model" / "model.safetensors"))
    name = "encoder.layer.5.output.dense.weight"
    assert not torch.equal(next(v for k, v in base.items() if k.endswith(name)),
                           next(v for k, v in tuned.items() if k.endswith(name)))
    scored = evaluate.run(EvaluateParams(), tmp_path / "model", prepared, tmp_path / "test.json",
                          tmp_path / "gate.json")
    assert 0.0 < scored.macro_f1 <= 1.0
    probabilities = load_predictor(tmp_path / "model").predict_proba(["a fine film", "dull"])
    assert probabilities.shape == (2, 3) and probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])
