"""Load a trained classifier folder and predict label probabilities; shared by evaluate, serving and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.text import normalise

META_FILE = "tuneline.json"


@dataclass(frozen=True)
class Prediction:
    """One text's top label and the probability of every label."""

    label: str
    probability: float
    probabilities: dict[str, float]


def pick_device(requested: str = "auto") -> str:
    """'cuda' when asked for or available under 'auto', else 'cpu'."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; set it to auto or cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class Classifier:
    """A fine-tuned sequence classifier with its tokenizer and label list, ready for batched inference."""

    def __init__(self, model: Any, tokenizer: Any, labels: list[str], max_length: int, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.device = device

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto") -> Classifier:
        """Load a folder written by the train stage (weights as safetensors, tokenizer, tuneline.json)."""
        import torch
        from transformers import AutoTokenizer

        from components.model import load_trained

        model_dir = Path(model_dir)
        meta = read_meta(model_dir)
        device = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = load_trained(model_dir, meta.get("model", {}))
        if device == "cuda" and torch.cuda.is_bf16_supported():
            model = model.to(torch.bfloat16)
        model.to(device).eval()
        return cls(model, tokenizer, list(meta["labels"]), int(meta["max_length"]), device)

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Probabilities of shape (len(texts), len(labels)), rows in input order, each summing to 1.

        Texts are normalised as in training, then run in batches of similar length so little compute goes to
        padding.
        """
        import torch

        cleaned = [normalise(text) for text in texts]
        order = np.argsort([len(text) for text in cleaned], kind="stable")
        out = np.zeros((len(cleaned), len(self.labels)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                batch = self.tokenizer(
                    [cleaned[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits.float()
                out[index] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        """The top label, its probability and every label's probability, for each text."""
        return to_predictions(self.predict_proba(texts, batch_size), self.labels)


def to_predictions(probabilities: np.ndarray, labels: list[str]) -> list[Prediction]:
    """Turn a probability matrix into Predictions (top label first in ties by label order)."""
    predictions = []
    for row in probabilities:
        top = int(np.argmax(row))
        predictions.append(
            Prediction(
                label=labels[top],
                probability=float(row[top]),
                probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
            )
        )
    return predictions


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The metadata the train stage saves next to the weights (labels, max_length, base model, params)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a model folder written by the train stage")
    return json.loads(path.read_text(encoding="utf-8"))
