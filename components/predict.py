"""What every trained classifier offers, whatever its modality (components/modalities load them): probabilities
for a batch of inputs, turned into labels and top-k lists the same way for evaluate, serving and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from components.io import META_FILE


@dataclass(frozen=True)
class Prediction:
    """One item's top label and the probability of every label."""

    label: str
    probability: float
    probabilities: dict[str, float]


class Predictor(Protocol):
    """A trained model folder loaded for inference (text's Classifier, image's ImagePredictor, ...).

    One whose forward pass runs without Python's interpreter lock says so with a class attribute
    `overlapping_passes = True`: the service then runs two passes at once on a CPU (serve.forward_passes).
    """

    labels: list[str]
    device: str

    def predict_proba(self, items: list[Any], batch_size: int = 32) -> np.ndarray:
        """Probabilities of shape (len(items), len(labels)), rows in input order, each summing to 1."""

    def predict(self, items: list[Any], batch_size: int = 32) -> list[Prediction]:
        """The top label, its probability and every label's probability, for each item."""


class Calibrated:
    """A predictor whose probabilities go through the temperature fitted at training (components/calibration.py);
    everything else (labels, device, the model) is the wrapped predictor's."""

    def __init__(self, inner: Predictor, temperature: float = 1.0) -> None:
        self.inner = inner
        self.temperature = float(temperature)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_proba(self, items: list[Any], batch_size: int = 32) -> np.ndarray:
        """The wrapped predictor's probabilities, temperature-scaled."""
        from components.calibration import temperature_scale

        return temperature_scale(self.inner.predict_proba(items, batch_size), self.temperature)

    def predict(self, items: list[Any], batch_size: int = 32) -> list[Prediction]:
        """The top label, its probability and every label's probability, for each item."""
        return to_predictions(self.predict_proba(items, batch_size), self.inner.labels)


def pick_device(requested: str = "auto") -> str:
    """'cuda' when asked for or available under 'auto', else 'cpu'."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; set it to auto or cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def ranked_labels(row: np.ndarray, labels: list[str], k: int) -> list[tuple[str, float]]:
    """The k most likely labels of one probability row with their probabilities, most likely first (ties: label
    order); all of them when k is larger than the label count."""
    order = np.argsort(-row, kind="stable")[:k]
    return [(labels[i], float(row[i])) for i in order]


def to_predictions(probabilities: np.ndarray, labels: list[str]) -> list[Prediction]:
    """Turn a probability matrix into Predictions (top label first in ties by label order)."""
    predictions = []
    for row in probabilities:
        label, probability = ranked_labels(row, labels, 1)[0]
        predictions.append(
            Prediction(
                label=label,
                probability=probability,
                probabilities={name: float(p) for name, p in zip(labels, row, strict=True)},
            )
        )
    return predictions


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The metadata the train stage saves next to the weights (labels, max_length, base model, params)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a model folder written by the train stage")
    return json.loads(path.read_text(encoding="utf-8"))
