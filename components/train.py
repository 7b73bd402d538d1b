"""Stage `train`: fine-tune a pretrained backbone with a new classification head through the training engine.

The modality builds the model (its backbone, the new head, freezing) and its datasets; components/engine.py trains
it with transformers' Trainer, whatever the modality: AdamW with warmup and decay, early stopping on validation
macro-F1, checkpoints a killed run resumes from, dvclive curves. With model.freeze_backbone and train.feature_cache
the frozen backbone runs once per data version and the head trains on its cached vectors (components/features.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from components import modalities, recipe
from components.config import AugmentParams, ModelParams, Params, TrainParams
from components.engine import CandidateScore, Job, TrainResult, fit, mixed_precision, run_fingerprint, training_data
from components.features import NotCacheable, on_cached_features
from components.io import META_FILE, read_json, write_json
from components.modalities import Built, Modality
from components.model import parameter_counts
from components.stage import StageError, stage_main

log = logging.getLogger(__name__)


def resolved(params: TrainParams, model: ModelParams, modality: Modality, train: pd.DataFrame, labels: list[str],
             world_size: int = 1) -> tuple[TrainParams, str]:
    """params with every `auto` key decided (components/recipe.py), and the line that says what was chosen."""
    chosen = recipe.choose(params, AugmentParams(copies_per_example=0.0), model,
                           recipe.original_rows_per_class(train, labels), modality.contrastive)
    epochs = recipe.epochs(params, len(train), world_size)
    line = chosen.describe()  # the augment stage says what it chose for the copies
    if params.epochs == recipe.AUTO:
        line += f"{',' if chosen.chosen else ';'} epochs {epochs:g} ({len(train)} train rows in batches of " \
                f"{params.batch_size * params.gradient_accumulation_steps * world_size})"
    loss = recipe.contrastive_loss(params, len(labels))
    passes = recipe.contrastive_epochs(params, chosen.rows_per_class)
    rounds = recipe.contrastive_pairs(params, chosen.rows_per_class)
    if chosen.method == "contrastive":  # the contrastive keys the rule decided, each named with its value
        for key, value in (("contrastive_loss", f"{loss} ({len(labels)} labels)"),
                           ("contrastive_epochs", f"{passes:g}"), ("contrastive_pairs", rounds)):
            if getattr(params, key) == recipe.AUTO:
                line += f", train.{key} {value}"
    log.info("%s", line)
    return params.model_copy(update={"method": chosen.method, "learning_rate": chosen.learning_rate,
                                     "epochs": epochs, "contrastive_loss": loss,
                                     "contrastive_epochs": passes, "contrastive_pairs": rounds}), line


def write_ranking(path: str | Path, chosen: str, ranking: list[CandidateScore]) -> None:
    """The model trained and, when model.candidates were ranked, every candidate's score, best first."""
    write_json(path, {"chosen": chosen, "candidates": [asdict(score) for score in ranking]})


def choose_model(modality: Modality, model_params: ModelParams, train_params: TrainParams, train: pd.DataFrame,
                 val: pd.DataFrame, labels: list[str], device: str, cache_dir: Path | None,
                 selection_path: str | Path | None) -> ModelParams:
    """model.candidates ranked by the modality (a linear probe each, on val), the best one as model.name_or_path;
    the ranking is written to selection_path (by the main process)."""
    ranking = modality.rank_candidates(model_params, train_params, train, val, labels, device, cache_dir) \
        if model_params.candidates else []
    if ranking:
        model_params = model_params.model_copy(update={"name_or_path": ranking[0].name})
        log.info("model.candidates: %s ranks first (val macro-F1 %.4f with a linear probe)", ranking[0].name,
                 ranking[0].val_macro_f1)
    if int(os.environ.get("RANK", "0")) == 0 and selection_path is not None:
        write_ranking(selection_path, model_params.name_or_path, ranking)
    return model_params


