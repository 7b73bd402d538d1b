"""The frozen-feature cache: when only the head trains, run the frozen backbone once per data version, keep what it
feeds the head on disk, and train the head on that.

A head-only epoch then costs a few matrix products instead of a forward and backward pass through the backbone.
Each modality computes its vectors (components/modalities: `head` and `features`); the key of a cache entry
hashes the frozen weights and the inputs, so another model, input size or data version gets its own entry and a
stale one is never read.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.modalities import Built, Modality

log = logging.getLogger(__name__)


class NotCacheable(Exception):
    """This model's trainable part is more than a head fed by one vector per item; train it the ordinary way."""


def add_weights(digest: Any, module: Any, skip: str | None = None) -> None:
    """Hash every tensor of module's state (weights and buffers) by name, but those whose name starts with skip."""
    import torch

    for name, tensor in sorted(module.state_dict().items()):
        if skip is None or not name.startswith(skip):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def entry(cache_dir: str | Path | None, digest: Any) -> Path | None:
    """The cache file for a finished digest (None = no cache)."""
    return Path(cache_dir) / f"{digest.hexdigest()[:24]}.safetensors" if cache_dir is not None else None


def read_or_compute(path: Path | None, rows: int, compute: Any) -> tuple[Any, bool]:
    """The features cached at path (when it holds `rows` rows), or compute() written there; (features, was_cached).
    path None = no cache."""
    from safetensors.torch import load_file, save_file

    if path is not None and path.is_file():
        features = load_file(str(path))["features"]
        if features.shape[0] == rows:
            return features, True
    features = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"features": features.contiguous()}, str(partial))
        partial.replace(path)  # atomic: a run killed mid-write leaves no half-written entry
    return features, False


def head_only(dropout: Any, head: Any) -> Any:
    """dropout -> head as a module Trainer can train on cached features. They are the model's own modules (the same
    objects), so training it updates the full model."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class HeadOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dropout = dropout
            self.classifier = head  # the name model.head_attribute looks for (train.head_learning_rate finds it)

        def forward(self, features: Any, labels: Any = None) -> Any:
            logits = self.classifier(self.dropout(features))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return HeadOnly()


class FeatureRows:
    """A torch-style dataset of cached feature vectors and label ids."""

    def __init__(self, features: Any, labels: list[int]) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"features": self.features[index], "labels": self.labels[index]}


def labels_of(dataset: Any) -> list[int]:
    """The label id of every item of a training dataset."""
    return [int(dataset[index]["labels"]) for index in range(len(dataset))]


def on_cached_features(modality: Modality, built: Built, train_set: Any, val_set: Any | None, batch_size: int,
                       device: str, cache_dir: Path | None) -> tuple[Any, Any, Any | None, float]:
    """model.freeze_backbone with train.feature_cache: the frozen backbone runs once per data version (its vectors
    kept in cache_dir), and Trainer trains the head alone on them.

    Returns:
        (the head as a trainable module, train rows, val rows or None, seconds spent on the features)

    Raises:
        NotCacheable: the modality's model has no head fed by one frozen vector per item.
    """
    started = time.perf_counter()
    dropout, head = modality.head(built)
    built.model.to(device)
    train_features, hit = modality.features(built, train_set, batch_size, device, cache_dir)
    train_data = FeatureRows(train_features, labels_of(train_set))
    val_data = None
    if val_set is not None:
        val_features, _ = modality.features(built, val_set, batch_size, device, cache_dir)
        val_data = FeatureRows(val_features, labels_of(val_set))
    seconds = time.perf_counter() - started
    log.info("feature cache: %s frozen-backbone features for %d train %s in %.1f s; the head trains on them",
             "read" if hit else "computed", len(train_set), modality.items, seconds)
    return head_only(dropout, head), train_data, val_data, seconds
