"""The `audio` block of params.yaml: where the audio paths are, what an audio file may be, and what the model
hears (sample rate and clip length)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from components.config import Block, Probability

Seconds = Annotated[float, Field(gt=0.0, le=86_400.0)]
Range = Annotated[list[float], Field(min_length=2, max_length=2)]


class AudioAugmentParams(Block):
    """Perturbations of train clips, each drawn with its probability (audiomentations)."""

    p_shift: Probability = 0.5  # roll the clip in time by up to max_shift of its length
    max_shift: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    p_gain: Probability = 0.5  # louder or softer, gain_db
    gain_db: Range = [-6.0, 6.0]
    p_speed: Probability = 0.3  # faster or slower, pitch kept (speed_rate)
    speed_rate: Range = [0.9, 1.1]
    p_pitch: Probability = 0.3  # higher or lower, length kept (pitch_semitones)
    pitch_semitones: Range = [-2.0, 2.0]
    p_noise: Probability = 0.3  # white noise at snr_db signal-to-noise
    snr_db: Range = [15.0, 35.0]
    p_time_mask: Probability = 0.3  # SpecAugment's time mask: up to max_time_mask of the clip silenced
    max_time_mask: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    p_frequency_mask: Probability = 0.3  # its frequency mask, on the waveform: a band-stop filter at a random band

    @model_validator(mode="after")
    def _ranges_in_order(self) -> AudioAugmentParams:
        for name in ("gain_db", "speed_rate", "pitch_semitones", "snr_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"audio.augment.{name} [{low}, {high}] must be [lower, higher]")
        if self.speed_rate[0] <= 0:
            raise ValueError(f"audio.augment.speed_rate {self.speed_rate} must be above 0")
        return self


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
    augment: AudioAugmentParams = AudioAugmentParams()

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
