"""Stage `train`: fine-tune a pretrained encoder with a new classification head through transformers Trainer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ImageParams, ModelParams, Params, TrainParams
from components.io import atomic_dir, read_labels, read_split, write_json
from components.model import (
    bottom_layers,
    build_classifier,
    head_attribute,
    layer_list,
    no_layer_list,
    resolve_model,
)
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
    train_tokens: int = 0  # real (unpadded) tokens in one epoch of the train split
    epoch_seconds: tuple[float, ...] = ()  # wall time of each epoch, evaluation excluded
    feature_seconds: float = 0.0  # computing or reading the frozen-feature cache, before the first epoch


def freeze(model: Any, params: ModelParams) -> tuple[int, int]:
    """Freeze the whole backbone, the embeddings and/or the bottom encoder layers; return (trainable, total) counts."""
    backbone = model.base_model
    if params.freeze_backbone:
        for parameter in backbone.parameters():
            parameter.requires_grad = False
    if params.freeze_embeddings:
        for parameter in backbone.embeddings.parameters():
            parameter.requires_grad = False
    for layer in bottom_layers(backbone, params.freeze_layers) if params.freeze_layers else []:
        for parameter in layer.parameters():
            parameter.requires_grad = False
    return parameter_counts(model)


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


def head_parameters(model: Any) -> list[Any]:
    """The new head's parameters (for a peft model, the head's trainable copy and its frozen original)."""
    return list(getattr(model, head_attribute(model)).parameters())


def split_head_learning_rate(optimizer: Any, model: Any, head_learning_rate: float) -> Any:
    """The optimizer with the head's parameters moved into groups of their own at head_learning_rate; weight-decay
    grouping is kept."""
    in_head = {id(p) for p in head_parameters(model)}
    groups = []
    for group in optimizer.param_groups:
        settings = {key: value for key, value in group.items() if key != "params"}
        body = [p for p in group["params"] if id(p) not in in_head]
        head = [p for p in group["params"] if id(p) in in_head]
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

    def tokens(self) -> int:
        """Real (unpadded) tokens over all texts: one epoch's worth."""
        return sum(sum(item["attention_mask"]) for item in self.items)


def macro_f1_metrics(eval_prediction: Any) -> dict[str, float]:
    """Validation accuracy and macro-F1, the figure early stopping and checkpoint selection watch."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    predicted = np.argmax(logits, axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def training_arguments(params: TrainParams, output_dir: str, device: str, has_val: bool,
                       length_grouping: bool | None = None, world_size: int = 1) -> Any:
    """TrainingArguments from the train block: AdamW, warmup + decay, per-epoch (or every checkpoint_steps)
    evaluation and checkpoint, the best checkpoint kept."""
    import torch
    from transformers import TrainingArguments

    cuda = device == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    group = params.group_by_length if length_grouping is None else length_grouping
    every = "steps" if params.checkpoint_steps else "epoch"
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
        optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length" if group else "random",
        eval_strategy=every if has_val else "no",
        save_strategy=every,
        eval_steps=params.checkpoint_steps,
        save_steps=params.checkpoint_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=has_val,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=not cuda,
        bf16=bf16,
        fp16=cuda and not bf16,
        ddp_backend=("nccl" if cuda else "gloo") if world_size > 1 else None,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


class ThawPlan:
    """Gradual unfreezing (ULMFiT): the head trains from the first epoch, and each epoch thaws `per_epoch` more
    encoder layers from the top down, the embeddings last. Layers frozen by freeze_layers/freeze_embeddings stay
    frozen throughout."""

    def __init__(self, layers: list[Any], embeddings: Any | None, params: ModelParams) -> None:
        """layers: the backbone's layers, bottom first (the first freeze_layers stay frozen); embeddings: thawed
        last, unless None or freeze_embeddings."""
        groups = [list(layer.parameters()) for layer in reversed(list(layers)[params.freeze_layers:])]
        if embeddings is not None and not params.freeze_embeddings:
            groups.append(list(embeddings.parameters()))
        self.groups = groups
        self.per_epoch = params.gradual_unfreeze
        self.thawed = -1

    @classmethod
    def for_text(cls, model: Any, params: ModelParams) -> ThawPlan:
        """The plan for a *ForSequenceClassification model: its encoder layers, then its embeddings."""
        backbone = model.base_model
        layers = layer_list(backbone)
        if layers is None:
            raise no_layer_list(backbone, "gradual_unfreeze")
        return cls(list(layers), backbone.embeddings, params)

    def thaw_all(self) -> None:
        """Every group trainable (so the optimizer is built holding them all; frozen ones just get no gradient)."""
        for group in self.groups:
            for parameter in group:
                parameter.requires_grad = True

    def apply(self, epoch: int, model: Any) -> None:
        """Make the top `per_epoch * epoch` groups trainable and the rest frozen."""
        thawed = min(len(self.groups), self.per_epoch * epoch)
        for index, group in enumerate(self.groups):
            for parameter in group:
                parameter.requires_grad = index < thawed
        if thawed != self.thawed:
            self.thawed = thawed
            trainable, total = parameter_counts(model)
            log.info("epoch %d: %d of %d backbone groups thawed; trainable parameters %s of %s", epoch + 1, thawed,
                     len(self.groups), f"{trainable:,}", f"{total:,}")


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


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


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint-N in folder (one killed while saving lacks trainer_state.json and is removed)."""
    import shutil

    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for candidate in reversed(found):
        if (candidate / "trainer_state.json").is_file() and any(candidate.glob("rng_state*.pth")):
            return candidate
        shutil.rmtree(candidate, ignore_errors=True)
    return None


