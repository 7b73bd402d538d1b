"""Stage `train`: fine-tune a pretrained encoder with a new classification head through transformers Trainer."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ModelParams, Params, TrainParams
from components.io import atomic_dir, read_labels, read_split, write_json
from components.model import resolve_model
from components.predict import META_FILE, pick_device
from components.stage import StageError, stage_main

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrainResult:
    """Summary of a training run (also written to paths.train_metrics)."""

    train_rows: int
    steps: int
    best_val_macro_f1: float
    trainable_params: int
    total_params: int


def freeze(model: Any, params: ModelParams) -> tuple[int, int]:
    """Freeze the whole backbone, the embeddings and/or the bottom encoder layers; return (trainable, total) counts."""
    backbone = model.base_model
    if params.freeze_backbone:
        for parameter in backbone.parameters():
            parameter.requires_grad = False
    if params.freeze_embeddings:
        for parameter in backbone.embeddings.parameters():
            parameter.requires_grad = False
    if params.freeze_layers:
        layers = getattr(getattr(backbone, "encoder", None), "layer", None)
        if layers is None:
            raise StageError(f"model.freeze_layers is set, but {type(backbone).__name__} has no encoder.layer list")
        if params.freeze_layers > len(layers):
            raise StageError(f"model.freeze_layers = {params.freeze_layers}, but the model has {len(layers)} layers")
        for layer in layers[: params.freeze_layers]:
            for parameter in layer.parameters():
                parameter.requires_grad = False
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def class_weight_vector(train_labels: list[str], labels: list[str], spec: str | dict[str, float]) -> list[float] | None:
    """Per-label loss weights in label order: None for `none`; inverse frequency for `balanced`; or as given."""
    if spec == "none":
        return None
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(labels))
        if unknown:
            raise StageError(f"train.class_weights names {unknown}, which are not labels; the labels are {labels}")
        return [float(spec.get(label, 1.0)) for label in labels]
    from sklearn.utils.class_weight import compute_class_weight

    missing = sorted(set(labels) - set(train_labels))
    if missing:
        raise StageError(f"train.class_weights is balanced, but {missing} have no train rows to weigh")
    return [float(w) for w in compute_class_weight("balanced", classes=np.array(labels), y=np.array(train_labels))]


def cross_entropy_loss(weights: list[float] | None, label_smoothing: float) -> Any:
    """A Trainer `compute_loss_func`: cross-entropy with class weights and label smoothing.

    Summed and divided by the number of labelled items in the whole (accumulated) batch when Trainer passes it, as
    Trainer expects of a custom loss, so gradient accumulation gives the same gradients as one big batch.
    """
    import torch

    weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        w = weight.to(logits.device) if weight is not None else None
        if num_items_in_batch is None:
            return torch.nn.functional.cross_entropy(logits.float(), labels, weight=w, label_smoothing=label_smoothing)
        total = torch.nn.functional.cross_entropy(logits.float(), labels, weight=w, label_smoothing=label_smoothing,
                                                  reduction="sum")
        return total / num_items_in_batch

    return loss


def split_head_learning_rate(optimizer: Any, model: Any, head_learning_rate: float) -> Any:
    """The optimizer with the head's parameters (everything outside model.base_model) moved into groups of their
    own at head_learning_rate; weight-decay grouping is kept."""
    backbone = {id(p) for p in model.base_model.parameters()}
    groups = []
    for group in optimizer.param_groups:
        settings = {key: value for key, value in group.items() if key != "params"}
        body = [p for p in group["params"] if id(p) in backbone]
        head = [p for p in group["params"] if id(p) not in backbone]
        if body:
            groups.append({**settings, "params": body})
        if head:
            groups.append({**settings, "params": head, "lr": head_learning_rate})
    # Regroup in place (no step taken yet, so no state to carry): add_param_group fills in the optimizer's defaults.
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
    return optimizer


class EncodedTexts:
    """Texts tokenised once (no padding) with their label ids; the collator pads each batch dynamically."""

    def __init__(self, tokenizer: Any, frame: pd.DataFrame, label_ids: dict[str, int], max_length: int) -> None:
        encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
        self.items = [
            {"input_ids": ids, "attention_mask": mask, "labels": label_ids[label]}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["label"], strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def macro_f1_metrics(eval_prediction: Any) -> dict[str, float]:
    """Validation accuracy and macro-F1, the figure early stopping and checkpoint selection watch."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    predicted = np.argmax(logits, axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def training_arguments(params: TrainParams, output_dir: str, device: str, has_val: bool) -> Any:
    """TrainingArguments from the train block: AdamW, warmup + decay, per-epoch evaluation, best checkpoint kept."""
    import torch
    from transformers import TrainingArguments

    cuda = device == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
        num_train_epochs=params.epochs,
        max_steps=params.max_steps or -1,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        per_device_eval_batch_size=params.batch_size * 2,
        warmup_steps=params.warmup_ratio,
        lr_scheduler_type=params.lr_scheduler,
        optim="adamw_torch",
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch" if has_val else "no",
        save_total_limit=2,
        load_best_model_at_end=has_val,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=25,
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=not cuda,
        bf16=bf16,
        fp16=cuda and not bf16,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _trainer_class(head_learning_rate: float | None) -> Any:
    """transformers' Trainer, or a subclass whose optimizer gives the new head its own learning rate."""
    from transformers import Trainer

    if head_learning_rate is None:
        return Trainer

    class HeadLearningRateTrainer(Trainer):
        def create_optimizer(self, model: Any = None) -> Any:
            optimizer = super().create_optimizer(model)
            self.optimizer = split_head_learning_rate(optimizer, self.model, head_learning_rate)
            return self.optimizer

    return HeadLearningRateTrainer


