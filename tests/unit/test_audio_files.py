"""Audio sources as rows (components/modalities/audio/files.py): a folder per class and a table of paths, each clip
inspected, usable ones stored once by content, and the samples every stage hears."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import DataParams
from components.modalities.audio import files
from components.modalities.audio.settings import AudioParams
from components.stage import StageError


def write_clip(path: Path, seconds: float = 0.5, rate: int = 8_000, channels: int = 1, level: float = 0.2) -> Path:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    wave = level * np.sin(2 * np.pi * 300 * np.arange(int(rate * seconds)) / rate)
    soundfile.write(path, np.tile(wave[:, None], (1, channels)), rate, subtype="PCM_16")
    return path


def test_a_folder_per_class_becomes_rows_and_bad_files_keep_their_problem(tmp_path: Path) -> None:
    write_clip(tmp_path / "yes" / "1.wav")
    write_clip(tmp_path / "no" / "2.wav", level=0.1)
    (tmp_path / "no" / "notes.wav").write_text("not audio")
    loaded = files.read(DataParams(path=str(tmp_path)), AudioParams())
    frame = loaded.frame.set_index("file")
    assert loaded.rows_read == 3 and loaded.format == "folders"
    good, bad = frame.loc[str(tmp_path / "yes" / "1.wav")], frame.loc[str(tmp_path / "no" / "notes.wav")]
    assert good["label"] == "yes" and good["audio"] == f"audio/{good['sha256']}.wav" and pd.isna(good["problem"])
    assert pd.isna(bad["audio"]) and "is not audio" in bad["problem"] and pd.isna(bad["sha256"])
    stored = files.store(loaded.frame, tmp_path / "prepared")
    assert files.SOURCE_PATH not in stored
    assert (tmp_path / "prepared" / good["audio"]).read_bytes() == (tmp_path / "yes" / "1.wav").read_bytes()


def test_a_table_of_paths_relative_to_it(tmp_path: Path) -> None:
    write_clip(tmp_path / "clips" / "a.wav")
    (tmp_path / "data.csv").write_text("audio,label\nclips/a.wav,up\nclips/missing.wav,down\n")
    frame = files.read(DataParams(path=str(tmp_path / "data.csv")), AudioParams()).frame
    assert frame["label"].tolist() == ["up", "down"] and frame["line"].tolist() == [2, 3]
    assert pd.isna(frame["problem"].iloc[0]) and "does not exist" in frame["problem"].iloc[1]


def test_an_empty_folder_and_a_missing_builtin_say_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="put each class's audio files in a sub-folder"):
        files.read(DataParams(path=str(tmp_path / "empty")), AudioParams())
    with pytest.raises(StageError, match="make speech-data"):
        files.read(DataParams(), AudioParams(builtin_dir=str(tmp_path / "nowhere")))


def test_every_clip_is_heard_as_mono_at_the_model_rate(tmp_path: Path) -> None:
    stereo = write_clip(tmp_path / "s.wav", seconds=1.0, rate=8_000, channels=2)
    samples = files.load_samples(stereo, 16_000)
    assert samples.dtype == np.float32 and samples.ndim == 1 and abs(len(samples) - 16_000) <= 1
    assert np.array_equal(samples, files.load_samples(stereo.read_bytes(), 16_000))  # bytes (HTTP) = path (a split)
    assert 0.12 < float(np.sqrt(np.mean(samples ** 2))) < 0.16  # a 0.2 sine's RMS survives resampling
