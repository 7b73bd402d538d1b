"""`tuneline tune`: a hyperparameter search with Optuna over the keys of params.yaml that tune.space names.

Each trial is the train stage itself (components/train.py: the shared engine, its frozen-feature cache, its
early stopping), run in this process on the prepared and augmented data as DVC left them, with the trial's values in
place of params.yaml's, and scored on the val split's best macro-F1. The test split is never read: evaluate scores
the best trial's params afterwards, through the normal pipeline and its gate. After each evaluation of the val split
the trial reports its macro-F1 to Optuna and stops there when the pruner says it cannot catch up.

The study lives in a database (tune.storage: SQLite in the project by default, any SQLAlchemy URL), so a killed
search resumes where it stopped, and several processes or machines pointed at one database split its trials:
Optuna's RDB storage, with a heartbeat so that a trial whose worker died is run again. `tune.trials` is the number of
finished (complete or pruned) trials the study aims at, whoever ran them.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from components import modalities
from components.config import PARAMS_FILE, Dimension, Params, parse_params
from components.io import write_json
from components.stage import StageError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED")
DEFAULT = "default"  # the user attribute of the trial that runs params.yaml unchanged


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw[a][b][c] = value for dotted "a.b.c", making the blocks on the way."""
    *blocks, last = dotted.split(".")
    for block in blocks:
        raw = raw.setdefault(block, {})
    raw[last] = value


def suggest(trial: optuna.Trial, key: str, dimension: Dimension) -> Any:
    """The trial's value for one key of tune.space."""
    if dimension.choices is not None:
        return trial.suggest_categorical(key, dimension.choices)
    whole = all(float(bound).is_integer() for bound in (dimension.low, dimension.high)) and (
        dimension.step is None or float(dimension.step).is_integer())
    if whole and not dimension.log and dimension.step is not None:
        return trial.suggest_int(key, int(dimension.low), int(dimension.high), step=int(dimension.step))
    return trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log, step=dimension.step)


def trial_params(raw: dict[str, Any], values: dict[str, Any]) -> Params:
    """params.yaml's params with the trial's values in place (checked as params.yaml is)."""
    import copy

    changed = copy.deepcopy(raw)
    for key, value in values.items():
        set_key(changed, key, value)
    return parse_params(changed, source=f"tune.space's values {values}")


def _pruning_callback(trial: optuna.Trial, deadline: float | None = None) -> Any:
    """A Trainer callback that reports each evaluation's val macro-F1 to the trial and stops a trial the pruner
    gives up on (Optuna's TrialPruned, raised out of the training loop: the trial ends at that evaluation). Past
    `deadline` (time.monotonic(): the search's tune.timeout_s) it stops the trial at the next step, pruned, so the
    budget holds even when a long trial started just before it ran out."""
    import optuna
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        def __init__(self) -> None:
            self.curve: list[float] = []
            self.steps: list[int] = []

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            value = (metrics or {}).get("eval_macro_f1")
            if value is None or (self.steps and self.steps[-1] == state.global_step):
                return  # the final re-evaluation of the best checkpoint is not a new point of the curve
            self.curve.append(float(value))
            self.steps.append(int(state.global_step))
            trial.set_user_attr("curve", self.curve)
            trial.report(float(value), len(self.curve) - 1)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val macro-F1 {value:.4f} at evaluation {len(self.curve)} is below what "
                                         f"the pruner asks of that point")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if deadline is not None and time.monotonic() > deadline:
                trial.set_user_attr("stopped_by", "tune.timeout_s")
                raise optuna.TrialPruned("the search's time budget (tune.timeout_s) ran out during this trial")

    return Pruning()


