"""Speech and other sounds: a folder per class, a table of audio paths, or the built-in voice prompts in five
languages, classified by Whisper tiny.en's encoder (or a local transformers audio checkpoint) with a new head and
compared with logistic regression on log-mel statistics. Its block of params.yaml is `audio` (settings.py); the
pieces live beside it: clips.py (what a file holds), files.py (sources, storing, hearing a clip), builtin.py (the
built-in data set), whisper.py (the built-in backbone), model.py (model, rows, predictor, baseline), augment.py.

audio/params.yaml runs it on the built-in data set (`make run-audio`); the service answers /classify_audio; scheduled
runs take a folder per class dropped into paths.incoming.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import AugmentParams, DataParams, ModelParams, Params, TrainParams
from components.modalities import Augmented, Built, Expectation, Loaded, Modality
from components.modalities.audio.settings import AudioParams
from components.stage import StageError

# prepare's record of each file; validate compares clips by the hash of their samples
COLUMNS = ("audio", "label", "source_row", "file", "sha256", "sample_rate", "channels", "seconds", "rms_dbfs",
           "clipped", "problem")


class AudioModality(Modality):
    """Audio files, decoded completely by prepare and copied once each; two clips are the same by their samples."""

    name = "audio"
    item = "clip"
    items = "audio"  # also the request field and the name a bad item goes by: audio[3]
    column = "audio"
    columns = COLUMNS
    details = ("problem", "seconds", "sample_rate", "channels", "rms_dbfs")
    checks = {"unreadable_audio": "error", "audio_sample_rate": "error", "audio_channels": "error",
              "audio_too_short": "error", "audio_too_long": "error", "audio_silent": "error",
              "audio_clipped": "error"}
    settings_type = AudioParams
    incoming_columns = ("audio", "label")  # scheduled runs take a folder per class, copied beside the accepted table
    route = "/classify_audio"
    request_example = '{"audio": ["<base64 file>", ...]}'
    settings: AudioParams

    def check_options(self, params: Params) -> None:
        if params.model.adapter != "none" or params.model.candidates:
            raise StageError("model.adapter and model.candidates are for text models; set them to none and [] for "
                             "audio")
        if params.train.world_size > 1:
            raise StageError("train.num_processes > 1 (DDP) is for text models so far; set it to 1 for audio")
        if params.train.method == "contrastive":
            raise StageError("train.method contrastive is for text models so far; set it to finetune or auto for "
                             "audio")
        if params.data.split_column:
            raise StageError("data.split_column is read from text tables so far; give audio splits as "
                             "data.val_path / data.test_path (a folder per class or a table each), or remove it")

    def read(self, data: DataParams, work: Path) -> Loaded:
        from components.modalities.audio.files import read

        return read(data, self.settings)

    def read_table(self, path: Path, columns: tuple[str, str], data: DataParams, name: str) -> Loaded:
        from components.modalities.audio.files import read

        return read(data.model_copy(update={"path": str(path), "label_column": columns[1]}),
                    self.settings.model_copy(update={"column": columns[0]}))

    def incoming_rows(self, frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
        from components.modalities.audio.files import keep_clips

        return keep_clips(frame, folder)

    def item_key(self, frame: pd.DataFrame) -> pd.Series:
        from components.modalities.folders import content_key

        return content_key(frame)  # the hash of the decoded samples

    def split_key(self, frame: pd.DataFrame) -> pd.Series:
        from components.modalities.audio.files import GROUP

        keys = self.item_key(frame)
        if GROUP not in frame:
            return keys
        groups = frame[GROUP]
        return ("group " + groups.astype(str)).where(groups.notna(), keys)

    def store(self, frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
        from components.modalities.audio.files import store

        return store(frame, folder)

    def summary(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {"unusable_clips": int(frame["problem"].notna().sum())}

    def expectations(self, labels: list[str]) -> list[Expectation]:
        limits = self.settings
        return [
            # prepare decoded every sample of every file; its problem says why one could not be used (empty, not
            # audio, truncated, a forged header, a format its name denies, a rate no model hears, no samples)
            Expectation("unreadable_audio", "expect_column_values_to_be_null", {"column": "problem"}),
            Expectation("audio_sample_rate", "expect_column_values_to_be_between",
                        {"column": "sample_rate", "min_value": limits.min_sample_rate,
                         "max_value": limits.max_sample_rate}),
            Expectation("audio_channels", "expect_column_values_to_be_between",
                        {"column": "channels", "min_value": 1, "max_value": limits.max_channels}),
            Expectation("audio_too_short", "expect_column_values_to_be_between",
                        {"column": "seconds", "min_value": limits.min_seconds}),
            Expectation("audio_too_long", "expect_column_values_to_be_between",
                        {"column": "seconds", "max_value": limits.max_seconds}),
            # a silent clip teaches its label nothing; a clipped one teaches the distortion
            Expectation("audio_silent", "expect_column_values_to_be_between",
                        {"column": "rms_dbfs", "min_value": limits.silence_dbfs}),
            Expectation("audio_clipped", "expect_column_values_to_be_between",
                        {"column": "clipped", "max_value": limits.max_clipped}),
        ]

    def detail(self, row: Mapping[str, Any]) -> str | None:
        if any(pd.isna(row.get(key)) for key in ("seconds", "sample_rate", "channels")):
            return None
        level = "" if pd.isna(row.get("rms_dbfs")) else f", {float(row['rms_dbfs']):.1f} dBFS"
        return (f"{float(row['seconds']):.2f} s at {int(row['sample_rate']):,} Hz, {int(row['channels'])} "
                f"channel(s){level}")

    def augment(self, train: pd.DataFrame, held_out: list[pd.DataFrame], wanted: Mapping[str, int],
                params: AugmentParams, model: ModelParams, prepared_dir: Path, out_dir: Path) -> Augmented:
        from components.modalities.audio.augment import augment

        hashes = set(pd.concat([frame["sha256"] for frame in held_out]).dropna()) if held_out else set()
        return Augmented(augment(train, hashes, wanted, self.settings.augment, self.settings.sample_rate,
                                 params.seed, prepared_dir, out_dir))

    def build(self, labels: list[str], model: ModelParams) -> Built:
        from components.modalities.audio.model import build_audio_model

        return build_audio_model(labels, model, self.settings)

    def dataset(self, built: Built, frame: pd.DataFrame, folder: Path, label_ids: dict[str, int],
                train_params: TrainParams) -> Any:
        from components.modalities.audio.model import AudioRows

        return AudioRows(frame, folder, label_ids, built.extra["feature_extractor"], self.settings.sample_rate,
                         self.settings.clip_seconds)

    def collator(self, built: Built, train_params: TrainParams) -> tuple[Any, bool]:
        from transformers import default_data_collator

        return default_data_collator, False  # every clip is cut or padded to audio.clip_seconds

    def head(self, built: Built) -> tuple[Any, Any]:
        from components.modalities.audio.model import cacheable_head

        return cacheable_head(built.model)

    def features(self, built: Built, dataset: Any, batch_size: int, device: str,
                 cache_dir: Path | None) -> tuple[Any, bool]:
        from components.modalities.audio.model import cached_features

        return cached_features(built.model.encoder, dataset, batch_size, device, cache_dir)

    def inputs(self, frame: pd.DataFrame, folder: Path) -> list[Any]:
        return [str(Path(folder) / audio) for audio in frame["audio"]]

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> tuple[str, list[str]]:
        from components.modalities.audio.model import log_mel_baseline

        return "log-mel logistic regression", log_mel_baseline(
            [Path(folder) / audio for audio in train["audio"]], train["label"].tolist(),
            [Path(folder) / audio for audio in test["audio"]], self.settings.sample_rate)

    def load_model(self, model_dir: Path, device: str = "auto") -> Any:
        from components.modalities.audio.model import AudioPredictor

        return AudioPredictor.load(model_dir, device)

    def decode_request(self, item: Any) -> Any:
        """A base64 audio file decoded and checked as training checked its clips: readable, within audio.* limits."""
        from components.modalities.audio.clips import inspect_audio, limit_problem
        from components.modalities.folders import decode_base64

        limits = self.settings
        data = decode_base64(item, limits.max_file_bytes, "audio.max_file_bytes")
        info = inspect_audio(data, "", limits)
        problem = info.problem or limit_problem(info, limits)
        if problem is not None:
            raise ValueError(problem)
        return data

    def warm_up_input(self, predictor: Any) -> Any:
        import numpy as np

        from components.modalities.audio.augment import wav_bytes

        rate = predictor.sample_rate
        return wav_bytes(0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate), rate)


MODALITY = AudioModality
