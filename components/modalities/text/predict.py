"""Text inference: a trained text classifier folder with its tokenizer, texts normalised as in training, tokenised
once and run shortest first in batches cut so that little compute goes to padding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.modalities.text.model import tokenize
from components.modalities.text.normalise import normalise
from components.predict import Prediction, pick_device, read_meta, to_predictions

# Padded tokens per forward pass on the CPU: wider passes waste the two cores on padding; a GPU gets no cap.
CPU_BATCH_TOKENS = 512
# What one more forward pass costs on the CPU, in padded tokens (a pass costs about as much as 100 padded tokens on
# these cores): a few more tokens of padding can be cheaper than another pass. bench/README.md has the measurements.
CPU_FORWARD_TOKENS = 100.0


class Classifier:
    """A fine-tuned sequence classifier with its tokenizer and label list, ready for batched inference."""

    def __init__(self, model: Any, tokenizer: Any, labels: list[str], max_length: int, device: str,
                 truncation: str = "head") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.device = device
        self.truncation = truncation

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto") -> Classifier:
        """Load a folder written by the train stage (weights as safetensors, tokenizer, tuneline.json)."""
        import torch
        from transformers import AutoTokenizer

        from components.modalities.text.model import load

        model_dir = Path(model_dir)
        meta = read_meta(model_dir)
        device = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = load(model_dir, meta)
        if device == "cuda" and torch.cuda.is_bf16_supported():
            model = model.to(torch.bfloat16)
        model.to(device).eval()
        return cls(model, tokenizer, list(meta["labels"]), int(meta["max_length"]), device,
                   meta.get("truncation", "head"))

    def predict_proba(self, texts: list[str], batch_size: int = 32, max_batch_tokens: int | None = None) -> np.ndarray:
        """Probabilities of shape (len(texts), len(labels)), rows in input order, each summing to 1.

        Texts are normalised as in training and tokenised once; then they run shortest first, in batches of at most
        `batch_size` texts whose padded size (texts x longest) stays within `max_batch_tokens`, so little compute
        goes to padding. None: CPU_BATCH_TOKENS on the CPU, no token cap on a GPU (where wide batches are cheap).
        On the CPU the cuts weigh padding against the cost of one more pass (CPU_FORWARD_TOKENS).
        """
        import torch

        forward_tokens = CPU_FORWARD_TOKENS if self.device == "cpu" else 0.0
        if max_batch_tokens is None:
            max_batch_tokens = CPU_BATCH_TOKENS if self.device == "cpu" else batch_size * self.max_length
        encoded = tokenize(self.tokenizer, [normalise(text) for text in texts], self.max_length, self.truncation)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        with torch.inference_mode():
            for index in token_batches(lengths, batch_size, max_batch_tokens, forward_tokens):
                batch = self.tokenizer.pad({key: [values[i] for i in index] for key, values in encoded.items()},
                                           return_tensors="pt")
                out[index] = torch.softmax(self.logits(batch), dim=-1).cpu().numpy()
        return out

    def logits(self, batch: Any) -> Any:
        """One padded batch (the tokenizer's tensors, on the CPU) through the network: float logits."""
        return self.model(**batch.to(self.device)).logits.float()

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        """The top label, its probability and every label's probability, for each text."""
        return to_predictions(self.predict_proba(texts, batch_size), self.labels)


def token_batches(lengths: list[int], batch_size: int, max_batch_tokens: int,
                  forward_tokens: float = 0.0) -> list[list[int]]:
    """Indices into `lengths`, shortest first, cut into batches of at most `batch_size` items whose padded size
    (items x the longest) is at most `max_batch_tokens`; an item longer than the budget gets a batch of its own.

    forward_tokens 0: each batch filled up to those limits. Above 0: the cuts that make the least total of padded
    tokens plus `forward_tokens` per batch (the cost of one more forward pass, in tokens), found exactly by dynamic
    programming over the sorted lengths: a long text no longer pads a batch of short ones when a pass of its own is
    cheaper.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if forward_tokens > 0:
        return _cheapest_cuts([lengths[i] for i in order], order, batch_size, max_batch_tokens, forward_tokens)
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


def _cheapest_cuts(sorted_lengths: list[int], order: list[int], batch_size: int, max_batch_tokens: int,
                   forward_tokens: float) -> list[list[int]]:
    """token_batches' exact cuts: best[end] is the least cost of the first `end` sorted items; a batch ending at
    `end` is padded to sorted_lengths[end - 1]."""
    best = [0.0] + [float("inf")] * len(order)
    start_of = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = sorted_lengths[end - 1]
        for start in range(end - 1, max(end - batch_size, 0) - 1, -1):
            rows = end - start
            if rows > 1 and rows * longest > max_batch_tokens:
                break  # more rows only add padded tokens
            cost = best[start] + forward_tokens + rows * longest
            if cost < best[end]:
                best[end], start_of[end] = cost, start
    batches, end = [], len(order)
    while end > 0:
        batches.append(order[start_of[end]:end])
        end = start_of[end]
    return batches[::-1]
