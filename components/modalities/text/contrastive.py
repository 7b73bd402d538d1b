"""train.method contrastive for texts: tune the encoder on sentence pairs drawn from the train labels before the head
trains, as SetFit does (Tunstall et al., 2022), with sentence-transformers' own trainer. The loss (under
train.contrastive_loss auto, components/recipe.py) is CoSENT for two labels (Su, 2022: within each batch, every
same-label pair's cosine is ranked above every other-label pair's) and SetFit's CosineSimilarityLoss for three or
more: each led on the built-in corpus's task of that kind (README, Few labels).

Each train text gets `contrastive_pairs` partners of its own label (target similarity 1) and as many of another
label (target 0): under train.contrastive_pairs auto 20 rounds up to 64 texts per class, fewer above, so that the pairs
stay as many as at 64. The encoder learns to put a label's texts together, which a few examples per class teach better
than cross-entropy through a fresh head. Under train.contrastive_epochs auto the trainer makes one pass over the pairs
up to 32 train texts per class and two above. The tuned weights are copied into the classifier's own encoder, so the
model stays one safetensors folder that evaluate, the gate and the service load as before.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

from components import recipe
from components.config import TrainParams
from components.engine import autocast_flags
from components.modalities import Built
from components.modalities.text.pooling import META_KEY as POOLING_KEY
from components.modalities.text.pooling import NORMALISED_MEAN, reads_pooler
from components.modalities.text.pooling import apply as apply_pooling
from components.stage import StageError

log = logging.getLogger(__name__)


def sentence_pairs(frame: pd.DataFrame, per_text: int, seed: int) -> pd.DataFrame:
    """Per text and round (per_text rounds), one partner of the same label (score 1.0) and one of another (0.0),
    drawn by seed: sentence1, sentence2, score. A label with one text pairs it with itself."""
    rng = np.random.default_rng(seed)
    texts = frame["text"].astype(str).to_numpy()
    labels = frame["label"].astype(str).to_numpy()
    if len(set(labels)) < 2:
        raise StageError("train.method contrastive needs train rows of at least two labels to make pairs; "
                         f"the train split has only {sorted(set(labels))}")
    by_label = {label: np.flatnonzero(labels == label) for label in sorted(set(labels))}
    others = {label: np.flatnonzero(labels != label) for label in by_label}
    first, second, score = [], [], []
    for _ in range(per_text):
        for index, label in enumerate(labels):
            same = by_label[label]
            partner = same[rng.integers(len(same))] if len(same) == 1 else \
                rng.choice(same[same != index])
            first += [texts[index], texts[index]]
            second += [texts[partner], texts[rng.choice(others[label])]]
            score += [1.0, 0.0]
    return pd.DataFrame({"sentence1": first, "sentence2": second, "score": score})


def encoder_of(source: str, max_tokens: int, device: str) -> Any:
    """The checkpoint as a sentence-transformers model: its own modules (pooling, normalisation) where it declares
    them, else the transformer with mean pooling (sentence-transformers' default)."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(source, device=device, local_files_only=True)
    encoder.max_seq_length = max_tokens
    return encoder


def tune(built: Built, train: pd.DataFrame, params: TrainParams, max_tokens: int, truncation: str,
         device: str) -> dict[str, float]:
    """Tune built.model's encoder contrastively on pairs from `train`'s original rows (augmented copies would pair a
    text with its own rewording), in place; then the head reads the unit-length mean of the tokens, as the loss
    compared them, and a linear head starts from a logistic regression fitted on those vectors (SetFit's head).
    Returns the figures the train summary gets."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, CosineSimilarityLoss

    if not reads_pooler(built.model):
        raise StageError(f"train.method contrastive makes the head read the mean of the tokens, which "
                         f"{type(built.model).__name__} cannot (its head reads the first token itself); set "
                         "train.method to finetune for this checkpoint")
    # the train stage passes these keys resolved; a direct caller with `auto` gets the same rule from the same counts
    labels = sorted(train["label"].astype(str).unique())
    loss = CoSENTLoss if recipe.contrastive_loss(params, len(labels)) == "cosent" else CosineSimilarityLoss
    rows_per_class = recipe.original_rows_per_class(train, labels)
    passes = recipe.contrastive_epochs(params, rows_per_class)
    started = time.perf_counter()
    rows = train[~train["augmented"].astype(bool)] if "augmented" in train.columns else train
    pairs = sentence_pairs(rows, recipe.contrastive_pairs(params, rows_per_class), params.seed)
    encoder = encoder_of(built.source, max_tokens, device)
    with tempfile.TemporaryDirectory(prefix="tuneline-contrastive-") as output:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=output, num_train_epochs=passes,
            per_device_train_batch_size=params.batch_size, learning_rate=params.contrastive_learning_rate,
            warmup_steps=params.warmup_ratio, weight_decay=params.weight_decay, seed=params.seed,
            use_cpu=device == "cpu", save_strategy="no", report_to=[], disable_tqdm=True, logging_strategy="no",
            **autocast_flags(params, device))
        trainer = SentenceTransformerTrainer(model=encoder, args=arguments, train_dataset=Dataset.from_pandas(pairs),
                                             loss=loss(encoder))
        steps = trainer.train().global_step
    copy_encoder(encoder[0].auto_model, built.model.base_model)
    del encoder, trainer
    apply_pooling(built.model, NORMALISED_MEAN)
    built.meta[POOLING_KEY] = NORMALISED_MEAN
    fitted = fit_head(built, rows, max_tokens, truncation, params.batch_size * 4, device)
    seconds = time.perf_counter() - started
    log.info("train.method contrastive: %d pairs from %d train texts tuned the encoder in %d steps (%s), %g "
             "pass%s over the pairs; %s (%.1f s in all)", len(pairs), len(rows), steps, loss.__name__, passes,
             "" if passes == 1 else "es",
             "a logistic regression on its vectors is the head's start" if fitted else "the head starts as built",
             seconds)
    return {"contrastive_pairs": len(pairs), "contrastive_steps": steps, "contrastive_seconds": round(seconds, 3)}


HEAD_C = 1.0  # the logistic regression's inverse regularisation: scikit-learn's default, which SetFit keeps


def fit_head(built: Built, rows: pd.DataFrame, max_tokens: int, truncation: str, batch_size: int,
             device: str) -> bool:
    """A linear head set to a logistic regression (scikit-learn, L-BFGS) fitted on the vectors the head receives for
    `rows`: the weights a cross-entropy-trained head converges to, reached in one solve. False (head untouched) for an
    MLP head or when a label has no row."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from components.modalities.text.features import head_inputs
    from components.modalities.text.model import EncodedTexts
    from components.model import head_attribute

    head = getattr(built.model, head_attribute(built.model))
    labels = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    if not isinstance(head, torch.nn.Linear) or set(rows["label"].astype(str)) != set(labels):
        return False
    tokenizer = built.extra["tokenizer"]
    encoded = EncodedTexts(tokenizer, rows, {label: i for i, label in enumerate(labels)}, max_tokens,
                           truncation=truncation)
    frozen = [(p, p.requires_grad) for p in built.model.parameters()]
    for p, _ in frozen:  # head_inputs checks that the head's input alone gives the model's logits, nothing trains
        p.requires_grad_(p is head.weight or p is head.bias)
    try:
        vectors = head_inputs(built.model.to(device), encoded.items, tokenizer.pad_token_id or 0, batch_size, device)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    target = [item["labels"] for item in encoded.items]
    solved = LogisticRegression(C=HEAD_C, max_iter=1000).fit(vectors.numpy(), target)
    weight = torch.as_tensor(solved.coef_, dtype=torch.float32)
    bias = torch.as_tensor(solved.intercept_, dtype=torch.float32)
    if len(labels) == 2:  # one logit difference w.x + b: the softmax of (-(w.x + b)/2, (w.x + b)/2) is the same
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))
    return True


def copy_encoder(tuned: Any, target: Any) -> None:
    """The tuned encoder's weights into the classifier's base model (the same architecture); every weight of the
    target's encoder must be matched (its pooler, which the mean-pooled head does not read, may stay as it was)."""
    import torch

    state = tuned.state_dict()
    own = target.state_dict()
    missing = sorted(name for name in own if name not in state and not name.startswith("pooler."))
    mismatched = sorted(name for name in own if name in state and state[name].shape != own[name].shape)
    if missing or mismatched:
        raise StageError(f"train.method contrastive: the tuned encoder does not fit the classifier's "
                         f"({type(target).__name__}): missing {missing[:5]}, other shapes {mismatched[:5]}; "
                         "set train.method to finetune for this checkpoint")
    with torch.no_grad():
        for name, tensor in own.items():
            if name in state:
                tensor.copy_(state[name].to(tensor.device, tensor.dtype))
