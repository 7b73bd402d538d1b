"""What one audio file holds, or why it cannot be used (components/modalities/audio/clips.py): every fault of the
bad-audio corpus the speech issue lists, made here in a few bytes each."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from components.modalities.audio.clips import AudioInfo, inspect_audio, limit_problem
from components.modalities.audio.settings import AudioParams

RATE = 8_000


def encode(samples: np.ndarray, rate: int = RATE, format_: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=format_, subtype=subtype)
    return out.getvalue()


def tone(seconds: float = 1.0, level: float = 0.3, channels: int = 1) -> np.ndarray:
    time = np.arange(int(RATE * seconds)) / RATE
    wave = level * np.sin(2 * np.pi * 440 * time)
    return np.tile(wave[:, None], (1, channels)) if channels > 1 else wave


def with_data_size(wav: bytes, size: int) -> bytes:
    """A WAV whose data chunk declares `size` bytes (the bytes that follow stay as they were)."""
    at = wav.find(b"data")
    return wav[:at + 4] + struct.pack("<I", size) + wav[at + 8:]


def test_a_clean_clip_is_described() -> None:
    info = inspect_audio(encode(tone()), ".wav")
    assert info.problem is None and info.format == "WAV" and info.sample_rate == RATE and info.channels == 1
    assert info.seconds == pytest.approx(1.0) and -14 < info.rms_dbfs < -12  # 0.3 peak sine: -13.5 dBFS
    assert info.clipped == 0.0 and len(info.sha256) == 64
    assert limit_problem(info, AudioParams()) is None


def test_the_same_sound_in_another_encoding_is_the_same_item() -> None:
    pcm = np.round(tone() * 32767).astype(np.int16)  # the same 16-bit samples in both files
    wav, flac = encode(pcm), encode(pcm, format_="FLAC")
    assert wav != flac
    assert inspect_audio(wav, ".wav").sha256 == inspect_audio(flac, ".flac").sha256
    assert inspect_audio(encode(tone(level=0.31)), ".wav").sha256 != inspect_audio(wav, ".wav").sha256


@pytest.mark.parametrize("name, data, suffix, problem", [
    ("empty", b"", ".wav", "the file is empty"),
    ("text renamed .wav", b"label,text\nyes,this is a table\n" * 20, ".wav", "is not audio soundfile can read"),
    ("truncated header", encode(tone())[:30], ".wav", "is not audio soundfile can read"),
    ("0-length data", with_data_size(encode(tone())[:44], 0), ".wav", "holds no audio (0 samples)"),
    ("24 hours declared", with_data_size(encode(tone()), 24 * 3600 * RATE * 2), ".wav", "a wrong or forged header"),
    ("truncated data", encode(tone())[:8_000], ".wav", "is truncated"),
    ("an mp3 named .wav", encode(tone(), format_="MP3", subtype=None), ".wav", "is MP3 data named .wav; rename it"),
    ("AIFF", encode(tone(), format_="AIFF"), ".aiff", "is AIFF audio; use WAV, FLAC, OGG or MP3"),
])
def test_a_file_that_cannot_be_used_says_why(name: str, data: bytes, suffix: str, problem: str) -> None:
    info = inspect_audio(data, suffix)
    assert info.problem is not None and problem in info.problem, (name, info.problem)
    assert info.sha256 == ""  # never an item: it cannot collide with another row


def test_a_sample_rate_no_model_can_hear_is_refused() -> None:
    assert "is sampled at 1 Hz; the rate must be 4,000 to 192,000 Hz" in inspect_audio(encode(tone(), rate=1)).problem


def test_a_header_declaring_more_than_max_file_seconds_is_refused_undecoded() -> None:
    long = encode(np.zeros(RATE * 11))  # 11 s, declared truthfully
    assert "over audio.max_file_seconds (10 s)" in inspect_audio(long, ".wav", AudioParams(
        max_file_seconds=10, max_seconds=5)).problem


@pytest.mark.parametrize("data, problem", [
    (encode(tone(level=0.0)), "is silent"),
    (encode(np.clip(tone(level=3.0), -1, 1)), "is clipped"),
    (encode(tone(channels=6)), "has 6 channels"),
    (encode(tone(seconds=0.05)), "is 0.05 s long"),
    (encode(tone(seconds=61)), "is 61.00 s long"),
])
def test_a_decoded_clip_outside_the_limits_is_named(data: bytes, problem: str) -> None:
    info = inspect_audio(data, ".wav")
    assert info.problem is None, info.problem  # it decodes: the limits are validate's checks, with severities
    found = limit_problem(info, AudioParams())
    assert found is not None and problem in found


def test_limits_are_checked_in_params() -> None:
    with pytest.raises(ValueError, match="audio.min_seconds"):
        AudioParams(min_seconds=10, max_seconds=5)
    assert isinstance(inspect_audio(b"x", ".wav"), AudioInfo)
