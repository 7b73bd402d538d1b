"""The audio model (components/modalities/audio/model.py) on the built-in Whisper encoder: cut to the clip length,
frozen as asked, saved and loaded back with the same probabilities, and the log-mel baseline beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import ModelParams
from components.modalities.audio import model as audio_model
from components.modalities.audio.settings import AudioParams

LABELS = ["low", "high"]


def tone_file(path: Path, hertz: float, rate: int = 8_000, seconds: float = 0.8, seed: int = 0) -> Path:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(rate * seconds)) / rate
    noise = 0.02 * np.random.default_rng(seed).standard_normal(time.size)
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * hertz * time) + noise, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("tones")
    rows = [(str(tone_file(folder / f"{label}-{i}.wav", hertz + 15 * i, seed=i)), label)
            for label, hertz in (("low", 200.0), ("high", 1_500.0)) for i in range(6)]
    return pd.DataFrame(rows, columns=["audio", "label"])


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> AudioParams:
    return AudioParams(clip_seconds=1.0, model_cache=str(tmp_path_factory.mktemp("models")))


def test_whisper_is_cut_to_the_clip_and_frozen_as_asked(settings: AudioParams) -> None:
    built = audio_model.build_audio_model(LABELS, ModelParams(freeze_layers=3, freeze_embeddings=True), settings)
    encoder = built.model.encoder
    assert built.model.config.max_source_positions == 50 and encoder.embed_positions.num_embeddings == 50
    assert not any(p.requires_grad for layer in encoder.layers[:3] for p in layer.parameters())
    assert all(p.requires_grad for p in encoder.layers[3].parameters())
    assert not encoder.conv1.weight.requires_grad and built.model.classifier.weight.requires_grad
    probe = audio_model.build_audio_model(LABELS, ModelParams(freeze_backbone=True), settings).model
    assert not any(p.requires_grad for p in probe.encoder.parameters()) and probe.classifier.weight.requires_grad


def test_the_same_network_from_random_weights_for_tuneline_scratch(settings: AudioParams) -> None:
    import torch

    trained = audio_model.build_audio_model(LABELS, ModelParams(), settings).model
    scratch = audio_model.build_audio_model(LABELS, ModelParams(pretrained=False), settings)
    assert scratch.meta["base_model"].endswith("random weights")
    assert scratch.model.config.max_source_positions == 50  # cut to the clip as the pretrained one is
    assert not torch.equal(scratch.model.encoder.layers[0].fc1.weight, trained.encoder.layers[0].fc1.weight)


def test_a_saved_model_predicts_what_it_computed(clips: pd.DataFrame, settings: AudioParams, tmp_path: Path) -> None:
    import torch

    built = audio_model.build_audio_model(LABELS, ModelParams(), settings)
    rows = audio_model.AudioRows(clips, "/", {label: i for i, label in enumerate(LABELS)},
                                 built.extra["feature_extractor"], settings.sample_rate, settings.clip_seconds)
    assert len(rows) == 12 and rows.key == "input_features" and tuple(rows[0][rows.key].shape) == (80, 100)
    assert rows.size() == pytest.approx(12 * 0.8)
    built.model.eval()
    with torch.no_grad():
        direct = torch.softmax(built.model(**{rows.key: rows.inputs}).logits, dim=-1).numpy()
    built.save(None, tmp_path)
    (tmp_path / "tuneline.json").write_text(json.dumps({**built.meta, "labels": LABELS,
                                                        "model": ModelParams().model_dump(mode="json")}))
    predictor = audio_model.AudioPredictor.load(tmp_path, "cpu")
    from_paths = predictor.predict_proba(clips["audio"].tolist())
    from_bytes = predictor.predict_proba([Path(p).read_bytes() for p in clips["audio"]])
    assert np.abs(from_paths - direct).max() < 1e-5 and np.abs(from_bytes - from_paths).max() < 1e-7


def test_the_log_mel_baseline_tells_a_low_tone_from_a_high_one(clips: pd.DataFrame) -> None:
    files = [Path(p) for p in clips["audio"]]
    train = list(range(0, 12, 2))
    test = list(range(1, 12, 2))
    predicted = audio_model.log_mel_baseline([files[i] for i in train], clips["label"].iloc[train].tolist(),
                                             [files[i] for i in test], 16_000)
    assert predicted == clips["label"].iloc[test].tolist()


def test_a_frozen_encoder_s_mean_frame_feeds_the_same_head(clips: pd.DataFrame, settings: AudioParams,
                                                           tmp_path: Path) -> None:
    """With the backbone frozen, the head trains on cached mean frames: they must give the model's own logits."""
    import torch

    built = audio_model.build_audio_model(LABELS, ModelParams(freeze_backbone=True), settings)
    rows = audio_model.AudioRows(clips, "/", None, built.extra["feature_extractor"], settings.sample_rate,
                                 settings.clip_seconds)
    dropout, head = audio_model.cacheable_head(built.model)
    features, was_cached = audio_model.cached_features(built.model.encoder, rows, 4, "cpu", tmp_path)
    again, was_cached_again = audio_model.cached_features(built.model.encoder, rows, 4, "cpu", tmp_path)
    assert (was_cached, was_cached_again) == (False, True) and torch.equal(features, again)
    built.model.eval()
    with torch.no_grad():
        assert torch.allclose(head(dropout(features)), built.model(**{rows.key: rows.inputs}).logits, atol=1e-5)


def test_gradual_unfreezing_thaws_whisper_from_the_top(settings: AudioParams) -> None:
    built = audio_model.build_audio_model(LABELS, ModelParams(gradual_unfreeze=1, freeze_layers=1), settings)
    plan = built.thaw
    encoder = built.model.encoder
    # layers 3, 2, 1 (layer 0 stays frozen by freeze_layers), then the two convolutions
    assert len(plan.groups) == 4 and plan.groups[0][0] is next(encoder.layers[3].parameters())
    plan.apply(1, built.model)
    assert all(p.requires_grad for p in encoder.layers[3].parameters())
    assert not any(p.requires_grad for p in encoder.layers[2].parameters())
    assert built.model.classifier.weight.requires_grad