def run(model_params: ModelParams, train_params: TrainParams, augmented_dir: str | Path, prepared_dir: str | Path,
        out_dir: str | Path, metrics_path: str | Path) -> TrainResult:
    """Fine-tune the pretrained model on the (augmented) train split, selecting the best epoch on val macro-F1.

    Args:
        model_params: backbone, head dropout, freezing, max_length.
        train_params: optimiser, schedule, epochs, early stopping, quick-run limits, device.
        augmented_dir: folder with train.jsonl (the augmented train split).
        prepared_dir: folder with val.jsonl and labels.json.
        out_dir: where the fine-tuned model, its tokenizer and tuneline.json go (atomically).
        metrics_path: where the training summary goes.

    Returns:
        Training summary: rows, steps, best validation macro-F1, parameter counts.
    """
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        set_seed,
    )

    labels = read_labels(prepared_dir)
    label_ids = {label: index for index, label in enumerate(labels)}
    train = read_split(augmented_dir, "train")
    val = read_split(prepared_dir, "val")
    if train_params.max_train_samples and len(train) > train_params.max_train_samples:
        train = train.sample(n=train_params.max_train_samples, random_state=train_params.seed)
    source, base_name = resolve_model(model_params)
    try:
        device = pick_device(train_params.device)
    except RuntimeError as exc:  # train.device: cuda on a machine without one
        raise StageError(str(exc)) from None
    set_seed(train_params.seed)

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label_ids,
        classifier_dropout=model_params.classifier_dropout,
        use_safetensors=True,
    )
    trainable, total = freeze(model, model_params)
    log.info("trainable parameters: %s of %s (%.1f%%), device %s", f"{trainable:,}", f"{total:,}",
             100 * trainable / total, device)

    train_set = EncodedTexts(tokenizer, train, label_ids, model_params.max_length)
    val_set = EncodedTexts(tokenizer, val, label_ids, model_params.max_length) if len(val) else None
    callbacks = []
    if val_set is not None and train_params.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train_params.early_stopping_patience))

    weights = class_weight_vector(train["label"].tolist(), labels, train_params.class_weights)
    # The model's own loss is plain cross-entropy; a custom one only when weights or smoothing ask for it.
    loss_func = (cross_entropy_loss(weights, train_params.label_smoothing)
                 if weights is not None or train_params.label_smoothing else None)

    with tempfile.TemporaryDirectory(prefix="tuneline-checkpoints-") as checkpoints:
        trainer = _trainer_class(train_params.head_learning_rate)(
            model=model,
            args=training_arguments(train_params, checkpoints, device, has_val=val_set is not None),
            train_dataset=train_set,
            eval_dataset=val_set,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=macro_f1_metrics,
            callbacks=callbacks,
            compute_loss_func=loss_func,
        )
        output = trainer.train()
        best = trainer.evaluate() if val_set is not None else {}
        with atomic_dir(out_dir) as tmp:
            trainer.save_model(str(tmp))
            # Trainer pickles its arguments next to the weights; a model folder should hold no pickles.
            (tmp / "training_args.bin").unlink(missing_ok=True)
            tokenizer.save_pretrained(str(tmp))
            write_json(tmp / META_FILE, {
                "labels": labels,
                "max_length": model_params.max_length,
                "base_model": base_name,
                "model": model_params.model_dump(mode="json"),
                "train": train_params.model_dump(mode="json"),
            })

    result = TrainResult(
        train_rows=len(train_set),
        steps=int(output.global_step),
        best_val_macro_f1=round(float(best.get("eval_macro_f1", float("nan"))), 6),
        trainable_params=trainable,
        total_params=total,
    )
    write_json(metrics_path, {
        "train_rows": result.train_rows,
        "steps": result.steps,
        "train_loss": round(float(output.training_loss), 6),
        "val_macro_f1": result.best_val_macro_f1,
        "val_accuracy": round(float(best.get("eval_accuracy", float("nan"))), 6),
        "trainable_params": trainable,
        "total_params": total,
    })
    log.info("trained %d steps on %d rows; best validation macro-F1 %.4f", result.steps, result.train_rows,
             result.best_val_macro_f1)
    return result


def main() -> None:
    def _run(p: Params) -> TrainResult:
        return run(p.model, p.train, p.paths.augmented, p.paths.prepared, p.paths.model, p.paths.train_metrics)

    stage_main("train", _run)


if __name__ == "__main__":
    main()