def run_fingerprint(model_params: ModelParams, train_params: TrainParams, source: str, *splits: pd.DataFrame) -> str:
    """What makes two runs the same run: params, the checkpoint it starts from and the data. A checkpoint left by a
    killed run is resumed only under the same fingerprint."""
    import hashlib
    import json

    digest = hashlib.sha256()
    settings = {"model": model_params.model_dump(mode="json"), "source": source,
                "train": train_params.model_dump(mode="json", exclude={"resume", "logging_steps"})}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for frame in splits:
        digest.update(pd.util.hash_pandas_object(frame[["text", "label"]], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _callbacks(epoch_seconds: list[float], thaw: ThawPlan | None) -> list[Any]:
    """Per-epoch wall time (for the benchmark) and the gradual-unfreezing schedule, as Trainer callbacks."""
    import math
    import time

    from transformers import TrainerCallback

    class EpochClock(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()
            if thaw is not None:
                thaw.apply(math.floor(state.epoch + 1e-6), kwargs["model"])

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            epoch_seconds.append(time.perf_counter() - self.started)

    return [EpochClock()]


def _dvclive_callback(live_dir: str | Path, resume_step: int | None) -> Any:
    """transformers' DVCLive callback writing to live_dir with the optimizer step as x (dvc.yaml declares the
    plots, so dvclive edits no dvc.yaml). A resumed run first drops what the killed one logged after its checkpoint."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    if resume_step is not None:
        truncate_curves(Path(live_dir), resume_step)
    live = Live(dir=str(live_dir), resume=resume_step is not None, save_dvc_exp=False, dvcyaml=None, report=None)
    skipped = ("epoch", "total_flos", "train_loss")  # train_loss: Trainer's end-of-run summary, not a curve point

    class StepLive(DVCLiveCallback):
        def on_log(self, args: Any, state: Any, control: Any, model: Any = None, logs: Any = None,
                   **kwargs: Any) -> None:
            # Wall-clock figures would make the curves differ run to run; they are the benchmark's business.
            kept = {key: value for key, value in (logs or {}).items()
                    if key not in skipped and not key.endswith(("runtime", "_per_second"))}
            live.step = state.global_step
            super().on_log(args, state, control, model=model, logs=kept, **kwargs)

    return StepLive(live=live, log_model=False)


def truncate_curves(live_dir: Path, last_step: int) -> None:
    """Drop the rows after last_step from every dvclive curve (tab-separated, `step` column) in live_dir."""
    for path in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        header, *rows = path.read_text(encoding="utf-8").splitlines()
        column = header.split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[column]) <= last_step]
        path.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")


def _trainer_class(head_learning_rate: float | None, thaw: ThawPlan | None) -> Any:
    """transformers' Trainer, or a subclass whose optimizer gives the new head its own learning rate and holds the
    layers gradual unfreezing will thaw."""
    from transformers import Trainer

    if head_learning_rate is None and thaw is None:
        return Trainer

    class TunelineTrainer(Trainer):
        def create_optimizer(self, model: Any = None) -> Any:
            if thaw is not None:
                thaw.thaw_all()
            optimizer = super().create_optimizer(model)
            if thaw is not None:
                thaw.apply(0, self.model)
            if head_learning_rate is not None:
                optimizer = split_head_learning_rate(optimizer, self.model, head_learning_rate)
            self.optimizer = optimizer
            return optimizer

    return TunelineTrainer


def training_data(augmented_dir: str | Path, prepared_dir: str | Path,
                  train_params: TrainParams) -> tuple[list[str], dict[str, int], pd.DataFrame, pd.DataFrame, str]:
    """The labels and their ids, the train split (thinned to train.max_train_samples) and the val split, and the
    device to train on; shared by text and images."""
    labels = read_labels(prepared_dir)
    label_ids = {label: index for index, label in enumerate(labels)}
    train = read_split(augmented_dir, "train")
    val = read_split(prepared_dir, "val")
    if train_params.max_train_samples and len(train) > train_params.max_train_samples:
        train = train.sample(n=train_params.max_train_samples, random_state=train_params.seed)
    try:
        device = pick_device(train_params.device)
    except RuntimeError as exc:  # train.device: cuda on a machine without one
        raise StageError(str(exc)) from None
    return labels, label_ids, train, val, device


def fit(trained: Any, train_data: Any, val_data: Any | None, *, train_params: TrainParams, device: str,
        labels: list[str], train_labels: list[str], checkpoint_id: str, save: Callable[[Any, Path], None],
        out_dir: str | Path, metrics_path: str | Path, work_dir: str | Path | None, live_dir: str | Path | None,
        counts: tuple[int, int], train_tokens: int, feature_seconds: float = 0.0, collator: Any = None,
        length_grouping: bool = False, trainer_class: Any = None, thaw: ThawPlan | None = None, world_size: int = 1,
        custom_loss: bool = False) -> TrainResult:
    """The Trainer part of a training run, one for text and images: early stopping on val macro-F1, the loss
    (class weights, label smoothing), checkpoints resumed after a kill, dvclive curves, the model written atomically
    and the training summary.

    Args:
        trained: the module Trainer trains (a head alone on cached features, or the whole classifier).
        checkpoint_id: the run's fingerprint; checkpoints live in work_dir/checkpoints/<id>, so a killed run is
            resumed only by the same run. work_dir None = a temp folder: nothing is resumed.
        save: writes the finished model into a folder (called once, in the main process, with the trainer); the
            folder replaces out_dir atomically.
        counts: trainable and total parameters; train_tokens: real tokens (or pixels) in one epoch.
        custom_loss: use cross_entropy_loss even without class weights or smoothing (DDP needs it).

    Returns:
        The TrainResult, also written to metrics_path.
    """
    import os
    import shutil
    import tempfile

    from transformers import EarlyStoppingCallback, Trainer

    main_process = int(os.environ.get("RANK", "0")) == 0
    epoch_seconds: list[float] = []
    callbacks = _callbacks(epoch_seconds, thaw)
    if val_data is not None and train_params.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train_params.early_stopping_patience))
    weights = class_weight_vector(train_labels, labels, train_params.class_weights)
    loss_func = (cross_entropy_loss(weights, train_params.label_smoothing)
                 if weights is not None or train_params.label_smoothing or custom_loss else None)

    temporary = tempfile.TemporaryDirectory(prefix="tuneline-checkpoints-") if work_dir is None else None
    checkpoints = Path(temporary.name) if temporary is not None else Path(work_dir) / "checkpoints" / checkpoint_id
    resume_from = last_checkpoint(checkpoints) if train_params.resume and checkpoints.is_dir() else None
    if resume_from is not None:
        log.info("resuming from %s (left by a run that did not finish)", resume_from)
    if live_dir is not None and main_process:
        resume_step = int(resume_from.name.split("-")[-1]) if resume_from else None
        callbacks.append(_dvclive_callback(live_dir, resume_step))
    try:
        trainer = (trainer_class or Trainer)(
            model=trained,
            args=training_arguments(train_params, str(checkpoints), device, has_val=val_data is not None,
                                    length_grouping=length_grouping, world_size=world_size),
            train_dataset=train_data,
            eval_dataset=val_data,
            data_collator=collator,
            compute_metrics=macro_f1_metrics,
            callbacks=callbacks,
            compute_loss_func=loss_func,
        )
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        best = trainer.evaluate() if val_data is not None else {}
        if main_process:
            with atomic_dir(out_dir) as tmp:
                save(trainer, tmp)
    finally:
        if temporary is not None:
            temporary.cleanup()

    trainable, total = counts
    result = TrainResult(
        train_rows=len(train_data),
        steps=int(output.global_step),
        best_val_macro_f1=round(float(best.get("eval_macro_f1", float("nan"))), 6),
        trainable_params=trainable,
        total_params=total,
        train_tokens=train_tokens,
        epoch_seconds=tuple(round(s, 3) for s in epoch_seconds),
        feature_seconds=round(feature_seconds, 3),
    )
    if main_process:
        write_json(metrics_path, {
            "train_rows": result.train_rows,
            "steps": result.steps,
            # Not Trainer's training_loss: after a resume that averages only the steps since the checkpoint. The
            # per-step training loss is in dvclive's plots.
            "val_loss": round(float(best.get("eval_loss", float("nan"))), 6),
            "val_macro_f1": result.best_val_macro_f1,
            "val_accuracy": round(float(best.get("eval_accuracy", float("nan"))), 6),
            "trainable_params": trainable,
            "total_params": total,
        })
        if temporary is None:
            shutil.rmtree(checkpoints, ignore_errors=True)  # finished: nothing to resume
    return result


def run(model_params: ModelParams, train_params: TrainParams, augmented_dir: str | Path, prepared_dir: str | Path,
        out_dir: str | Path, metrics_path: str | Path, *, work_dir: str | Path | None = None,
        live_dir: str | Path | None = None, selection_path: str | Path | None = None,
        image: ImageParams | None = None) -> TrainResult:
    """Fine-tune the pretrained model on the (augmented) train split, selecting the best checkpoint on val macro-F1.

    Args:
        model_params: backbone (or candidates to rank), head, freezing, adapter, max_length.
        train_params: optimiser, schedule, epochs, early stopping, padding, cache, checkpoints, device.
        augmented_dir: folder with train.jsonl (the augmented train split).
        prepared_dir: folder with val.jsonl and labels.json.
        out_dir: where the fine-tuned model, its tokenizer and tuneline.json go (atomically).
        metrics_path: where the training summary goes.
        work_dir: where checkpoints (resumed after a kill) and the frozen-feature cache live; None = a temp folder,
            so nothing is resumed or cached.
        live_dir: dvclive's folder for per-step loss, learning rate and validation metrics; None = no dvclive.
        selection_path: where the ranking of model.candidates goes, when there are candidates.
        image: the image block, when prepare wrote images (components/vision.py trains those).

    Returns:
        Training summary: rows, steps, best validation macro-F1, parameter counts, epoch wall times.
    """
    import os

    from transformers import AutoTokenizer, DataCollatorWithPadding, set_seed

    from components.images import holds_images

    if holds_images(prepared_dir):
        from components.selection import write_ranking
        from components.vision import train_images

        if selection_path is not None:  # dvc.yaml's output: the image model is the one backbone, nothing ranked
            write_ranking(selection_path, model_params.name_or_path, [])
        return train_images(model_params, train_params, image or ImageParams(), augmented_dir, prepared_dir, out_dir,
                            metrics_path, work_dir=work_dir, live_dir=live_dir)
    if not model_params.pretrained:
        raise StageError("model.pretrained: false (random weights) is for image backbones; set it to true for text")
    labels, label_ids, train, val, device = training_data(augmented_dir, prepared_dir, train_params)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    main_process = int(os.environ.get("RANK", "0")) == 0
    cache_dir = Path(work_dir) / "features" if work_dir is not None else None

    from components.selection import rank_candidates, write_ranking

    ranking = rank_candidates(model_params, train_params, train, val, labels, device, cache_dir) \
        if model_params.candidates else []
    if ranking:
        model_params = model_params.model_copy(update={"name_or_path": ranking[0].name})
        log.info("model.candidates: %s ranks first (val macro-F1 %.4f with a linear probe)", ranking[0].name,
                 ranking[0].val_macro_f1)
    if main_process and selection_path is not None:
        write_ranking(selection_path, model_params.name_or_path, ranking)
    source, base_name = resolve_model(model_params)
    set_seed(train_params.seed)

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = build_classifier(source, labels, model_params)
    freeze(model, model_params)
    thaw = ThawPlan.for_text(model, model_params) if model_params.gradual_unfreeze else None
    if thaw is not None:
        thaw.apply(0, model)  # the first epoch trains the head only
    if thaw is not None and world_size > 1:
        raise StageError("model.gradual_unfreeze changes which layers train mid-run, which DDP does not allow; "
                         "set train.num_processes to 1 or gradual_unfreeze to 0")
    full_model = model
    if model_params.adapter == "lora":
        model = add_lora(model, model_params)
    trainable, total = parameter_counts(model)
    log.info("trainable parameters: %s of %s (%.2f%%), device %s, %d process(es)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total, device, world_size)

    static = train_params.padding == "max_length"
    train_set = EncodedTexts(tokenizer, train, label_ids, model_params.max_length, pad_to_max_length=static)
    val_set = EncodedTexts(tokenizer, val, label_ids, model_params.max_length, pad_to_max_length=static) \
        if len(val) else None
    trained, train_data, val_data = model, train_set, val_set
    collator: Any = DataCollatorWithPadding(tokenizer)
    length_grouping = train_params.group_by_length and not static
    feature_seconds = 0.0
    if model_params.freeze_backbone and train_params.feature_cache and world_size == 1:
        import time

        from transformers import default_data_collator

        from components.features import FeatureRows, NotCacheable, cacheable_head, cached_vectors, head_only

        try:
            started = time.perf_counter()
            dropout, head = cacheable_head(model)
            model.to(device)
            batch = train_params.batch_size * 4
            pad = tokenizer.pad_token_id or 0
            train_features, hit = cached_vectors(model, train_set.items, pad, batch, device, cache_dir)
            train_data = FeatureRows(train_features, [item["labels"] for item in train_set.items])
            if val_set is not None:
                val_features, _ = cached_vectors(model, val_set.items, pad, batch, device, cache_dir)
                val_data = FeatureRows(val_features, [item["labels"] for item in val_set.items])
            trained, collator, length_grouping = head_only(dropout, head), default_data_collator, False
            feature_seconds = time.perf_counter() - started
            log.info("feature cache: %s frozen-backbone features for %d train rows in %.1f s; the head trains on them",
                     "read" if hit else "computed", len(train_set), feature_seconds)
        except NotCacheable as exc:
            log.info("feature cache off: %s", exc)

    checkpoint_id = run_fingerprint(model_params, train_params, source, train, val)

    def save(trainer: Any, folder: Path) -> None:
        final = trainer.model.merge_and_unload() if model_params.adapter == "lora" else full_model
        final.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        write_json(folder / META_FILE, {
            "labels": labels,
            "max_length": model_params.max_length,
            "base_model": base_name,
            "model": model_params.model_dump(mode="json"),
            "train": train_params.model_dump(mode="json"),
        })

    # The model's own loss is plain cross-entropy. A custom one when weights or smoothing ask for it, and under DDP:
    # there Trainer multiplies the loss by the process count, assuming it was divided by the items in the whole
    # (all-process) batch, which ours is and BERT's own mean is not (its gradients came out doubled with 2 processes).
    result = fit(trained, train_data, val_data, train_params=train_params, device=device, labels=labels,
                 train_labels=train["label"].astype(str).tolist(), checkpoint_id=checkpoint_id, save=save,
                 out_dir=out_dir, metrics_path=metrics_path, work_dir=work_dir, live_dir=live_dir,
                 counts=(trainable, total), train_tokens=train_set.tokens(), feature_seconds=feature_seconds,
                 collator=collator, length_grouping=length_grouping, trainer_class=_trainer_class(
                     train_params.head_learning_rate, thaw), thaw=thaw, world_size=world_size,
                 custom_loss=world_size > 1)
    log.info("trained %d steps on %d rows; best validation macro-F1 %.4f", result.steps, result.train_rows,
             result.best_val_macro_f1)
    return result


def launch_command(params: TrainParams) -> list[str]:
    """The command that runs this stage as `params.num_processes` data-parallel processes."""
    import sys

    n = str(params.num_processes)
    if params.launcher == "accelerate":
        # --multi_gpu is accelerate's torch.distributed.run launcher; on a CPU its processes use gloo.
        mode = ["--multi_gpu"]
        return [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", n, "--num_machines",
                "1", "-m", "components.train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n,
            "-m", "components.train"]


LAUNCHED = "TUNELINE_TRAIN_LAUNCHED"  # set for the processes a launcher starts: they train, never launch again


def main() -> None:
    import os
    import subprocess

    def _run(p: Params) -> TrainResult | None:
        if p.train.num_processes > 1 and "WORLD_SIZE" not in os.environ:
            if os.environ.get(LAUNCHED):
                raise StageError(f"{p.train.launcher} started the stage without a distributed environment "
                                 "(no WORLD_SIZE); try train.launcher: torchrun")
            if p.model.freeze_backbone and p.train.feature_cache:
                log.info("train.num_processes is %d, but a linear probe on cached features needs one process",
                         p.train.num_processes)
            else:
                command = launch_command(p.train)
                log.info("launching %d processes: %s", p.train.num_processes, " ".join(command))
                code = subprocess.call(command, env={**os.environ, LAUNCHED: "1"})
                if code:
                    raise StageError(f"the {p.train.num_processes} training processes ({p.train.launcher}) exited "
                                     f"with status {code}; their log is above")
                return None
        return run(p.model, p.train, p.paths.augmented, p.paths.prepared, p.paths.model, p.paths.train_metrics,
                   work_dir=p.paths.work_dir, live_dir=p.paths.train_live, selection_path=p.paths.model_selection,
                   image=p.image)

    stage_main("train", _run)


if __name__ == "__main__":
    main()
