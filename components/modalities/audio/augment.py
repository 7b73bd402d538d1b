"""Perturbed copies of train clips: a time shift, gain, speed and pitch changes, white noise at a signal-to-noise
ratio, and SpecAugment-style time and frequency masks, each with its probability in audio.augment (audiomentations).
Each copy is a 16-bit WAV file of its own at audio.sample_rate, named by the hash of its samples; its row keeps its
original's label, source_row, file and group, and a copy equal to a val or test clip is dropped."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.copies import pick_sources
from components.modalities.folders import link_files
from components.modalities.audio.clips import inspect_audio
from components.modalities.audio.files import AUDIO_DIR, load_samples
from components.modalities.audio.settings import AudioAugmentParams


def pipeline(params: AudioAugmentParams) -> Any:
    """The audiomentations chain audio.augment describes."""
    import audiomentations as A  # noqa: N812 - the library's own short name

    return A.Compose([
        A.Shift(min_shift=-params.max_shift, max_shift=params.max_shift, p=params.p_shift),
        A.Gain(min_gain_db=params.gain_db[0], max_gain_db=params.gain_db[1], p=params.p_gain),
        A.TimeStretch(min_rate=params.speed_rate[0], max_rate=params.speed_rate[1], leave_length_unchanged=False,
                      p=params.p_speed),
        A.PitchShift(min_semitones=params.pitch_semitones[0], max_semitones=params.pitch_semitones[1],
                     p=params.p_pitch),
        A.AddGaussianSNR(min_snr_db=params.snr_db[0], max_snr_db=params.snr_db[1], p=params.p_noise),
        A.TimeMask(min_band_part=0.0, max_band_part=params.max_time_mask, p=params.p_time_mask),
        A.BandStopFilter(p=params.p_frequency_mask),
    ])


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples as a 16-bit PCM WAV file (clipped to [-1, 1]); the same samples give the same bytes."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def augment(train: pd.DataFrame, held_out: set[str], wanted: Mapping[str, int], params: AudioAugmentParams,
            sample_rate: int, seed: int, prepared_dir: Path, out_dir: Path) -> pd.DataFrame:
    """The train split (augmented = False) followed by `wanted[label]` perturbed copies of each label's clips
    (augmented = True), less those equal to a `held_out` clip (by the hash of the samples). out_dir/audio gets the
    train clips (hard links where the file system allows) and the copies. The same seed and data give the same
    copies (audiomentations draws from numpy's and Python's global generators, seeded here)."""
    import random

    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    random.seed(seed)
    chain = pipeline(params)
    copies = []
    (out_dir / AUDIO_DIR).mkdir()
    link_files(train["audio"].dropna().unique(), prepared_dir, out_dir)
    for label in sorted(wanted):
        rows = train[train["label"] == label].reset_index(drop=True)
        for position in pick_sources(len(rows), wanted[label], rng):
            row = rows.iloc[int(position)].to_dict()
            samples = chain(samples=load_samples(prepared_dir / row["audio"], sample_rate), sample_rate=sample_rate)
            data = wav_bytes(samples, sample_rate)
            info = inspect_audio(data, ".wav")
            if info.problem is not None or info.sha256 in held_out:
                continue
            name = f"{AUDIO_DIR}/{info.sha256}.wav"
            if not (out_dir / name).exists():
                (out_dir / name).write_bytes(data)
            copies.append({**row, "audio": name, "augmented": True,
                           **{k: v for k, v in vars(info).items() if k not in ("problem",)}, "problem": None})
    return pd.concat([train.assign(augmented=False), pd.DataFrame(copies)], ignore_index=True)
