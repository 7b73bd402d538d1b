"""The training engine every modality uses: transformers' Trainer (AdamW, warmup and decay, early stopping on val
macro-F1) with Tuneline's loss (class weights, label smoothing), a learning rate of the new head's own, gradual
unfreezing, checkpoints that a killed run resumes from, dvclive curves, and the run's fingerprint.

A modality builds the module and its datasets (components/modalities); the train stage hands them to `fit`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ModelParams, TrainParams
from components.io import atomic_dir, read_labels, read_split, write_json
from components.model import head_attribute, layer_list, no_layer_list, parameter_counts, stem
from components.predict import pick_device
from components.stage import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Summary of a training run (also written to paths.train_metrics)."""

    train_rows: int
    steps: int
    best_val_macro_f1: float
    trainable_params: int
    total_params: int
    train_units: int = 0  # real (unpadded) inputs in one epoch of the train split, counted in `unit`
    unit: str = "tokens"  # what train_units counts: tokens (texts), pixels (images)
    epoch_seconds: tuple[float, ...] = ()  # wall time of each epoch, evaluation excluded
    feature_seconds: float = 0.0  # computing or reading the frozen-feature cache, before the first epoch


@dataclass(frozen=True)
class CandidateScore:
    """One candidate backbone's linear-probe result (model.candidates)."""

    name: str
    val_macro_f1: float
    val_accuracy: float
    feature_size: int


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