def _saver(built: Built, modality: Modality, labels: list[str], model_params: ModelParams,
           train_params: TrainParams) -> Any:
    """How the finished model is saved: the modality's weights, and tuneline.json beside them."""

    def save(trainer: Any, folder: Path) -> None:
        built.save(trainer, folder)
        write_json(folder / META_FILE, {
            "modality": modality.name,
            "labels": labels,
            **built.meta,
            "model": model_params.model_dump(mode="json"),
            "train": train_params.model_dump(mode="json"),
            modality.name: modality.settings.model_dump(mode="json"),
        })

    return save


def plan(modality: Modality, built: Built, train: pd.DataFrame, val: pd.DataFrame, folders: tuple[Path, Path],
         labels: list[str], model_params: ModelParams, train_params: TrainParams, device: str,
         cache_dir: Path | None, world_size: int) -> Job:
    """The Trainer job for a built model: its datasets (train from the augmented folder, val from the prepared
    one), or the head alone on cached features when only the head trains, and the run's fingerprint."""
    label_ids = {label: index for index, label in enumerate(labels)}
    train_set = modality.dataset(built, train, folders[0], label_ids, train_params)
    val_set = modality.dataset(built, val, folders[1], label_ids, train_params) if len(val) else None
    collator, grouping = modality.collator(built, train_params)
    trained, train_data, val_data, seconds = built.model, train_set, val_set, 0.0
    if model_params.freeze_backbone and train_params.feature_cache and world_size == 1:
        from transformers import default_data_collator

        try:
            trained, train_data, val_data, seconds = on_cached_features(
                modality, built, train_set, val_set, train_params.batch_size * 4, device, cache_dir)
            collator, grouping = default_data_collator, False
        except NotCacheable as exc:
            log.info("feature cache off: %s", exc)
    fingerprint = run_fingerprint(model_params, train_params, built.source,
                                  *(frame.reindex(columns=[modality.column, "label"]) for frame in (train, val)),
                                  settings={modality.name: modality.settings.model_dump(mode="json")})
    return Job(trained=trained, train_data=train_data, val_data=val_data, collator=collator,
               save=_saver(built, modality, labels, model_params, train_params), checkpoint_id=fingerprint,
               counts=parameter_counts(built.model), train_units=train_set.size(), unit=built.unit,
               length_grouping=grouping, thaw=built.thaw, feature_seconds=seconds)


def calibrate(modality: Modality, model_dir: Path, val: pd.DataFrame, prepared_dir: Path, labels: list[str],
              device: str, batch_size: int, metrics_path: str | Path) -> dict[str, float]:
    """Fit the temperature on the val split with the saved model (components/calibration.py), write it into the
    model's tuneline.json, and add the val split's calibration before and after to the training summary."""
    import numpy as np

    from components.calibration import fit_temperature, negative_log_likelihood, temperature_scale
    from components.metrics import expected_calibration_error
    from components.predict import read_meta

    raw = modality.load_model(model_dir, device).predict_proba(modality.inputs(val, prepared_dir), batch_size)
    true_index = np.array([labels.index(label) for label in val["label"]])
    temperature = fit_temperature(raw, true_index)
    scaled = temperature_scale(raw, temperature)
    figures = {"temperature": temperature,
               "val_ece": expected_calibration_error(raw, true_index),
               "val_ece_calibrated": expected_calibration_error(scaled, true_index),
               "val_nll": round(negative_log_likelihood(raw, true_index), 6),
               "val_nll_calibrated": round(negative_log_likelihood(scaled, true_index), 6)}
    write_json(model_dir / META_FILE, {**read_meta(model_dir), "temperature": temperature})
    write_json(metrics_path, {**read_json(metrics_path), **figures})
    log.info("temperature %.4f fitted on %d val %s: expected calibration error %.4f -> %.4f", temperature, len(val),
             modality.items, figures["val_ece"], figures["val_ece_calibrated"])
    return figures


