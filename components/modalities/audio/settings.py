"""The `audio` block of params.yaml: where the audio paths are, what an audio file may be, and what the model
hears (sample rate and clip length)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from components.config import Block, Probability

Seconds = Annotated[float, Field(gt=0.0, le=86_400.0)]


class AudioParams(Block):
    """Audio data (data.modality: audio): what a file may be, and what the model hears."""

    column: str = "audio"  # a table source's column of audio paths, relative to the table file
    builtin_dir: str = ".cache/speech"  # where `make speech-data` unpacks the built-in data set (data.path builtin)
    model_cache: str = ".cache/models"  # the built-in Whisper encoder, converted once per source file (whisper.py)
    sample_rate: Annotated[int, Field(ge=8_000, le=48_000)] = 16_000  # what every clip is resampled to (Whisper)
    clip_seconds: Annotated[float, Field(gt=0.0, le=30.0)] = 5.0  # the model hears this much (cut or padded)
    min_seconds: Seconds = 0.1  # a shorter clip is refused (validate.severity.audio_too_short)
    max_seconds: Seconds = 60.0  # a longer one too (audio_too_long); one over max_file_seconds is never decoded
    max_file_seconds: Seconds = 600.0  # a header declaring more is refused undecoded (a day of audio is no sample)
    max_file_bytes: Annotated[int, Field(ge=1)] = 200_000_000
    min_sample_rate: Annotated[int, Field(ge=1)] = 4_000  # a file's own rate outside these is refused
    max_sample_rate: Annotated[int, Field(ge=1)] = 192_000
    max_channels: Annotated[int, Field(ge=1, le=64)] = 2  # mono or stereo; more is refused (audio_channels)
    silence_dbfs: Annotated[float, Field(ge=-200.0, le=0.0)] = -60.0  # RMS below this is silence (audio_silent)
    max_clipped: Probability = 0.01  # share of samples at full scale above which a clip is clipped (audio_clipped)

    @model_validator(mode="after")
    def _limits_in_order(self) -> AudioParams:
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"audio.min_seconds ({self.min_seconds}) is above audio.max_seconds ({self.max_seconds})")
        if self.max_seconds > self.max_file_seconds:
            raise ValueError(f"audio.max_seconds ({self.max_seconds}) is above audio.max_file_seconds "
                             f"({self.max_file_seconds})")
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError(f"audio.min_sample_rate ({self.min_sample_rate}) is above audio.max_sample_rate "
                             f"({self.max_sample_rate})")
        return self
