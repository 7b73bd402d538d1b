"""Perturbed copies of train clips (components/modalities/audio/augment.py): as many as asked, reproducible by seed,
each a clip of its own that inspection accepts, none equal to a held-out clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.modalities.audio.augment import augment, wav_bytes
from components.modalities.audio.clips import inspect_audio
from components.modalities.audio.settings import AudioAugmentParams

RATE = 16_000
ALWAYS = AudioAugmentParams(p_shift=1.0, p_gain=1.0, p_speed=1.0, p_pitch=1.0, p_noise=1.0, p_time_mask=1.0,
                            p_frequency_mask=1.0)


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path / "prepared"
    (folder / "audio").mkdir(parents=True)
    rows = []
    for i, (label, hertz) in enumerate((("low", 220.0), ("low", 260.0), ("high", 1_200.0))):
        data = wav_bytes(0.3 * np.sin(2 * np.pi * hertz * np.arange(RATE // 2) / RATE), RATE)
        info = inspect_audio(data, ".wav")
        (folder / "audio" / f"{info.sha256}.wav").write_bytes(data)
        rows.append({"audio": f"audio/{info.sha256}.wav", "label": label, "source_row": i, "sha256": info.sha256,
                     "group": None})
    return folder, pd.DataFrame(rows)


def run(prepared: tuple[Path, pd.DataFrame], out: Path, held_out: set[str] = frozenset(), seed: int = 3
        ) -> pd.DataFrame:
    folder, train = prepared
    out.mkdir()
    return augment(train, set(held_out), {"low": 3, "high": 2}, ALWAYS, RATE, seed, folder, out)


def test_copies_are_new_clips_of_their_label_and_reproducible(prepared, tmp_path: Path) -> None:
    frame = run(prepared, tmp_path / "a")
    copies = frame[frame["augmented"]]
    assert len(frame) == 3 + 5 and copies["label"].value_counts().to_dict() == {"low": 3, "high": 2}
    for _, row in copies.iterrows():
        info = inspect_audio((tmp_path / "a" / row["audio"]).read_bytes(), ".wav")
        assert info.problem is None and info.sha256 == row["sha256"] and row["audio"] == f"audio/{info.sha256}.wav"
    assert set(copies["sha256"]).isdisjoint(prepared[1]["sha256"])  # perturbed, not the original again
    assert (tmp_path / "a" / prepared[1]["audio"][0]).is_file()  # the train clips travel with the copies
    again = run(prepared, tmp_path / "b")
    assert again["sha256"].tolist() == frame["sha256"].tolist()


def test_a_copy_equal_to_a_held_out_clip_is_dropped(prepared, tmp_path: Path) -> None:
    first = run(prepared, tmp_path / "a")
    leaked = set(first[first["augmented"]]["sha256"][:2])
    second = run(prepared, tmp_path / "b", held_out=leaked)
    assert leaked.isdisjoint(second["sha256"]) and len(second) == len(first) - 2


def test_ranges_must_be_in_order() -> None:
    with pytest.raises(ValueError, match="audio.augment.snr_db"):
        AudioAugmentParams(snr_db=[30.0, 10.0])
