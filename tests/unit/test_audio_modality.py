"""The audio modality's answers to the stages (components/modalities/audio/__init__.py): its checks, its keys for
splits and duplicates, prepare on a folder per class, and HTTP items decoded and checked as training data is."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import prepare
from components.config import DataParams
from components.io import read_split
from components.modalities.audio import AudioModality
from components.modalities.audio.augment import wav_bytes

RATE = 8_000


def clip(hertz: float = 300.0, level: float = 0.2, seconds: float = 0.5) -> bytes:
    return wav_bytes(level * np.sin(2 * np.pi * hertz * np.arange(int(RATE * seconds)) / RATE), RATE)


def test_every_check_has_an_expectation() -> None:
    modality = AudioModality()
    assert [e.check for e in modality.expectations(["a", "b"])] == list(AudioModality.checks)


def test_a_group_keeps_its_rows_in_one_split_and_unreadable_files_are_keyed_by_name() -> None:
    frame = pd.DataFrame({"sha256": ["h1", "h2", None, "h4"], "file": ["a.wav", "b.wav", "c.wav", "d.wav"],
                          "group": ["digits/7", "digits/7", None, None], "source_row": range(4)})
    modality = AudioModality()
    assert modality.item_key(frame).tolist() == ["h1", "h2", "unreadable c.wav", "h4"]
    assert modality.split_key(frame).tolist() == ["group digits/7", "group digits/7", "unreadable c.wav", "h4"]
    assert modality.split_key(frame.drop(columns="group")).tolist() == modality.item_key(frame).tolist()


def test_prepare_reads_a_folder_per_class_and_stores_each_clip_once(tmp_path: Path) -> None:
    for label, hertz in (("low", 200.0), ("high", 1_500.0)):
        for i in range(10):
            path = tmp_path / "raw" / label / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(clip(hertz + 10 * i))
    result = prepare.run(DataParams(path=str(tmp_path / "raw")), AudioModality(), tmp_path / "prepared")
    assert sum(result.counts.values()) == 20 and result.labels == ["high", "low"]
    assert result.summary["unusable_clips"] == 0
    for split in ("train", "val", "test"):
        frame = read_split(tmp_path / "prepared", split)
        assert all((tmp_path / "prepared" / audio).is_file() for audio in frame["audio"])


@pytest.mark.parametrize("data, problem", [
    (b"not audio at all", "is not audio soundfile can read"),
    (clip(level=0.0), "is silent"),
    (clip(seconds=0.02), "is 0.02 s long"),
])
def test_an_http_item_is_checked_as_training_data_is(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AudioModality().decode_request(base64.b64encode(data).decode())


def test_a_good_http_item_and_a_non_base64_one() -> None:
    data = clip()
    assert AudioModality().decode_request(base64.b64encode(data).decode()) == data
    with pytest.raises(ValueError, match="is not base64"):
        AudioModality().decode_request("not base64!")