def run(model_params: ModelParams, train_params: TrainParams, modality: Modality, augmented_dir: str | Path,
        prepared_dir: str | Path, out_dir: str | Path, metrics_path: str | Path, *,
        work_dir: str | Path | None = None, live_dir: str | Path | None = None,
        selection_path: str | Path | None = None, feature_cache: str | Path | None = None,
        callbacks: list[Any] | None = None) -> TrainResult:
    """Fine-tune the pretrained model on the (augmented) train split, selecting the best checkpoint on val macro-F1.

    Args:
        model_params: backbone (or candidates to rank), head, freezing, adapter.
        train_params: optimiser, schedule, epochs, early stopping, padding, cache, checkpoints, device.
        modality: what the prepared data holds, with its block of params.yaml.
        augmented_dir: folder with train.jsonl (the augmented train split).
        prepared_dir: folder with val.jsonl and labels.json.
        out_dir: where the fine-tuned model and its tuneline.json go (atomically).
        metrics_path: where the training summary goes.
        work_dir: where checkpoints (resumed after a kill) and the frozen-feature cache live; None = a temp folder,
            so nothing is resumed or cached.
        live_dir: dvclive's folder for per-step loss, learning rate and validation metrics; None = no dvclive.
        selection_path: where the ranking of model.candidates goes.
        feature_cache: the frozen-feature cache's folder when it is not work_dir/features (a search shares one).
        callbacks: more Trainer callbacks (a search's pruning).

    Returns:
        Training summary: rows, steps, best validation macro-F1, parameter counts, epoch wall times.
    """
    from transformers import set_seed

    labels, _, train, val, device = training_data(augmented_dir, prepared_dir, train_params)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    train_params, chosen = resolved(train_params, model_params, modality, train, labels, world_size)
    cache_dir = Path(feature_cache) if feature_cache is not None else \
        Path(work_dir) / "features" if work_dir is not None else None
    model_params = choose_model(modality, model_params, train_params, train, val, labels, device, cache_dir,
                                selection_path)
    method, epochs = train_params.method, train_params.epochs
    if method == "contrastive" and not model_params.freeze_backbone:
        log.info("train.method contrastive: the tuned encoder stays frozen while the head trains")
        model_params = model_params.model_copy(update={"freeze_backbone": True})
    precision = mixed_precision(train_params, device)  # a precision the device cannot run stops here, before any work
    set_seed(train_params.seed)
    built = modality.build(labels, model_params)
    tuned = modality.tune_contrastively(built, train, train_params, device) if method == "contrastive" else {}
    if built.thaw is not None:
        if world_size > 1:
            raise StageError("model.gradual_unfreeze changes which layers train mid-run, which DDP does not allow; "
                             "set train.num_processes to 1 or gradual_unfreeze to 0")
        built.thaw.apply(0, built.model)  # the first epoch trains the head only
    trainable, total = parameter_counts(built.model)
    log.info("trainable parameters: %s of %s (%.2f%%), %s, device %s (%s), %d process(es)", f"{trainable:,}",
             f"{total:,}", 100 * trainable / total, built.meta.get("base_model"), device, precision, world_size)
    job = plan(modality, built, train, val, (Path(augmented_dir), Path(prepared_dir)), labels, model_params,
               train_params, device, cache_dir, world_size)
    # The model's own loss is plain cross-entropy. Ours under DDP: there Trainer multiplies the loss by the process
    # count, assuming it was divided by the items in the whole (all-process) batch, which ours is and BERT's own
    # mean is not (its gradients came out doubled with 2 processes).
    result = fit(job, train_params=train_params, device=device, labels=labels,
                 train_labels=train["label"].astype(str).tolist(), out_dir=out_dir, metrics_path=metrics_path,
                 work_dir=work_dir, live_dir=live_dir, world_size=world_size, custom_loss=world_size > 1,
                 extra_callbacks=callbacks)
    log.info("trained %d steps on %d %s; best validation macro-F1 %.4f", result.steps, result.train_rows,
             modality.items, result.best_val_macro_f1)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(metrics_path, {**read_json(metrics_path), "epochs": epochs, "method": method,
                                  "learning_rate": train_params.learning_rate, "precision": precision, "recipe": chosen,
                                  **tuned})
    if train_params.calibrate and len(val) and int(os.environ.get("RANK", "0")) == 0:
        calibrate(modality, Path(out_dir), val, Path(prepared_dir), labels, device, train_params.batch_size * 2,
                  metrics_path)
    return result


