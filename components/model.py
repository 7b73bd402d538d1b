"""What every transformers backbone shares, whatever its modality: a local checkpoint folder, where its head and its
layers are, the new head (linear or an MLP) built the same way for training and for loading a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import BUILTIN, HeadParams, ModelParams
from components.stage import StageError


def local_checkpoint(name_or_path: str) -> str:
    """model.name_or_path as a local checkpoint folder (one with config.json), or a StageError saying what to do."""
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise StageError(
            f"model.name_or_path {name_or_path!r} is not a local checkpoint folder (no config.json); "
            f"Tuneline runs offline, so point it at a folder saved with save_pretrained, or use {BUILTIN!r}"
        )
    return str(path)


HEAD_ATTRIBUTES = ("classifier", "score")  # where transformers' *ForSequenceClassification models keep the head
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh", "silu": "SiLU"}


def head_attribute(model: Any) -> str:
    """The name of the attribute holding the classification head of a *ForSequenceClassification model."""
    for name in HEAD_ATTRIBUTES:
        if isinstance(getattr(model, name, None), _nn().Module):
            return name
    raise StageError(f"{type(model).__name__} has no `classifier` or `score` head; Tuneline fine-tunes "
                     "*ForSequenceClassification models (BERT, MiniLM, DistilBERT, RoBERTa, ...)")


LAYER_LISTS = ("encoder.layer", "layers", "encoder.layers", "encoder.stages")  # where transformers keeps them


def layer_list(base: Any) -> Any:
    """A base model's list of layers (or stages), bottom first: BERT's encoder.layer, transformers 5's ViT layers,
    ConvNeXT's encoder.stages, ...; None when it keeps none where LAYER_LISTS look."""
    for path in LAYER_LISTS:
        found = base
        for part in path.split("."):
            found = getattr(found, part, None)
        if found is not None and len(found):
            return found
    return None


def no_layer_list(base: Any, option: str) -> StageError:
    """The error for an option that needs the base model's layers when it has none where LAYER_LISTS look."""
    return StageError(f"model.{option} is set, but {type(base).__name__} has no list of layers "
                      f"({', '.join(LAYER_LISTS)})")


def bottom_layers(base: Any, count: int) -> list[Any]:
    """The bottom `count` layers of a base model, which model.freeze_layers freezes; a clear error when the model
    has no layer list or fewer layers."""
    layers = layer_list(base)
    if layers is None:
        raise no_layer_list(base, "freeze_layers")
    if count > len(layers):
        raise StageError(f"model.freeze_layers = {count}, but the model has {len(layers)} layers")
    return list(layers[:count])


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def stem(base: Any) -> Any | None:
    """A base model's embeddings (text) or stem / patch embedding (images), or None when it keeps them elsewhere."""
    return getattr(base, "embeddings", None) or getattr(base, "embedder", None)


def freeze(model: Any, params: ModelParams, stem_with_layers: bool = False) -> tuple[int, int]:
    """model.freeze_backbone (the whole base model: a linear probe), freeze_embeddings (its embeddings or stem) and
    freeze_layers N (its bottom N layers; with `stem_with_layers` the stem too, as image backbones count it); returns
    the (trainable, total) parameter counts."""
    base = model.base_model
    frozen = list(base.parameters()) if params.freeze_backbone else []
    embeddings = stem(base)
    if params.freeze_embeddings or (stem_with_layers and params.freeze_layers):
        if embeddings is None and params.freeze_embeddings:
            raise StageError(f"model.freeze_embeddings is set, but {type(base).__name__} has no embeddings or stem "
                             "where Tuneline looks (embeddings, embedder)")
        frozen += list(embeddings.parameters()) if embeddings is not None else []
    if params.freeze_layers:
        frozen += [p for layer in bottom_layers(base, params.freeze_layers) for p in layer.parameters()]
    for parameter in frozen:
        parameter.requires_grad = False
    return parameter_counts(model)


def mlp_head(in_features: int, num_labels: int, head: HeadParams) -> Any:
    """Linear -> activation -> dropout for each hidden size, then Linear to the labels (Dense(1024, relu) + softmax
    is `hidden_sizes: [1024], activation: relu`; the softmax is in the loss and in predict)."""
    nn = _nn()
    layers: list[Any] = []
    width = in_features
    for size in head.hidden_sizes:
        layers += [nn.Linear(width, size), getattr(nn, ACTIVATIONS[head.activation])(), nn.Dropout(head.dropout)]
        width = size
    layers.append(nn.Linear(width, num_labels))
    return nn.Sequential(*layers)


def attach_head(model: Any, head: HeadParams) -> Any:
    """Replace the model's single linear head with the MLP `head` describes (a linear head is left as it is)."""
    if head.type == "linear":
        return model
    name = head_attribute(model)
    current = getattr(model, name)
    if not isinstance(current, _nn().Linear):
        raise StageError(f"model.head.type mlp replaces a single linear head, but {type(model).__name__}.{name} is "
                         f"a {type(current).__name__}; use head.type linear with this model")
    setattr(model, name, mlp_head(current.in_features, current.out_features, head))
    return model


def load_trained(model_dir: str | Path, model_params: dict[str, Any], auto_class: Any = None) -> Any:
    """A model folder written by the train stage, with its head rebuilt as trained (an MLP head included).

    auto_class: the transformers Auto class that reads it; AutoModelForSequenceClassification when None.
    """
    from transformers import AutoModelForSequenceClassification

    auto_class = auto_class or AutoModelForSequenceClassification
    head = HeadParams.model_validate(model_params.get("head", {}))
    model = auto_class.from_pretrained(model_dir, use_safetensors=True)
    if head.type == "linear":
        return model
    # The backbone comes through from_pretrained, which maps the names save_pretrained wrote (transformers 5 renames
    # some, ViT's layers among them); the MLP head, which config.json does not describe, is read by its own names.
    from safetensors.torch import load_file

    model = attach_head(model, head)
    name = head_attribute(model)
    saved = load_file(str(Path(model_dir) / "model.safetensors"))
    getattr(model, name).load_state_dict({key[len(name) + 1:]: value for key, value in saved.items()
                                          if key.startswith(name + ".")}, strict=True)
    return model


def _nn() -> Any:
    import torch.nn

    return torch.nn
