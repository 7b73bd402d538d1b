"""The second built-in speech backbone: Resemblyzer's GE2E speaker encoder (model.name_or_path: resemblyzer).

PyPI's `Resemblyzer` 0.1.4 (Apache-2.0, installed --no-deps) ships `pretrained.pt`: a 3-layer LSTM (40 mel bands in,
256 hidden) and a 256-wide projection with ReLU, L2-normalised: 1.4M parameters trained to tell speakers apart, so it
is cheap (a clip of 2 s costs a fraction of Whisper tiny's encoder) and strong where who is speaking, and how,
carries the label (speaker, accent, language by voice). It hears 16 kHz audio as librosa's power mel spectrogram
(25 ms windows, 10 ms hop, 40 bands, not logarithmic), one row per frame, which MelExtractor computes exactly as the
package's own `wav_to_mel_spectrogram` does; the package itself is not imported (its preprocessing imports
webrtcvad, which only the parity test installs): only its weights file is read.

The LSTM is kept as three one-layer LSTMs (identical arithmetic to one stacked LSTM without dropout), so
model.freeze_layers N freezes the bottom N and gradual unfreezing thaws them from the top as for any layered
backbone. The projection trains with the head unless model.freeze_backbone freezes the whole encoder, in which case
the head trains on the cached embeddings. A trained model folder holds model.safetensors and tuneline.json
(architecture resemblyzer).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812 - torch's own short name

from components.config import HeadParams, ModelParams
from components.stage import StageError

NAME = "resemblyzer"  # model.name_or_path, and tuneline.json's architecture
BASE_MODEL = "Resemblyzer GE2E speaker encoder (pip: Resemblyzer 0.1.4)"
SAMPLE_RATE = 16_000  # what its weights were trained on
N_FFT, HOP, MELS = 400, 160, 40  # 25 ms windows, 10 ms hop at 16 kHz; 40 bands
HIDDEN, LAYERS = 256, 3
WEIGHTS_FILE = "model.safetensors"


def weights_path() -> Path:
    """The pretrained.pt the pip package ships, found without importing the package."""
    spec = importlib.util.find_spec(NAME)
    if spec is None or not spec.submodule_search_locations:
        raise StageError("model.name_or_path is resemblyzer, but the pip package Resemblyzer is not installed; run "
                         "`make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise StageError(f"{path} is missing; reinstall the package: pip install --no-deps --force-reinstall "
                         "Resemblyzer==0.1.4")
    return path


def pretrained_state() -> dict[str, torch.Tensor]:
    """The package's encoder weights under SpeakerEncoder's names: the stacked LSTM's `lstm.*_l{i}` become
    `layers.{i}.*_l0`; its training-only similarity scale and bias are dropped."""
    checkpoint = torch.load(weights_path(), map_location="cpu", weights_only=True)
    state = {}
    for key, value in checkpoint["model_state"].items():
        if key.startswith("lstm."):
            name, layer = key[len("lstm."):].rsplit("_l", 1)
            state[f"layers.{layer}.{name}_l0"] = value
        elif key.startswith("linear."):
            state[key] = value
    return state


class SpeakerEncoder(nn.Module):
    """Mel frames (batch, frames, 40) in, a unit-length 256-wide embedding out: the last frame's hidden state of the
    top LSTM layer, projected, ReLU, L2-normalised (Resemblyzer's VoiceEncoder.forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.LSTM(MELS if i == 0 else HIDDEN, HIDDEN, 1, batch_first=True)
                                     for i in range(LAYERS)])
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        frames = input_features
        for lstm in self.layers:
            frames, _ = lstm(frames)
        embedding = F.relu(self.linear(frames[:, -1]))
        return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)


class ResemblyzerClassifier(nn.Module):
    """The speaker encoder with a new head (linear or MLP) for `num_labels` labels; the loss as Trainer wants it."""

    def __init__(self, num_labels: int, params: ModelParams) -> None:
        from components.model import mlp_head

        super().__init__()
        self.encoder = SpeakerEncoder()
        if params.pretrained:
            self.encoder.load_state_dict(pretrained_state(), strict=True)
        self.dropout = nn.Dropout(params.classifier_dropout)
        head: HeadParams = params.head
        self.classifier = (nn.Linear(HIDDEN, num_labels) if head.type == "linear"
                           else mlp_head(HIDDEN, num_labels, head))

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.classifier(self.dropout(self.encoder(input_features)))
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class MelExtractor:
    """Clips as Resemblyzer hears them: librosa's power mel spectrogram, frames as rows (wav_to_mel_spectrogram).
    Called as a transformers feature extractor is (AudioRows, AudioPredictor)."""

    model_input_names = ["input_features"]

    def __init__(self, sampling_rate: int = SAMPLE_RATE) -> None:
        self.sampling_rate = sampling_rate

    def mel(self, samples: np.ndarray) -> np.ndarray:
        import librosa

        return librosa.feature.melspectrogram(y=np.asarray(samples, dtype=np.float32), sr=self.sampling_rate,
                                              n_fft=N_FFT, hop_length=HOP, n_mels=MELS).astype(np.float32).T

    def __call__(self, clips: list[np.ndarray], sampling_rate: int, **_: Any) -> dict[str, torch.Tensor]:
        if sampling_rate != self.sampling_rate:
            raise ValueError(f"clips at {sampling_rate} Hz, but the extractor hears {self.sampling_rate} Hz")
        return {"input_features": torch.from_numpy(np.stack([self.mel(clip) for clip in clips]))}


def check_sample_rate(sample_rate: int) -> None:
    """Resemblyzer's weights hear 16 kHz; another audio.sample_rate is a configuration error."""
    if sample_rate != SAMPLE_RATE:
        raise StageError(f"model.name_or_path resemblyzer hears {SAMPLE_RATE} Hz audio, but audio.sample_rate is "
                         f"{sample_rate}; set audio.sample_rate to {SAMPLE_RATE}")


def freeze_encoder(model: ResemblyzerClassifier, params: ModelParams) -> None:
    """model.freeze_backbone (the whole encoder: the head trains alone, on cached embeddings) or freeze_layers N (the
    bottom N of the 3 LSTM layers); freeze_embeddings names a convolutional stem this encoder does not have."""
    encoder = model.encoder
    if params.freeze_embeddings:
        raise StageError("model.freeze_embeddings freezes a convolutional feature encoder, and resemblyzer has none "
                         "(mel frames go straight into its LSTM); set it to false, and freeze its LSTM layers with "
                         "model.freeze_layers")
    if params.freeze_layers > LAYERS:
        raise StageError(f"model.freeze_layers = {params.freeze_layers}, but resemblyzer has {LAYERS} LSTM layers; "
                         f"freeze at most {LAYERS}, or the whole encoder with model.freeze_backbone")
    frozen = list(encoder.parameters()) if params.freeze_backbone else [
        p for layer in encoder.layers[:params.freeze_layers] for p in layer.parameters()]
    for parameter in frozen:
        parameter.requires_grad = False


def load(model_dir: str | Path, meta: dict[str, Any]) -> ResemblyzerClassifier:
    """A trained resemblyzer model folder (weights from its own file, not the package's)."""
    from safetensors.torch import load_file

    params = ModelParams.model_validate({**meta["model"], "pretrained": False})
    model = ResemblyzerClassifier(len(meta["labels"]), params)
    model.load_state_dict(load_file(str(Path(model_dir) / WEIGHTS_FILE)), strict=True)
    return model
