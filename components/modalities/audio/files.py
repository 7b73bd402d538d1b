"""Audio as labelled data: where the clips come from, what each one is, and the samples the model hears.

A source gives (file, label) pairs; `clips.inspect_audio` says what each file holds or why it cannot be used. Every
usable clip is copied into the prepared folder once, named by the hash of its decoded samples; an unusable one
stays a row with its problem, so validate names it.

Sources:
- `builtin`: Debian's voice prompts in five languages (builtin.py; `make speech-data` fetches them), the prompt's
  name as each clip's group, so that one prompt's recordings share a split;
- a folder with one sub-folder per class, named after its label;
- a CSV, TSV, JSON Lines or Parquet file with an audio-path column and a label column, paths relative to that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import DataParams
from components.modalities import Loaded
from components.modalities.audio.builtin import LANGUAGES, VERSION, clips
from components.modalities.audio.clips import AudioInfo, inspect_audio
from components.modalities.audio.settings import AudioParams
from components.modalities.folders import SOURCE_PATH, class_folders, store_files
from components.stage import StageError
from components.tables import label_string, read_source

AUDIO_DIR = "audio"  # inside the prepared folder: each usable clip once, named by the hash of its samples
SUFFIXES = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3"}
GROUP = "group"  # rows sharing a group share a split (the built-in set's prompt name); null for other sources
COLUMN_KEYS = ("audio.column", "data.label_column")  # the params keys that name a table's two columns


def source_files(data: DataParams, settings: AudioParams
                 ) -> tuple[list[tuple[Path, str | None, int, str | None]], str, str, list[Any]]:
    """The source's (file, label, line, group) rows, its name and format for messages, and the table records it
    could not read. `line` is the record's line in a table, or the file's 1-based position in a folder source."""
    if data.is_builtin:
        listed = clips(settings.builtin_dir)
        return ([(path, language, i + 1, prompt) for i, (path, language, prompt) in enumerate(listed)],
                f"builtin:Debian asterisk-core-sounds {VERSION} ({', '.join(LANGUAGES)})", "folders",
                [])
    path = Path(data.path)
    if path.is_dir():
        listed = class_folders(path, "audio files", "yes/001.wav, no/002.wav")
        return [(file, label, i + 1, None) for i, (file, label) in enumerate(listed)], str(path), "folders", []
    table = read_source(path, (settings.column, data.label_column), data.delimiter, data.encoding, keys=COLUMN_KEYS)
    rows = [(path.parent / name.strip() if isinstance(name, str) and name.strip() else path.parent, label, line, None)
            for name, label, line in zip(table.item, table.label, table.line, strict=True)]
    return rows, str(path), table.format, table.malformed


def describe(file: Path, limits: AudioParams) -> AudioInfo:
    """inspect_audio of the file, or the reason it cannot be read (missing, a folder, too many bytes)."""
    if not file.is_file():
        return AudioInfo("", 0, problem=f"{file} does not exist or is not a file")
    size = file.stat().st_size
    if size > limits.max_file_bytes:
        return AudioInfo("", size, problem=f"is {size:,} bytes, over audio.max_file_bytes ({limits.max_file_bytes:,})")
    return inspect_audio(file.read_bytes(), file.suffix, limits)


def read(data: DataParams, settings: AudioParams) -> Loaded:
    """Every source clip inspected, one row each: audio (its name in the prepared folder, or null when unusable),
    label, source_row, line, file, group, what inspect_audio measured (size_bytes, format, sample_rate, channels,
    seconds, rms_dbfs, clipped, problem, sha256), and where the file is now (SOURCE_PATH, for `store`).

    Raises:
        StageError: the source is missing or holds no file at all.
    """
    listed, source, kind, malformed = source_files(data, settings)
    rows = []
    for index, (file, label, line, group) in enumerate(listed):
        info = describe(file, settings)
        audio = f"{AUDIO_DIR}/{info.sha256}{SUFFIXES[info.format]}" if info.problem is None else None
        rows.append({"audio": audio, "label": label_string(label), "source_row": index, "line": line,
                     "file": str(file), GROUP: group, **{k: v for k, v in vars(info).items() if k != "sha256"},
                     "sha256": info.sha256 or None, SOURCE_PATH: str(file)})
    if not rows:
        raise StageError(f"data.path {source!r} holds no audio files; it needs labelled clips")
    return Loaded(frame=pd.DataFrame(rows), source=source, format=kind, rows_read=len(rows), malformed=malformed)


def store(frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Copy each usable clip of a split into folder/audio (once, by content hash); the rows without SOURCE_PATH."""
    return store_files(frame, folder, "audio")


def keep_clips(frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Rows of usable clips as an accepted table keeps them: each file copied into `folder` (named by the hash of its
    samples) and its path written relative to the folder's parent, where the table lies; columns audio and label."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    usable = frame[frame["audio"].notna()]  # an unusable clip that a lowered severity let through is not kept
    for source, audio, label in zip(usable["file"], usable["audio"], usable["label"], strict=True):
        name = Path(audio).name  # <sha256>.<suffix>, as prepare names it
        if not (folder / name).exists():
            (folder / name).write_bytes(Path(source).read_bytes())
        rows.append({"audio": f"{folder.name}/{name}", "label": label})
    return pd.DataFrame(rows, columns=["audio", "label"])


def load_samples(source: str | Path | bytes, sample_rate: int) -> np.ndarray:
    """A clip (a path or a file's bytes) as mono float32 samples at sample_rate: channels averaged, resampled with
    soxr. Training, evaluate and the service all hear a clip through this function."""
    import io

    import soundfile
    import soxr

    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    samples, rate = soundfile.read(handle, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
