"""Resemblyzer's speaker encoder as an audio backbone (components/modalities/audio/resemblyzer.py): the same mel frames
and embeddings as the package's own VoiceEncoder, frozen as asked, refused where an option cannot apply, and saved
and loaded back with the probabilities it computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import ModelParams
from components.modalities.audio import model as audio_model
from components.modalities.audio import resemblyzer
from components.modalities.audio.settings import AudioParams
from components.stage import StageError

LABELS = ["low", "high"]
SETTINGS = AudioParams(clip_seconds=1.0)
RESEMBLYZER = {"name_or_path": "resemblyzer", "freeze_embeddings": False, "freeze_layers": 0}


def params(**changes: object) -> ModelParams:
    return ModelParams.model_validate({**RESEMBLYZER, **changes})


def tone(hertz: float, seconds: float = 1.5, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    time = np.arange(int(rate * seconds)) / rate
    noise = 0.03 * np.random.default_rng(seed).standard_normal(time.size)
    return (0.3 * np.sin(2 * np.pi * hertz * time) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    import soundfile

    folder = tmp_path_factory.mktemp("tones")
    rows = []
    for label, hertz in (("low", 220.0), ("high", 1_800.0)):
        for i in range(4):
            path = folder / f"{label}-{i}.wav"
            soundfile.write(path, tone(hertz + 20 * i, seconds=0.6 + 0.2 * i, seed=i), 16_000, subtype="PCM_16")
            rows.append((str(path), label))
    return pd.DataFrame(rows, columns=["audio", "label"])


def test_the_encoder_hears_and_embeds_as_the_package_s_own() -> None:
    import torch
    from resemblyzer import VoiceEncoder, audio

    samples = tone(300.0)
    ours = resemblyzer.MelExtractor().mel(samples)
    assert ours.shape == (151, 40) and np.array_equal(ours, audio.wav_to_mel_spectrogram(samples))
    reference = VoiceEncoder("cpu", verbose=False).eval()
    built = audio_model.build_audio_model(LABELS, params(), SETTINGS)
    frames = torch.from_numpy(np.stack([ours, resemblyzer.MelExtractor().mel(tone(1_500.0, seed=1))]))
    with torch.no_grad():
        assert torch.allclose(built.model.encoder(frames), reference(frames), atol=1e-6)
    scratch = audio_model.build_audio_model(LABELS, params(pretrained=False), SETTINGS)
    assert scratch.meta["base_model"] == "resemblyzer, random weights"
    assert not torch.equal(scratch.model.encoder.linear.weight, built.model.encoder.linear.weight)


def test_freezing_the_bottom_lstm_layers_or_the_whole_encoder() -> None:
    model = audio_model.build_audio_model(LABELS, params(freeze_layers=2), SETTINGS).model
    layers = model.encoder.layers
    assert not any(p.requires_grad for layer in layers[:2] for p in layer.parameters())
    assert all(p.requires_grad for p in [*layers[2].parameters(), *model.encoder.linear.parameters()])
    probe = audio_model.build_audio_model(LABELS, params(freeze_backbone=True), SETTINGS).model
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    assert all(p.requires_grad for p in probe.classifier.parameters())
    thawing = audio_model.build_audio_model(LABELS, params(gradual_unfreeze=1, freeze_layers=1), SETTINGS)
    top, middle = thawing.model.encoder.layers[2], thawing.model.encoder.layers[1]
    # the top LSTM layer, then the middle one; the bottom one stays frozen by freeze_layers
    assert len(thawing.thaw.groups) == 2
    assert thawing.thaw.groups[0][0] is next(top.parameters()) and thawing.thaw.groups[1][0] is next(middle.parameters())
    thawing.thaw.apply(1, thawing.model)  # epoch 2: the top LSTM layer thaws first
    assert all(p.requires_grad for p in top.parameters()) and not any(p.requires_grad for p in middle.parameters())


@pytest.mark.parametrize(("changes", "settings", "message"), [
    ({"freeze_embeddings": True}, SETTINGS, "resemblyzer has none"),
    ({"freeze_layers": 4}, SETTINGS, "resemblyzer has 3 LSTM layers"),
    ({}, AudioParams(sample_rate=8_000), "set audio.sample_rate to 16000"),
])
def test_an_option_it_cannot_take_is_refused_with_the_fix(changes: dict, settings: AudioParams, message: str) -> None:
    with pytest.raises(StageError, match=message):
        audio_model.build_audio_model(LABELS, params(**changes), settings)


def test_a_saved_model_predicts_what_it_computed_and_a_frozen_one_trains_on_cached_embeddings(
        clips: pd.DataFrame, tmp_path: Path) -> None:
    import torch

    mlp = params(head={"type": "mlp", "hidden_sizes": [32]})
    built = audio_model.build_audio_model(LABELS, mlp, SETTINGS)
    rows = audio_model.AudioRows(clips, "/", {label: i for i, label in enumerate(LABELS)},
                                 built.extra["feature_extractor"], SETTINGS.sample_rate, SETTINGS.clip_seconds)
    assert rows.key == "input_features" and tuple(rows[0][rows.key].shape) == (101, 40)
    built.model.eval()
    with torch.no_grad():
        direct = torch.softmax(built.model(**{rows.key: rows.inputs})["logits"], dim=-1).numpy()
    built.save(None, tmp_path)
    (tmp_path / "tuneline.json").write_text(json.dumps({**built.meta, "labels": LABELS,
                                                        "model": mlp.model_dump(mode="json")}))
    predictor = audio_model.AudioPredictor.load(tmp_path, "cpu")
    from_paths = predictor.predict_proba(clips["audio"].tolist())
    from_bytes = predictor.predict_proba([Path(p).read_bytes() for p in clips["audio"]])
    assert np.abs(from_paths - direct).max() < 1e-5 and np.abs(from_bytes - from_paths).max() < 1e-7

    dropout, head = audio_model.cacheable_head(built.model)
    features, was_cached = audio_model.cached_features(built.model.encoder, rows, 3, "cpu", tmp_path / "cache")
    assert not was_cached and tuple(features.shape) == (len(clips), 256)
    with torch.no_grad():
        assert torch.allclose(head(dropout(features)), built.model(**{rows.key: rows.inputs})["logits"], atol=1e-5)
