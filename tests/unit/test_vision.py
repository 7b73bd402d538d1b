"""components/vision.py on a tiny slice of the built-in digits: the backbone, freezing, training through the same
engine as text, the saved folder, and evaluate's image path. Real EfficientNet-Lite0 weights, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components import modalities
from components.config import parse_params
from components.modalities.image import ImageModality


def images(params: object, **settings: object) -> ImageModality:
    """The image modality with params' image block (some keys replaced by `settings`)."""
    return ImageModality(params.settings("image").model_copy(update=settings))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from components.augment import run as augment
    from components.prepare import run as prepare
    from components.train import run as train

    root = tmp_path_factory.mktemp("vision")
    params = parse_params({"data": {"modality": "image", "max_rows": 150}, "image": {"size": 32},
                           "augment": {"copies_per_example": 0.2},
                           "train": {"max_steps": 4, "batch_size": 16, "learning_rate": 1e-3}})
    prepare(params.data, modalities.for_params(params), root / "prepared")
    augment(params.augment, params.model, images(params), root / "prepared", root / "augmented")
    train(params.model, params.train, images(params), root / "augmented", root / "prepared", root / "model",
          root / "train.json")
    return root, params


def test_the_pretrained_backbone_loads_imagenet_weights_and_freezes_as_asked() -> None:
    import torch

    from components.modalities.image.model import freeze_image_backbone, image_classifier

    pretrained = image_classifier(3, parse_params({}).model)
    scratch = image_classifier(3, parse_params({"model": {"pretrained": False}}).model)
    stem = "backbone._conv_stem.weight"
    assert not torch.equal(pretrained.state_dict()[stem], scratch.state_dict()[stem])
    probe = image_classifier(3, parse_params({"model": {"freeze_backbone": True}}).model)
    freeze_image_backbone(probe, parse_params({"model": {"freeze_backbone": True}}).model)
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    partial = parse_params({"model": {"freeze_layers": 4}}).model
    some = image_classifier(3, partial)
    freeze_image_backbone(some, partial)
    frozen = {n.split(".")[1] + ("." + n.split(".")[2] if n.startswith("backbone._blocks") else "")
              for n, p in some.named_parameters() if not p.requires_grad}
    assert frozen == {"_conv_stem", "_bn0", "_blocks.0", "_blocks.1", "_blocks.2", "_blocks.3"}


def test_training_writes_a_model_folder_that_predicts_the_same_after_loading(trained) -> None:
    from components.modalities import load_predictor
    from components.modalities.image.model import ImagePredictor

    root, params = trained
    meta = json.loads((root / "model/tuneline.json").read_text())
    assert meta["modality"] == "image" and meta["image_size"] == 32 and meta["labels"] == [str(d) for d in range(10)]
    assert (root / "model/model.safetensors").is_file()
    assert json.loads((root / "train.json").read_text())["steps"] == 4
    predictor = load_predictor(root / "model", device="cpu")
    assert isinstance(predictor.inner, ImagePredictor)  # temperature-scaled (components/calibration.py)
    files = sorted((root / "prepared/images").iterdir())[:5]
    by_path = predictor.predict_proba([str(f) for f in files])
    by_bytes = predictor.predict_proba([f.read_bytes() for f in files])
    assert by_path.shape == (5, 10) and np.allclose(by_path.sum(axis=1), 1.0)
    assert np.abs(by_path - by_bytes).max() < 1e-6


def test_evaluate_scores_images_against_a_thumbnail_baseline(trained) -> None:
    from components.evaluate import run as evaluate

    root, params = trained
    result = evaluate(params.evaluate, root / "model", root / "prepared", root / "test.json", root / "gate.json",
                      predictions_path=root / "predictions.csv")
    metrics = json.loads((root / "test.json").read_text())
    assert metrics["test_rows"] > 0 and 0.0 <= result.macro_f1 <= 1.0
    assert metrics["baseline"]["macro"]["f1"] > 0.5  # logistic regression on 8x8 digits is a strong baseline
    assert "images/" in (root / "predictions.csv").read_text().splitlines()[1]