def storage(params: Params) -> optuna.storages.RDBStorage:
    """The study's database, with the heartbeat that retries a trial whose worker stopped answering."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's retry
    url = params.tune.storage
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(url, heartbeat_interval=params.tune.heartbeat_s, grace_period=4 * params.tune.heartbeat_s,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                          engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
    except (optuna.exceptions.StorageInternalError, ImportError, ValueError) as exc:
        raise StageError(f"tune.storage {url!r} cannot be opened ({exc}); give an SQLAlchemy URL such as "
                         f"sqlite:///.tuneline/tune.db or postgresql://user@host/db") from exc


def _sampler(params: Params, offset: int) -> Any:
    import optuna

    # seeded per process start (tune.seed + trials already in the study): a resumed or second worker does not
    # replay the first one's draws
    seed = params.tune.seed + offset
    # constant_liar: trials running in other workers count as bad guesses, so workers spread out
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True) if params.tune.sampler == "tpe" else \
        optuna.samplers.RandomSampler(seed=seed)


def _pruner(params: Params) -> Any:
    import optuna

    if params.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if params.tune.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def is_default(trial: optuna.Trial) -> bool:
    """Whether the trial runs params.yaml as it is (auto keys resolved by the train stage as usual): the study's
    trial 0 unless it was enqueued with values of its own, or a retry of that trial. Trial numbers come from the
    storage, so of several workers starting one new study exactly one runs it."""
    if trial.user_attrs.get(DEFAULT):
        return True
    if trial.number != 0:
        return False
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == 0)
    return not frozen.system_attrs.get("fixed_params")


def finished(study: optuna.Study) -> int:
    return sum(trial.state.name in FINISHED for trial in study.get_trials(deepcopy=False))


def run(params: Params, *, trials: int | None = None, timeout_s: float | None = None,
        study_name: str | None = None) -> dict[str, Any]:
    """Run (or resume, or join) the study until it holds `trials` finished trials or `timeout_s` passes; write the
    summary (paths.tune), the table of trials (paths.tune_trials, paths.tune_report) and return the summary.

    Runs in the project root (params.yaml's paths are relative to it). The data must be prepared and augmented.

    Raises:
        StageError: no prepared data yet, or the storage cannot be opened.
    """
    import optuna

    from components.train import run as train

    paths = params.paths
    if not (Path(paths.prepared) / "labels.json").is_file() or not Path(paths.augmented).is_dir():
        raise StageError(f"no prepared and augmented data in {paths.prepared} and {paths.augmented}; run the "
                         f"pipeline up to augment first (dvc repro augment)")
    wanted = trials or params.tune.trials
    limit = timeout_s if timeout_s is not None else params.tune.timeout_s
    name = study_name or params.tune.study or params.package.model_name
    raw = yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8"))
    modality = modalities.for_prepared(paths.prepared, params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage(params)
    study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True,
                                pruner=_pruner(params))
    study.sampler = _sampler(params, len(study.get_trials(deepcopy=False)))
    folder = Path(paths.work_dir) / "tune" / name
    began = time.monotonic()

    def objective(trial: optuna.Trial) -> float:
        if params.tune.include_default and is_default(trial):
            trial.set_user_attr(DEFAULT, True)
            values = {}
        else:
            values = {key: suggest(trial, key, dimension) for key, dimension in params.tune.space.items()}
        chosen = trial_params(raw, values)
        here = folder / f"trial-{trial.number}"
        pruning = _pruning_callback(trial, None if limit is None else began + limit)
        started = time.monotonic()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        log.info("trial %d: %s", trial.number, values or "params.yaml as it is (the default recipe)")
        try:
            result = train(chosen.model, chosen.train, modality, paths.augmented, paths.prepared, here / "model",
                           here / "train.json", live_dir=here / "live", feature_cache=Path(paths.work_dir) / "features",
                           callbacks=[pruning])
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
            shutil.rmtree(here / "model", ignore_errors=True)  # the pipeline retrains the best params anyway
        log.info("trial %d: val macro-F1 %.4f (%d steps)", trial.number, result.best_val_macro_f1, result.steps)
        return result.best_val_macro_f1

    already = finished(study)
    if already < wanted:
        study.optimize(objective, timeout=limit, catch=(StageError, ValueError),
                       callbacks=[optuna.study.MaxTrialsCallback(
                           wanted, states=tuple(optuna.trial.TrialState[state] for state in FINISHED))])
    summary = summarise(study, params, wanted) | {"baseline": baseline_on_val(modality, paths)}
    write_outputs(study, summary, params)
    return summary


def baseline_on_val(modality: modalities.Modality, paths: Any) -> dict[str, Any]:
    """The modality's simple baseline (the gate's: TF-IDF for texts) fitted on train, scored on val, the yardstick a
    trial must clear before the pipeline is worth running on its params (the gate then compares them on test)."""
    from components import metrics as m
    from components.io import read_labels, read_split

    labels = read_labels(paths.prepared)
    train, val = read_split(paths.prepared, "train"), read_split(paths.prepared, "val")
    name, predicted = modality.baseline(train, val, Path(paths.prepared))
    scores = m.classification_metrics(val["label"].astype(str).tolist(), predicted, labels)
    return {"name": name, "val_macro_f1": round(float(scores["macro"]["f1"]), 6)}


def outcome(summary: dict[str, Any]) -> str:
    """What a finished search says to do with its best trial: "none" (no trial finished), "baseline" (none beat
    the baseline on val, so the gate would refuse it too), "default" (params.yaml as it is was best) or "apply"."""
    best = summary["best"]
    if best is None:
        return "none"
    if best["val_macro_f1"] <= summary["baseline"]["val_macro_f1"]:
        return "baseline"
    return "default" if best["default"] else "apply"


def summarise(study: optuna.Study, params: Params, wanted: int) -> dict[str, Any]:
    """The study in figures: trials by state, the best finished trial's params and val macro-F1."""
    trials = study.get_trials(deepcopy=False)
    states = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL",
                                                                               "RUNNING", "WAITING")}
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and not math.isnan(t.value)]
    best = max(complete, key=lambda t: t.value) if complete else None
    return {"study": study.study_name, "storage": params.tune.storage, "trials_wanted": wanted,
            "trials": states, "best": None if best is None else
            {"trial": best.number, "val_macro_f1": round(best.value, 6), "params": best.params,
             "default": bool(best.user_attrs.get(DEFAULT)), "seconds": best.user_attrs.get("seconds")}}


