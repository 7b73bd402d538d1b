"""Load a trained classifier folder and predict label probabilities; shared by evaluate, serving and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.text import normalise

META_FILE = "tuneline.json"
# Padded tokens per forward pass on the CPU. Measured on 2 cores (MiniLM, random batches of 32 review snippets):
# 74 texts/s padded to each batch's longest, 169 texts/s cut into batches of <= 512 tokens; a GPU gets no cap.
CPU_BATCH_TOKENS = 512


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
        if meta.get("modality") == "image":  # same interface, images in (components/vision.py)
            from components.vision import ImagePredictor

            return ImagePredictor.load(model_dir, device)
        device = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = load_trained(model_dir, meta.get("model", {}))
        if device == "cuda" and torch.cuda.is_bf16_supported():
            model = model.to(torch.bfloat16)
        model.to(device).eval()
        return cls(model, tokenizer, list(meta["labels"]), int(meta["max_length"]), device)

    def predict_proba(self, texts: list[str], batch_size: int = 32, max_batch_tokens: int | None = None) -> np.ndarray:
        """Probabilities of shape (len(texts), len(labels)), rows in input order, each summing to 1.

        Texts are normalised as in training and tokenised once; then they run shortest first, in batches of at most
        `batch_size` texts whose padded size (texts x longest) stays within `max_batch_tokens`, so little compute
        goes to padding. None: CPU_BATCH_TOKENS on the CPU, no token cap on a GPU (where wide batches are cheap).
        """
        import torch

        if max_batch_tokens is None:
            max_batch_tokens = CPU_BATCH_TOKENS if self.device == "cpu" else batch_size * self.max_length
        encoded = self.tokenizer([normalise(text) for text in texts], truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        with torch.inference_mode():
            for index in token_batches(lengths, batch_size, max_batch_tokens):
                batch = self.tokenizer.pad({key: [values[i] for i in index] for key, values in encoded.items()},
                                           return_tensors="pt").to(self.device)
                logits = self.model(**batch).logits.float()
                out[index] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        """The top label, its probability and every label's probability, for each text."""
        return to_predictions(self.predict_proba(texts, batch_size), self.labels)


def token_batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices into `lengths`, shortest first, cut into batches of at most `batch_size` items whose padded size
    (items x the longest) is at most `max_batch_tokens`; an item longer than the budget gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) == batch_size or (len(current) + 1) * lengths[i] > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


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
