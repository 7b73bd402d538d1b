"""Choosing the pretrained model: a quick linear probe of each of `model.candidates`, ranked on validation macro-F1.

Each candidate's frozen backbone turns the train and val texts into the vectors its head would read with
text.pooling (kept in the frozen-feature cache, so a second ranking on the same data costs no encoder passes): the
mean of the last hidden states where the pooling is mean, else the head's own input (the mean too when that cannot
be captured, e.g. DistilBERT's extra layer before the head). A logistic regression on the train vectors is scored on
val. The best
candidate is the one the train stage then fine-tunes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ModelParams, TrainParams
from components.engine import CandidateScore
from components.modalities.text.model import EncodedTexts, build_classifier, resolve_model
from components.stage import StageError

log = logging.getLogger(__name__)


def probe_score(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                seed: int) -> tuple[float, float]:
    """(macro-F1, accuracy) on val of a standardised logistic regression fitted on the train vectors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, train_y)
    predicted = probe.predict(val_x)
    return (float(f1_score(val_y, predicted, average="macro", zero_division=0)),
            float(accuracy_score(val_y, predicted)))


def rank_candidates(model_params: ModelParams, train_params: TrainParams, train: pd.DataFrame, val: pd.DataFrame,
                    labels: list[str], device: str, cache_dir: Path | None, max_tokens: int,
                    pooling: str = "auto", truncation: str = "head") -> list[CandidateScore]:
    """Every candidate's linear-probe score, best first (ties keep the listed order).

    Raises:
        StageError: a candidate is not a local checkpoint, or there is no validation split to score on.
    """
    from transformers import AutoTokenizer, set_seed

    from components.features import NotCacheable
    from components.modalities.text.features import cached_vectors
    from components.modalities.text.model import pooling_choice

    if not len(val):
        raise StageError("model.candidates are ranked on the validation split, which is empty; set "
                         "data.val_fraction above 0 or list a single model in model.name_or_path")
    label_ids = {label: index for index, label in enumerate(labels)}
    train_y = train["label"].map(label_ids).to_numpy()
    val_y = val["label"].map(label_ids).to_numpy()
    scores = []
    for name in model_params.candidates:
        params = model_params.model_copy(update={"name_or_path": name, "candidates": []})
        source, _ = resolve_model(params)
        set_seed(train_params.seed)  # a candidate without pooler weights gets the same random pooler every time
        tokenizer = AutoTokenizer.from_pretrained(source)
        model: Any = build_classifier(source, labels, params)
        kind = "mean" if pooling_choice(pooling, source, model) == "mean" else "head"
        for parameter in model.base_model.parameters():
            parameter.requires_grad = False
        model.to(device)
        pad = tokenizer.pad_token_id or 0
        vectors = []
        for frame in (train, val):
            items = EncodedTexts(tokenizer, frame, label_ids, max_tokens, truncation=truncation).items
            try:
                features, _ = cached_vectors(model, items, pad, train_params.batch_size * 4, device, cache_dir, kind)
            except NotCacheable as reason:
                log.info("candidate %s: its head's input cannot be captured (%s); ranking on mean-pooled vectors",
                         name, reason)
                kind = "mean"
                features, _ = cached_vectors(model, items, pad, train_params.batch_size * 4, device, cache_dir, kind)
            vectors.append(features.numpy())
        f1, accuracy = probe_score(vectors[0], train_y, vectors[1], val_y, train_params.seed)
        log.info("candidate %s: linear-probe val macro-F1 %.4f, accuracy %.4f", name, f1, accuracy)
        scores.append(CandidateScore(name=name, val_macro_f1=round(f1, 6), val_accuracy=round(accuracy, 6),
                                     feature_size=int(vectors[0].shape[1])))
        del model
    return sorted(scores, key=lambda score: -score.val_macro_f1)
