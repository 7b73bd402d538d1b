"""What the head reads of a text: the checkpoint's own pooler (BERT's first token through a dense layer) or the mean
of the last hidden states over the text's real tokens, which sentence-transformers checkpoints were trained to make
meaningful (all-MiniLM-L6-v2, the built-in model, is one: its pooler weights were never trained).

text.pooling: auto reads the checkpoint's sentence-transformers pooling config (modules.json, 1_Pooling/config.json)
and takes mean where it says mean tokens, cls otherwise. The choice is recorded in tuneline.json and applied when
the model is loaded, so training, the frozen-feature cache, candidate ranking, evaluate and serving read the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from components.stage import StageError

log = logging.getLogger(__name__)

POOLINGS = ("auto", "mean", "cls")
META_KEY = "pooling"
# The mean scaled to unit length: what sentence-transformers' cosine losses compare, and so what the head reads after
# train.method contrastive tuned the encoder with one (recorded in tuneline.json; not a text.pooling choice).
NORMALISED_MEAN = "mean_normalised"
MEANS = ("mean", NORMALISED_MEAN)


def checkpoint_pooling(source: str | Path) -> str | None:
    """The pooling a sentence-transformers checkpoint folder declares ("mean" or "cls"), or None when it declares
    none (a plain transformers checkpoint) or another (max, weighted mean, ...)."""
    folder = Path(source)
    config = folder / "1_Pooling" / "config.json"
    modules = folder / "modules.json"
    try:
        if modules.is_file():
            for module in json.loads(modules.read_text(encoding="utf-8")):
                if str(module.get("type", "")).endswith(".Pooling"):
                    config = folder / str(module.get("path", "")) / "config.json"
        if not config.is_file():
            return None
        modes = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    return None


def reads_pooler(model: Any) -> bool:
    """Whether the model's head reads its base model's pooler output (BERT and its kin); mean pooling replaces that
    output, so it needs such a model."""
    return getattr(model.base_model, "pooler", None) is not None


def resolve(requested: str, source: str | Path, model: Any) -> str:
    """text.pooling for this checkpoint and model: auto becomes what the checkpoint declares when the model can take
    it, else cls; an explicit mean the model cannot take is a StageError."""
    if requested == "auto":
        declared = checkpoint_pooling(source)
        if declared == "mean" and not reads_pooler(model):
            log.info("the checkpoint declares mean pooling, but %s's head does not read a pooler output; using its "
                     "own (cls)", type(model).__name__)
            return "cls"
        return declared or "cls"
    if requested == "mean" and not reads_pooler(model):
        raise StageError(f"text.pooling mean replaces the pooler output the head reads, but {type(model).__name__} "
                         "has no pooler (its head reads the first token itself); set text.pooling to cls or auto")
    return requested


def apply(model: Any, pooling: str) -> Any:
    """Make the model's head read `pooling` ("mean", "mean_normalised" or "cls"); cls leaves the model as it is.
    Returns the model."""
    if pooling in MEANS:
        if not reads_pooler(model):
            raise StageError(f"this model was trained with mean pooling, but {type(model).__name__} has no pooler to "
                             "replace")
        if of(model) not in MEANS:
            model.base_model.register_forward_hook(_mean_pooler_output, with_kwargs=True)
    elif pooling != "cls":
        raise StageError(f"unknown pooling {pooling!r}; expected mean, {NORMALISED_MEAN} or cls")
    model.base_model.tuneline_pooling = pooling
    return model


def of(model: Any) -> str:
    """The pooling `apply` gave the model ("cls" for one it never saw): part of the frozen-feature cache's key."""
    return str(getattr(model.base_model, "tuneline_pooling", "cls"))


def masked_mean(hidden: Any, mask: Any) -> Any:
    """The mean of `hidden` (batch, tokens, width) over the tokens whose `mask` is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _mean_pooler_output(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    """A forward hook on the base model: its pooler output becomes the masked mean of its last hidden states (scaled
    to unit length for mean_normalised)."""
    import torch

    hidden = output[0]
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    pooled = masked_mean(hidden, mask)
    if getattr(module, "tuneline_pooling", "mean") == NORMALISED_MEAN:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    output["pooler_output"] = pooled
    return output