def macro_f1_metrics(eval_prediction: Any) -> dict[str, float]:
    """Validation accuracy and macro-F1, the figure early stopping and checkpoint selection watch."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    predicted = np.argmax(logits, axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def mixed_precision(params: TrainParams, device: str) -> str:
    """train.precision for the device this run trains on: fp32, bf16 or fp16 (autocast; the weights stay fp32).
    auto is bf16 on a CUDA GPU that has it, fp16 on one that does not; on the CPU bf16 where it computes bf16
    natively (AVX-512 BF16 or AMX: 1.2-1.6x faster at the same F1, README's Training speed) and fp32 elsewhere. A
    choice the device cannot run is a StageError that says what to set; bf16 on a CPU without native bf16 runs, with
    a warning that it is slower there than fp32."""
    import torch

    cuda = device == "cuda"
    precision = params.precision
    if precision == "auto" and cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "auto":
        return "bf16" if native_cpu_bf16() else "fp32"
    if precision == "fp16" and not cuda:
        raise StageError(f"train.precision fp16 needs a CUDA GPU, and this run trains on the {device}; set "
                         "train.precision to bf16 (CPUs with AVX-512 BF16 or AMX) or fp32")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise StageError(f"train.precision bf16: this GPU ({torch.cuda.get_device_name()}) has no bf16; set "
                         "train.precision to fp16 or auto")
    if precision == "bf16" and not cuda and not native_cpu_bf16():
        _warn_emulated_bf16()
    return precision


def autocast_flags(params: TrainParams, device: str) -> dict[str, bool]:
    """mixed_precision as the bf16 / fp16 keyword arguments of transformers' and sentence-transformers' training
    arguments alike, so every Trainer of a run gets the same precision."""
    precision = mixed_precision(params, device)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


@functools.cache
def _warn_emulated_bf16() -> None:
    """Once per process: each Trainer of a run resolves the precision."""
    log.warning("train.precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 autocast emulates "
                "it and trains slower than fp32; set train.precision to auto or fp32")


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX-512 BF16 or AMX tiles, as torch's CPU checks report)."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def training_arguments(params: TrainParams, output_dir: str, device: str, has_val: bool,
                       length_grouping: bool | None = None, world_size: int = 1) -> Any:
    """TrainingArguments from the train block: AdamW, warmup + decay, per-epoch (or every checkpoint_steps)
    evaluation and checkpoint, the best checkpoint kept."""
    from transformers import TrainingArguments

    if "auto" in (params.epochs, params.learning_rate, params.method):
        raise ValueError("train.epochs, learning_rate and method auto are resolved by the train stage "
                         "(components.train.resolved, components/recipe.py) before the Trainer's arguments are made")
    cuda = device == "cuda"
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
        **autocast_flags(params, device),
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
    def for_base_model(cls, base: Any, params: ModelParams, embeddings: bool = True) -> ThawPlan:
        """The plan for a transformers base model: its layers (or stages), then its embeddings (or stem) unless
        `embeddings` is false."""
        layers = layer_list(base)
        if layers is None:
            raise no_layer_list(base, "gradual_unfreeze")
        return cls(list(layers), stem(base) if embeddings else None, params)

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
    unknown = sorted(set(train["label"]).union(val["label"]) - set(labels))
    if unknown:  # the folders come from different runs (a stage run by hand, not through dvc repro)
        raise StageError(f"labels {unknown[:5]} in {augmented_dir} or {prepared_dir} are not in "
                         f"{Path(prepared_dir) / 'labels.json'} ({labels[:5]}): the augmented data is older than the "
                         f"prepared data; bring both up to date with dvc repro augment (make repro and make tune do)")
    if train_params.max_train_samples and len(train) > train_params.max_train_samples:
        train = train.sample(n=train_params.max_train_samples, random_state=train_params.seed)
    try:
        device = pick_device(train_params.device)
    except RuntimeError as exc:  # train.device: cuda on a machine without one
        raise StageError(str(exc)) from None
    return labels, label_ids, train, val, device


def run_fingerprint(model_params: ModelParams, train_params: TrainParams, source: str, *splits: pd.DataFrame,
                    settings: dict[str, Any] | None = None) -> str:
    """What makes two runs the same run: the params (model, train, and `settings`: the modality and its block), the
    checkpoint it starts from (`source`) and the data (each split's item and label columns). A checkpoint left by a
    killed run is resumed only under the same fingerprint; `resume` and `logging_steps` do not count."""
    import hashlib
    import json

    described = {"model": model_params.model_dump(mode="json"), "source": source, "settings": settings or {},
                 "train": train_params.model_dump(mode="json", exclude={"resume", "logging_steps"})}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for frame in splits:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Job:
    """One training run, as a modality set it up: the module Trainer trains (a head alone on cached features, or the
    whole classifier), its datasets and collator, how the finished model is saved, and the figures the summary
    reports.

    `save(trainer, folder)` writes the finished model into a folder that then replaces out_dir atomically (called
    once, in the main process). `checkpoint_id` is the run's fingerprint: checkpoints live in
    work_dir/checkpoints/<id>, so a killed run is resumed only by the same run.
    """

    trained: Any
    train_data: Any
    val_data: Any | None
    collator: Any
    save: Callable[[Any, Path], None]
    checkpoint_id: str
    counts: tuple[int, int]  # trainable and total parameters
    train_units: int  # real inputs in one epoch (tokens, pixels), counted in `unit`
    unit: str
    length_grouping: bool = False
    thaw: ThawPlan | None = None
    feature_seconds: float = 0.0


def _loss(train_params: TrainParams, labels: list[str], train_labels: list[str], custom_loss: bool) -> Any:
    """Trainer's compute_loss_func: ours when class weights or smoothing ask for it (or `custom_loss`), else None."""
    weights = class_weight_vector(train_labels, labels, train_params.class_weights)
    if weights is None and not train_params.label_smoothing and not custom_loss:
        return None
    return cross_entropy_loss(weights, train_params.label_smoothing)


def fit(job: Job, *, train_params: TrainParams, device: str, labels: list[str], train_labels: list[str],
        out_dir: str | Path, metrics_path: str | Path, work_dir: str | Path | None, live_dir: str | Path | None,
        world_size: int = 1, custom_loss: bool = False, extra_callbacks: list[Any] | None = None) -> TrainResult:
    """Train `job` through Trainer: early stopping on val macro-F1, the loss (class weights, label smoothing),
    checkpoints resumed after a kill, dvclive curves, the model written atomically and the training summary.

    Args:
        job: the module, datasets, collator and saving, as the modality set them up.
        work_dir: where checkpoints live; None = a temp folder: nothing is resumed.
        live_dir: dvclive's folder; None = no curves.
        custom_loss: use cross_entropy_loss even without class weights or smoothing (DDP needs it).
        extra_callbacks: more Trainer callbacks (a search's pruning).

    Returns:
        The TrainResult, also written to metrics_path.
    """
    import os
    import shutil
    import tempfile

    from transformers import EarlyStoppingCallback

    main_process = int(os.environ.get("RANK", "0")) == 0
    epoch_seconds: list[float] = []
    callbacks = _callbacks(epoch_seconds, job.thaw) + list(extra_callbacks or [])
    if job.val_data is not None and train_params.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train_params.early_stopping_patience))
    temporary = tempfile.TemporaryDirectory(prefix="tuneline-checkpoints-") if work_dir is None else None
    checkpoints = Path(temporary.name) if temporary is not None else Path(work_dir) / "checkpoints" / job.checkpoint_id
    resume_from = last_checkpoint(checkpoints) if train_params.resume and checkpoints.is_dir() else None
    if resume_from is not None:
        log.info("resuming from %s (left by a run that did not finish)", resume_from)
    if live_dir is not None and main_process:
        callbacks.append(_dvclive_callback(live_dir, int(resume_from.name.split("-")[-1]) if resume_from else None))
    try:
        trainer = _trainer_class(train_params.head_learning_rate, job.thaw)(
            model=job.trained,
            args=training_arguments(train_params, str(checkpoints), device, has_val=job.val_data is not None,
                                    length_grouping=job.length_grouping, world_size=world_size),
            train_dataset=job.train_data,
            eval_dataset=job.val_data,
            data_collator=job.collator,
            compute_metrics=macro_f1_metrics,
            callbacks=callbacks,
            compute_loss_func=_loss(train_params, labels, train_labels, custom_loss),
        )
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        best = trainer.evaluate() if job.val_data is not None else {}
        if main_process:
            with atomic_dir(out_dir) as tmp:
                job.save(trainer, tmp)
    finally:
        if temporary is not None:
            temporary.cleanup()
    result = TrainResult(
        train_rows=len(job.train_data), steps=int(output.global_step),
        best_val_macro_f1=round(float(best.get("eval_macro_f1", float("nan"))), 6),
        trainable_params=job.counts[0], total_params=job.counts[1], train_units=job.train_units, unit=job.unit,
        epoch_seconds=tuple(round(s, 3) for s in epoch_seconds), feature_seconds=round(job.feature_seconds, 3))
    if main_process:
        _write_summary(metrics_path, result, best)
        if temporary is None:
            shutil.rmtree(checkpoints, ignore_errors=True)  # finished: nothing to resume
    return result


def _write_summary(metrics_path: str | Path, result: TrainResult, best: dict[str, float]) -> None:
    """paths.train_metrics: rows, steps, the best checkpoint's validation figures, parameter counts."""
    write_json(metrics_path, {
        "train_rows": result.train_rows,
        "steps": result.steps,
        # Not Trainer's training_loss: after a resume that averages only the steps since the checkpoint. The
        # per-step training loss is in dvclive's plots.
        "val_loss": round(float(best.get("eval_loss", float("nan"))), 6),
        "val_macro_f1": result.best_val_macro_f1,
        "val_accuracy": round(float(best.get("eval_accuracy", float("nan"))), 6),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
    })