NODE_RANK = "TUNELINE_NODE_RANK"  # which node this is, when params.yaml is the same file on every node


def node_rank(params: TrainParams) -> int | None:
    """This node's rank: the environment's TUNELINE_NODE_RANK, else train.node_rank (None: the rendezvous assigns)."""
    given = os.environ.get(NODE_RANK, "").strip()
    if not given:
        return params.node_rank
    if not given.isdigit() or int(given) >= params.nnodes:
        raise StageError(f"{NODE_RANK}={given!r} is not a node of train.nnodes {params.nnodes}; set it to 0 to "
                         f"{params.nnodes - 1}, a different one on each node")
    return int(given)


def launch_command(params: TrainParams) -> list[str]:
    """The command that runs this stage as `params.num_processes` data-parallel processes on this node, one node of
    `params.nnodes` (torchrun's own rendezvous: static with a node rank, elastic c10d without one)."""
    import sys

    n = str(params.num_processes)
    rank = node_rank(params)
    host, _, port = (params.rdzv_endpoint or "").rpartition(":")
    if params.launcher == "accelerate":
        # --multi_gpu is accelerate's torch.distributed.run launcher; on a CPU its processes use gloo.
        nodes = ["--num_machines", str(params.nnodes)]
        if params.nnodes > 1:
            nodes += ["--machine_rank", str(rank), "--main_process_ip", host, "--main_process_port", port]
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(params.num_processes * params.nnodes), *nodes, "-m", "components.train"]
    if params.nnodes == 1:
        nodes = ["--standalone"]
    elif rank is None:
        nodes = ["--nnodes", str(params.nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", params.rdzv_endpoint,
                 "--rdzv_id", "tuneline-train"]
    else:
        nodes = ["--nnodes", str(params.nnodes), "--node_rank", str(rank), "--master_addr", host, "--master_port", port]
    return [sys.executable, "-m", "torch.distributed.run", *nodes, "--nproc_per_node", n, "-m", "components.train"]


LAUNCHED = "TUNELINE_TRAIN_LAUNCHED"  # set for the processes a launcher starts: they train, never launch again


def main() -> None:
    import subprocess

    def _run(p: Params) -> TrainResult | None:
        if p.train.world_size > 1 and "WORLD_SIZE" not in os.environ:
            if os.environ.get(LAUNCHED):
                raise StageError(f"{p.train.launcher} started the stage without a distributed environment "
                                 "(no WORLD_SIZE); try train.launcher: torchrun")
            rank = node_rank(p.train)
            if p.model.freeze_backbone and p.train.feature_cache:
                log.info("train.num_processes %d on %d node(s), but a linear probe on cached features needs one "
                         "process (on node 0)", p.train.num_processes, p.train.nnodes)
                if p.train.nnodes > 1 and rank != 0:
                    log.info("this is node %s: nothing to do here", rank)
                    return None
            else:
                command = launch_command(p.train)
                log.info("launching %d process(es) on node %s of %d: %s", p.train.num_processes, rank,
                         p.train.nnodes, " ".join(command))
                code = subprocess.call(command, env={**os.environ, LAUNCHED: "1"})
                if code:
                    raise StageError(f"the {p.train.num_processes} training processes ({p.train.launcher}) exited "
                                     f"with status {code}; their log is above")
                return None
        return run(p.model, p.train, modalities.for_prepared(p.paths.prepared, p), p.paths.augmented,
                   p.paths.prepared, p.paths.model, p.paths.train_metrics, work_dir=p.paths.work_dir,
                   live_dir=p.paths.train_live, selection_path=p.paths.model_selection)

    stage_main("train", _run)


if __name__ == "__main__":
    main()