def write_outputs(study: optuna.Study, summary: dict[str, Any], params: Params) -> None:
    """paths.tune (the summary), paths.tune_trials (a row per trial: a plot reads it) and paths.tune_report."""
    keys = list(params.tune.space)
    rows = []
    best_so_far = -math.inf
    for trial in study.get_trials(deepcopy=False):
        value = trial.value if trial.state.name == "COMPLETE" else None
        if value is not None:
            best_so_far = max(best_so_far, value)
        curve = trial.user_attrs.get("curve", [])
        state = trial.state.name.lower() + (" (time budget)" if trial.user_attrs.get("stopped_by") else "")
        rows.append({"trial": trial.number, "state": state,
                     "val_macro_f1": "" if value is None else round(value, 6),
                     "best_so_far": "" if best_so_far == -math.inf else round(best_so_far, 6),
                     "evaluations": len(curve), "curve": " ".join(f"{v:.4f}" for v in curve),
                     "seconds": trial.user_attrs.get("seconds", ""),
                     **{key: trial.params.get(key, "default" if trial.user_attrs.get(DEFAULT) else "")
                        for key in keys}})
    write_json(params.paths.tune, summary)
    Path(params.paths.tune_trials).parent.mkdir(parents=True, exist_ok=True)
    with open(params.paths.tune_trials, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Search {summary['study']} ({params.tune.storage})", "",
             "Trials score on the val split's macro-F1; the test split was not read. " + ", ".join(
                 f"{count} {state.lower()}" for state, count in summary["trials"].items() if count) + ".", "",
             "| trial | state | val macro-F1 | per evaluation | seconds | " + " | ".join(keys) + " |",
             "|" + "---|" * (5 + len(keys))]
    for row in rows:
        lines.append(f"| {row['trial']} | {row['state']} | {row['val_macro_f1']} | {row['curve']} | {row['seconds']} | "
                     + " | ".join(str(row[key]) for key in keys) + " |")
    best = summary["best"]
    baseline = summary.get("baseline")
    lines += ["", "No trial finished." if not best else
              f"Best: trial {best['trial']}, val macro-F1 {best['val_macro_f1']:.4f}, " +
              ("params.yaml as it is: the default recipe was best" if best["default"] else str(best["params"]))]
    if baseline:
        lines.append(f"{baseline['name']} (the gate's baseline) on val: macro-F1 {baseline['val_macro_f1']:.4f}.")
    Path(params.paths.tune_report).write_text("\n".join(lines) + "\n", encoding="utf-8")


def apply(params_path: str | Path, values: dict[str, Any]) -> None:
    """Write the values into params.yaml, keeping its comments and layout (ruamel.yaml's round trip)."""
    from ruamel.yaml import YAML

    handler = YAML()
    handler.preserve_quotes = True
    handler.width = 4096  # never re-wrap a line
    handler.representer.add_representer(  # null stays `null`, not an empty value
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    path = Path(params_path)
    document = handler.load(path.read_text(encoding="utf-8"))
    for key, value in values.items():
        set_key(document, key, value)
    with open(path, "w", encoding="utf-8") as out:
        handler.dump(document, out)