def test_an_image_candidate_never_faces_a_text_champion(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root params.yaml switched to images but package.model_name left at tuneline-text: evaluate must stop, not
    score the text champion on image paths and promote the image model over it."""
    from components import evaluate
    from components.stage import StageError

    class TextChampion:  # what load_champion returns for a text model: a Classifier, not an ImagePredictor
        labels = [str(d) for d in range(10)]

    root, params = trained
    monkeypatch.setattr(evaluate, "load_champion",
                        lambda name: evaluate.Champion("tuneline-text:abc", "text", TextChampion()))
    with pytest.raises(StageError, match="is a text model, and this candidate classifies images"):
        evaluate.run(params.evaluate, root / "model", root / "prepared", root / "test2.json", root / "gate2.json",
                     model_name="tuneline-text")
    assert not (root / "gate2.json").exists()


def test_a_frozen_backbone_trains_the_head_on_cached_features(trained, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import torch
    from safetensors.torch import load_file

    from components.config import ModelParams
    from components.modalities import load_predictor
    from components.modalities.image.model import image_classifier
    from components.train import run as train

    root, params = trained
    caplog.set_level(logging.INFO, logger="components.features")
    probe = params.model.model_copy(update={"freeze_backbone": True})
    recipe = params.train.model_copy(update={"max_steps": 6, "learning_rate": 1e-2})
    work = tmp_path / "work"
    results = [train(probe, recipe, images(params), root / "augmented", root / "prepared", tmp_path / name,
                     tmp_path / f"{name}.json", work_dir=work) for name in ("first", "second")]

    messages = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert "computed" in messages[0] and "read" in messages[1]
    assert len(list((work / "features").glob("*.safetensors"))) == 2  # train and val
    assert results[0].best_val_macro_f1 == results[1].best_val_macro_f1
    assert results[0].trainable_params == 1280 * 10 + 10
    # the saved folder is the whole classifier: the backbone exactly as ImageNet left it, the head trained
    saved = load_file(str(tmp_path / "first/model.safetensors"))
    imagenet = image_classifier(10, ModelParams()).state_dict()
    backbone = [key for key in saved if key.startswith("backbone.")]
    assert len(backbone) > 200 and all(torch.equal(saved[key], imagenet[key]) for key in backbone)
    assert not torch.equal(saved["classifier.weight"], imagenet["classifier.weight"])
    # and through the full network it scores on val what it scored on the cached features
    from sklearn.metrics import f1_score

    from components.io import read_split

    val = read_split(root / "prepared", "val")
    predicted = load_predictor(tmp_path / "first", device="cpu").predict([str(root / "prepared" / f)
                                                                            for f in val["image"]])
    full = f1_score(val["label"].astype(str), [p.label for p in predicted], average="macro", zero_division=0)
    assert full == pytest.approx(results[0].best_val_macro_f1, abs=1e-4)


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local transformers image classification checkpoint: a small ViT (random weights, 3 labels) with its image
    processor, saved as save_pretrained saves any."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("vit")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.45, 0.5],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def test_a_local_transformers_checkpoint_gets_a_new_head_trains_and_predicts(trained, vit_checkpoint: Path,
                                                                              tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from components.modalities import load_predictor
    from components.modalities.image.model import ImagePredictor
    from components.train import run as train

    root, params = trained
    model = params.model.model_copy(update={"name_or_path": str(vit_checkpoint), "freeze_layers": 2})
    result = train(model, params.train, images(params), root / "augmented", root / "prepared", tmp_path / "model",
                   tmp_path / "train.json")
    assert result.steps == 4
    meta = json.loads((tmp_path / "model/tuneline.json").read_text())
    assert meta["architecture"] == "transformers" and meta["base_model"] == str(vit_checkpoint)
    assert meta["image_mean"] == [0.4, 0.45, 0.5] and meta["image_std"] == [0.2, 0.25, 0.3]
    # the head was replaced for the ten digits; the patch embedding and the first two layers kept their weights
    base = load_file(str(vit_checkpoint / "model.safetensors"))
    tuned = load_file(str(tmp_path / "model/model.safetensors"))
    assert tuned["classifier.weight"].shape == (10, 32) and base["classifier.weight"].shape == (3, 32)
    for name in ("vit.embeddings.patch_embeddings.projection.weight", "vit.encoder.layer.1.output.dense.weight"):
        assert torch.equal(base[name], tuned[name]), name
    layer = "vit.encoder.layer.2.output.dense.weight"
    assert not torch.equal(base[layer], tuned[layer])

    predictor = load_predictor(tmp_path / "model", device="cpu")
    assert isinstance(predictor.inner, ImagePredictor) and predictor.mean == (0.4, 0.45, 0.5)
    files = sorted((root / "prepared/images").iterdir())[:5]
    by_path = predictor.predict_proba([str(f) for f in files])
    assert by_path.shape == (5, 10) and np.allclose(by_path.sum(axis=1), 1.0)
    assert np.abs(by_path - predictor.predict_proba([f.read_bytes() for f in files])).max() < 1e-6


def test_a_checkpoint_for_another_image_size_is_refused_with_the_size_to_set(trained, vit_checkpoint: Path,
                                                                              tmp_path: Path) -> None:
    from components.stage import StageError
    from components.train import run as train

    root, params = trained
    model = params.model.model_copy(update={"name_or_path": str(vit_checkpoint)})
    with pytest.raises(StageError, match="set image.size to 32"):
        train(model, params.train, images(params, size=64), root / "augmented", root / "prepared", tmp_path / "model",
              tmp_path / "train.json")


def test_an_interrupted_image_run_resumes_from_its_checkpoint(trained, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The run dies right after its first checkpoint (end of epoch 1); the next run with the same work_dir resumes
    there and ends with the weights an uninterrupted run gets."""
    import logging

    from transformers import TrainerCallback

    from components import engine
    from components import train as stage

    class Killed(Exception):
        pass

    class DieAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - Trainer's callback signature
            raise Killed(f"killed after checkpoint-{state.global_step}")

    root, params = trained
    recipe = params.train.model_copy(update={"max_steps": None, "epochs": 2, "early_stopping_patience": 0})

    def run(name: str, work: Path):  # noqa: ANN202
        return stage.run(params.model, recipe, images(params), root / "augmented", root / "prepared", tmp_path / name,
                         tmp_path / f"{name}.json", work_dir=work)

    straight = run("straight", tmp_path / "work-straight")
    callbacks = engine._callbacks
    monkeypatch.setattr(engine, "_callbacks", lambda *a: [*callbacks(*a), DieAfterFirstCheckpoint()])
    with pytest.raises(Killed):
        run("resumed", tmp_path / "work")
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(engine, "_callbacks", callbacks)
    caplog.set_level(logging.INFO, logger="components.engine")
    resumed = run("resumed", tmp_path / "work")

    assert any("resuming from" in r.getMessage() for r in caplog.records)
    assert resumed.steps == straight.steps and resumed.best_val_macro_f1 == straight.best_val_macro_f1
    weights = (tmp_path / "straight/model.safetensors").read_bytes()
    assert (tmp_path / "resumed/model.safetensors").read_bytes() == weights
    assert not any((tmp_path / "work/checkpoints").iterdir())  # finished: nothing left to resume


def test_gradual_unfreezing_thaws_the_image_backbone_from_the_top(trained, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import shutil

    import torch
    from safetensors.torch import load_file

    from components.config import ModelParams
    from components.io import read_split, write_split
    from components.modalities.image.model import image_classifier
    from components.train import run as train

    root, params = trained
    # no val rows, so the saved model is epoch 2's: with val rows the Trainer keeps the best epoch's weights, and where
    # epoch 1 scored as well (it did in one full run of the suite) the conv head it saved had never thawed
    prepared = tmp_path / "prepared"
    shutil.copytree(root / "prepared", prepared)
    write_split(prepared, "val", read_split(prepared, "val").iloc[0:0])
    caplog.set_level(logging.INFO, logger="components.engine")
    model = params.model.model_copy(update={"gradual_unfreeze": 4})
    recipe = params.train.model_copy(update={"max_steps": None, "epochs": 2, "early_stopping_patience": 0,
                                             "head_learning_rate": 1e-2})
    train(model, recipe, images(params), root / "augmented", prepared, tmp_path / "model", tmp_path / "train.json")

    thawed = [r.getMessage() for r in caplog.records if "backbone groups thawed" in r.getMessage()]
    assert thawed[0].startswith("epoch 1: 0 of 18") and thawed[-1].startswith("epoch 2: 4 of 18"), thawed
    saved, imagenet = load_file(str(tmp_path / "model/model.safetensors")), image_classifier(10, ModelParams())
    start = imagenet.state_dict()
    # epoch 2 trained the final convolution and the top three blocks; the stem and the lower blocks never moved
    assert not torch.equal(saved["backbone._conv_head.weight"], start["backbone._conv_head.weight"])
    assert not torch.equal(saved["backbone._blocks.15._project_conv.weight"],
                           start["backbone._blocks.15._project_conv.weight"])
    for name in ("backbone._conv_stem.weight", "backbone._blocks.0._project_conv.weight",
                 "backbone._blocks.12._project_conv.weight"):
        assert torch.equal(saved[name], start[name]), name


def test_a_transformers_checkpoint_with_an_mlp_head_loads_back_as_trained(trained, vit_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from components.modalities import load_predictor
    from components.train import run as train

    root, params = trained
    from components.config import HeadParams

    model = params.model.model_copy(update={"name_or_path": str(vit_checkpoint),
                                            "head": HeadParams(type="mlp", hidden_sizes=[16])})
    train(model, params.train, images(params), root / "augmented", root / "prepared", tmp_path / "model",
          tmp_path / "train.json")
    predictor = load_predictor(tmp_path / "model", device="cpu")
    head = predictor.model.classifier
    assert isinstance(head, torch.nn.Sequential) and head[-1].out_features == 10
    saved = load_file(str(tmp_path / "model/model.safetensors"))
    assert torch.equal(predictor.model.state_dict()["classifier.0.weight"], saved["classifier.0.weight"])
