"""What one audio file holds, or why it cannot be used.

`inspect_audio` decodes the whole file with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3) and measures
what the checks need: sample rate, channels, duration, RMS level in dBFS, the share of clipped samples, and a hash of
the decoded samples (two files holding the same sound are the same item, whatever their encoding). A file it cannot
use gets a `problem` that names what is wrong. libsndfile forgives two faults silently, so they are checked here:
a WAV header that declares more audio than the file holds (a truncated file, or a header claiming a day of sound)
and a file whose name says one format while its bytes are another (an MP3 named .wav).
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass, replace

import numpy as np

from components.modalities.audio.settings import AudioParams

# soundfile's format names -> the file suffixes that may hold them
FORMATS = {"WAV": (".wav", ".wave"), "WAVEX": (".wav", ".wave"), "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"),
           "MP3": (".mp3",)}
FULL_SCALE = 0.999  # a sample at or above this magnitude is clipped (16-bit full scale is 32767/32768)


@dataclass(frozen=True)
class AudioInfo:
    """What one audio file holds; `problem` says why it cannot be used (None: it decoded completely)."""

    sha256: str  # of the decoded samples (float32, interleaved) with rate and channels; "" when undecodable
    size_bytes: int
    format: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    seconds: float | None = None
    rms_dbfs: float | None = None
    clipped: float | None = None  # share of samples at full scale
    problem: str | None = None


def inspect_audio(data: bytes, suffix: str = "", limits: AudioParams | None = None) -> AudioInfo:
    """Decode `data` completely and describe it.

    Args:
        data: the file's bytes.
        suffix: the file's suffix (".wav"); a format its bytes do not match is a problem. "" skips that check.
        limits: the audio block (max_file_seconds: a file declaring more is refused undecoded).

    Returns:
        Its content hash, format, rate, channels, length, level and clipping, or the problem that stops its use.
    """
    import soundfile

    limits = limits or AudioParams()
    size = len(data)
    if not data:
        return AudioInfo("", 0, problem="the file is empty")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            found = AudioInfo("", size, audio.format, audio.samplerate, audio.channels,
                              audio.frames / audio.samplerate if audio.samplerate else None)
            problem = (_format_problem(audio.format, suffix) or _rate_problem(audio.samplerate, limits)
                       or _header_problem(data, audio.format, limits))
            if problem is None and found.seconds is not None and found.seconds > limits.max_file_seconds:
                problem = (f"is {found.seconds:,.0f} s long, over audio.max_file_seconds "
                           f"({limits.max_file_seconds:,.0f} s); cut it into clips")
            if problem is not None:
                return replace(found, problem=problem)
            samples = audio.read(dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as exc:
        return AudioInfo("", size, problem=f"is not audio soundfile can read ({_reason(exc)}); use WAV, FLAC, OGG "
                                           "or MP3")
    except (RuntimeError, ValueError, struct.error) as exc:
        return AudioInfo("", size, problem=f"could not be decoded completely ({exc}); a truncated or corrupt file?")
    if samples.shape[0] == 0:
        return replace(found, problem="holds no audio (0 samples); record or export it again")
    return replace(found, sha256=samples_hash(samples, found.sample_rate), seconds=samples.shape[0] / found.sample_rate,
                   rms_dbfs=rms_dbfs(samples), clipped=float(np.mean(np.abs(samples) >= FULL_SCALE)))


def samples_hash(samples: np.ndarray, sample_rate: int) -> str:
    """SHA-256 of the decoded samples with their rate and channel count: the same sound, whatever the file."""
    digest = hashlib.sha256(f"{sample_rate}:{samples.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(samples, dtype="<f4").tobytes())
    return digest.hexdigest()


def rms_dbfs(samples: np.ndarray) -> float:
    """The RMS level in dB relative to full scale (-inf for digital silence, floored at -200)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return round(max(20.0 * np.log10(rms), -200.0) if rms > 0 else -200.0, 2)


def _format_problem(format_: str, suffix: str) -> str | None:
    if format_ not in FORMATS:
        return f"is {format_} audio; use WAV, FLAC, OGG or MP3"
    suffix = suffix.lower()
    if suffix and suffix not in FORMATS[format_]:
        return f"is {format_} data named {suffix}; rename it to {FORMATS[format_][0]} (or convert it)"
    return None


def _rate_problem(rate: int, limits: AudioParams) -> str | None:
    if limits.min_sample_rate <= rate <= limits.max_sample_rate:
        return None
    return (f"is sampled at {rate:,} Hz; the rate must be {limits.min_sample_rate:,} to {limits.max_sample_rate:,} Hz "
            "(audio.min_sample_rate, audio.max_sample_rate): resample it")


def _header_problem(data: bytes, format_: str, limits: AudioParams) -> str | None:
    """A WAV whose data chunk declares more bytes than follow it (libsndfile reads what is there and says nothing)."""
    if format_ not in ("WAV", "WAVEX") or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, None
    while offset + 8 <= len(data):
        chunk, length = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"fmt " and length >= 12:
            byte_rate = struct.unpack_from("<I", data, offset + 12)[0]
        if chunk == b"data":
            held = len(data) - offset - 8
            if length <= held:
                return None
            declared = f" ({length / byte_rate:,.0f} s)" if byte_rate else ""
            if byte_rate and length / byte_rate > limits.max_file_seconds:
                return (f"declares {length:,} bytes of audio{declared}, over audio.max_file_seconds "
                        f"({limits.max_file_seconds:,.0f} s), but holds {held:,}: a wrong or forged header")
            return (f"is truncated: its header declares {length:,} bytes of audio{declared} and {held:,} follow; "
                    "copy or export the file again")
        offset += 8 + length + (length & 1)
    return None


def _reason(exc: Exception) -> str:
    """libsndfile's own words, without the file object it was given."""
    return str(exc).split(": ", 1)[-1].strip().rstrip(".")


def limit_problem(info: AudioInfo, limits: AudioParams) -> str | None:
    """Why a decoded clip breaks the audio block's limits, or None; validate's GX suite checks the same for training
    data (audio_channels, audio_too_short, audio_too_long, audio_silent, audio_clipped). A sample rate outside
    the limits is a decoding problem (inspect_audio): such a file is never resampled."""
    if info.channels > limits.max_channels:
        return f"has {info.channels} channels; at most {limits.max_channels} (audio.max_channels): mix it down"
    if not limits.min_seconds <= info.seconds <= limits.max_seconds:
        return (f"is {info.seconds:.2f} s long; a clip must be {limits.min_seconds:g} to {limits.max_seconds:g} s "
                "(audio.min_seconds, audio.max_seconds)")
    if info.rms_dbfs < limits.silence_dbfs:
        return f"is silent (RMS {info.rms_dbfs:.1f} dBFS, under audio.silence_dbfs {limits.silence_dbfs:g})"
    if info.clipped > limits.max_clipped:
        return (f"is clipped ({info.clipped:.1%} of samples at full scale, over audio.max_clipped "
                f"{limits.max_clipped:.1%}); record it at a lower level")
    return None
