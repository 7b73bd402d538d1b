"""The built-in speech data set's listing (components/modalities/audio/builtin.py), on a tree laid out as the Debian
packages unpack, with tiny clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.modalities.audio import builtin
from components.stage import StageError


def write_clip(path: Path, seconds: float) -> None:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, 0.2 * np.sin(np.arange(int(8000 * seconds)) / 3.0), 8000, subtype="PCM_16")


@pytest.fixture
def unpacked(tmp_path: Path) -> Path:
    for language, voice in zip(builtin.LANGUAGES, ("en_US_f_A", "es_MX_f_A", "fr_CA_f_J", "it_IT_m_C", "ru_RU_f_I"),
                               strict=True):
        sounds = tmp_path / builtin.SOUNDS / voice
        write_clip(sounds / "vm-goodbye.wav", 1.0)
        write_clip(sounds / "digits" / "7.wav", 0.5)
        write_clip(sounds / "silence" / "1.wav", 1.0)  # silence by design: left out
        write_clip(sounds / "too-short.wav", 0.1)  # outside [MIN_SECONDS, MAX_SECONDS]: left out
    return tmp_path


def test_every_language_lists_its_prompts_with_the_prompt_as_group(unpacked: Path) -> None:
    listed = builtin.clips(unpacked)
    assert [(language, prompt) for _, language, prompt in listed] == [
        (language, prompt) for language in builtin.LANGUAGES for prompt in ("digits/7", "vm-goodbye")]
    assert all(path.is_file() and path.suffix == ".wav" for path, _, _ in listed)


def test_a_missing_package_says_how_to_get_it(unpacked: Path) -> None:
    import shutil

    shutil.rmtree(unpacked / builtin.SOUNDS / "fr_CA_f_J")
    with pytest.raises(StageError, match=r"make speech-data.*asterisk-core-sounds-fr-wav 1\.6\.1-1"):
        builtin.clips(unpacked)
    with pytest.raises(StageError, match="make speech-data"):
        builtin.clips(unpacked / "nowhere")
