"""Stage `evaluate`: score the candidate, the modality's simple baseline and the champion on the test split; decide
the gate; write the metrics, the plots' data and a report a person reads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components import modalities
from components.config import EvaluateParams, Params
from components.gate import champion_decision, check_gates, verdict
from components.io import read_json, read_labels, read_split, write_json, write_text
from components.modalities import Modality
from components.predict import Predictor
from components.stage import StageError, stage_main

log = logging.getLogger(__name__)

DIGITS = 6


@dataclass(frozen=True)
class EvaluateResult:
    """The candidate's and the baseline's test macro-F1, and whether the gate passed."""

    macro_f1: float
    baseline_macro_f1: float
    passed: bool


@dataclass(frozen=True)
class Champion:
    """The model in place: its tag, what it classifies, and it loaded for prediction."""

    tag: str
    modality: str
    predictor: Predictor


def chance_loss(train_labels: list[str], val_labels: list[str], labels: list[str]) -> float:
    """Cross-entropy on val of a constant predictor that always answers the train class frequencies (add-one
    smoothed): the loss a model that learned nothing reaches."""
    counts = np.array([train_labels.count(label) + 1 for label in labels], dtype=float)
    prior = counts / counts.sum()
    index = {label: i for i, label in enumerate(labels)}
    return float(-np.mean([np.log(prior[index[label]]) for label in val_labels if label in index]))


def prediction_share(predicted: list[str], labels: list[str]) -> dict[str, float]:
    """The share of the predictions that went to each label."""
    n = max(1, len(predicted))
    return {label: round(predicted.count(label) / n, DIGITS) for label in labels}


def load_champion(model_name: str) -> Champion | None:
    """The champion of `model_name` loaded from the BentoML store, or None when nothing was promoted yet."""
    import bentoml

    from components import registry

    tag = registry.champion(model_name)
    if tag is None:
        return None
    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise StageError(f"the champion {tag} (registry {registry.registry_file(model_name)}) is not in the BentoML "
                         "store; make a stored model the champion (`tuneline models`, then `tuneline promote TAG`)"
                         ) from None
    modality = modalities.for_model(stored.path)
    return Champion(tag, modality.name, modality.load_predictor(Path(stored.path)))


def compare_with_champion(champion: Champion, modality: Modality, model_name: str, items: list[Any],
                          truth: list[str], predicted: list[str], labels: list[str],
                          params: EvaluateParams) -> dict[str, Any]:
    """The champion scored on the same test rows, and the paired comparison of the candidate with it.

    Raises:
        StageError: the champion classifies another kind of data than the candidate.
    """
    from components import metrics as m

    if champion.modality != modality.name:
        raise StageError(f"the champion of package.model_name {model_name!r} ({champion.tag}) is a {champion.modality} "
                         f"model, and this candidate classifies {modality.items}: give each kind of model its own "
                         "name (package.model_name: tuneline-image for images, as images/params.yaml has it). "
                         "Nothing was packaged; the champion stays.")
    champion_predicted = [p.label for p in champion.predictor.predict(items, batch_size=params.batch_size)]
    champion_metrics = m.classification_metrics(truth, champion_predicted, labels)
    return {
        "tag": champion.tag,
        "accuracy": champion_metrics["accuracy"],
        "macro": champion_metrics["macro"],
        "difference": m.paired_bootstrap_difference(truth, predicted, champion_predicted, labels,
                                                    params.bootstrap_resamples, params.confidence, params.seed),
        "mcnemar": m.mcnemar(truth, predicted, champion_predicted),
    }


def candidate_probabilities(predictor: Predictor, items: list[Any], params: EvaluateParams,
                            model_dir: str | Path) -> np.ndarray:
    """The candidate's probabilities for the test items, or a StageError when training diverged (non-finite)."""
    probabilities = predictor.predict_proba(items, batch_size=params.batch_size)
    broken = int((~np.isfinite(probabilities).all(axis=1)).sum())
    if broken:
        raise StageError(f"the candidate gives non-finite (NaN or infinite) probabilities for {broken} of "
                         f"{len(items)} test items: training diverged; lower train.learning_rate (now in "
                         f"{model_dir}/tuneline.json) and rerun. Nothing was packaged; the champion stays.")
    return probabilities


def training_figures(train_metrics_path: str | Path | None, train: pd.DataFrame, val: pd.DataFrame,
                     labels: list[str]) -> dict[str, float] | None:
    """The best validation loss and a constant predictor's, for the collapse check; None without them."""
    if train_metrics_path is None or not Path(train_metrics_path).is_file() or val.empty:
        return None
    val_loss = read_json(train_metrics_path).get("val_loss")
    if val_loss is None or val_loss != val_loss:  # NaN when training had no validation split
        return None
    return {"val_loss": float(val_loss),
            "chance_loss": chance_loss(train["label"].tolist(), val["label"].tolist(), labels)}


def write_outputs(test: pd.DataFrame, column: str, items: list[Any], truth: list[str], predicted: list[str],
                  probabilities: np.ndarray, results: dict[str, Any], decision: dict[str, Any], labels: list[str],
                  paths: dict[str, str | Path | None]) -> None:
    """The plots' data (predictions, per class, reliability) and the markdown report, where paths name them."""
    from components import metrics as m
    from components.report import render_report

    top = probabilities.max(axis=1)
    true_index = np.array([labels.index(label) for label in truth])
    if paths.get("predictions") is not None:
        _write_csv(paths["predictions"], pd.DataFrame({
            "source_row": test["source_row"] if "source_row" in test else range(len(test)),
            "label": truth, "predicted": predicted, "probability": np.round(top, DIGITS), column: items}))
    if paths.get("per_class") is not None:
        _write_csv(paths["per_class"], pd.DataFrame([
            {"class": label, **{k: figures[k] for k in ("precision", "recall", "f1", "support")}}
            for label, figures in results["model"]["per_class"].items()]))
    if paths.get("reliability") is not None:
        _write_csv(paths["reliability"], pd.DataFrame(m.reliability_bins(probabilities, true_index)))
    if paths.get("reliability_uncalibrated") is not None:
        from components.calibration import temperature_scale

        raw = temperature_scale(probabilities, 1 / results["model"]["temperature"])
        _write_csv(paths["reliability_uncalibrated"], pd.DataFrame(m.reliability_bins(raw, true_index)))
    if paths.get("report") is not None:
        mistakes = m.most_confident_mistakes(items, truth, predicted, top.tolist())
        write_text(paths["report"], render_report(results, decision, mistakes, m.confusion(truth, predicted, labels),
                                                  labels))


def score(probabilities: np.ndarray, truth: list[str], labels: list[str], params: EvaluateParams,
          temperature: float = 1.0) -> dict[str, Any]:
    """The candidate's test metrics: classification figures, prediction shares, bootstrap intervals, calibration
    of the probabilities served (temperature-scaled) and of the network's own."""
    from components import metrics as m
    from components.calibration import temperature_scale

    predicted = [labels[i] for i in probabilities.argmax(axis=1)]
    model_metrics = m.classification_metrics(truth, predicted, labels)
    model_metrics["prediction_share"] = prediction_share(predicted, labels)
    model_metrics["intervals"] = m.bootstrap_intervals(truth, predicted, labels, params.bootstrap_resamples,
                                                       params.confidence, params.seed)
    true_index = np.array([labels.index(label) for label in truth])
    model_metrics["ece"] = round(m.expected_calibration_error(probabilities, true_index), DIGITS)
    model_metrics["ece_uncalibrated"] = round(m.expected_calibration_error(
        temperature_scale(probabilities, 1 / temperature), true_index), DIGITS)
    model_metrics["temperature"] = temperature
    return model_metrics


def run(params: EvaluateParams, model_dir: str | Path, prepared_dir: str | Path, metrics_path: str | Path,
        verdict_path: str | Path, *, model_name: str | None = None, train_metrics_path: str | Path | None = None,
        predictions_path: str | Path | None = None, per_class_path: str | Path | None = None,
        reliability_path: str | Path | None = None, reliability_uncalibrated_path: str | Path | None = None,
        report_path: str | Path | None = None) -> EvaluateResult:
    """Score the candidate, the modality's simple baseline and the champion on the test split; decide the gate.

    A refused candidate is not an error here: the verdict records it and the package stage refuses to ship.

    Args:
        params: the evaluate block (gate floors, collapse checks, champion comparison, inference batch size).
        model_dir: the trained model folder (its tuneline.json says what it classifies).
        prepared_dir: folder with the train, val and test splits and labels.json.
        metrics_path: where the test metrics go (a DVC metrics file).
        verdict_path: where the gate verdict goes (a DVC metrics file).
        model_name: package.model_name, whose champion the candidate is compared with; None = no comparison.
        train_metrics_path: the train stage's summary (its val_loss feeds the collapse check).
        predictions_path: every test row with its true and predicted label and probability (CSV; the confusion plot).
        per_class_path: per-class precision, recall and F1 (CSV; a bar plot).
        reliability_path: the reliability diagram's bins (CSV), of the probabilities served (temperature-scaled).
        reliability_uncalibrated_path: the same, of the network's own probabilities (before the temperature).
        report_path: the markdown report a person reads.

    Returns:
        The model's and the baseline's macro-F1 and the verdict.
    """
    from components import metrics as m

    labels = read_labels(prepared_dir)
    train, val, test = (read_split(prepared_dir, split) for split in ("train", "val", "test"))
    if test.empty:
        raise StageError("the test split is empty; add data or raise data.test_fraction in params.yaml")
    modality = modalities.for_model(model_dir)
    held = modalities.for_prepared(prepared_dir)
    if held.name != modality.name:
        raise StageError(f"the model in {model_dir} classifies {modality.items}, but {prepared_dir} holds "
                         f"{held.items}; rerun train (dvc repro train)")
    predictor = modality.load_predictor(Path(model_dir))
    if predictor.labels != labels:
        raise StageError(f"the model's labels {predictor.labels} differ from the data's {labels}; rerun train")
    truth = test["label"].tolist()
    items = modality.inputs(test, Path(prepared_dir))
    probabilities = candidate_probabilities(predictor, items, params, model_dir)
    predicted = [labels[i] for i in probabilities.argmax(axis=1)]
    model_metrics = score(probabilities, truth, labels, params, predictor.temperature)
    baseline_name, baseline = modality.baseline(train, test, Path(prepared_dir))
    baseline_metrics = m.classification_metrics(truth, baseline, labels)
    champion = load_champion(model_name) if model_name else None
    comparison = compare_with_champion(champion, modality, model_name, items, truth, predicted, labels, params) \
        if champion is not None else None
    checks = check_gates(model_metrics, baseline_metrics, params, training_figures(train_metrics_path, train, val,
                                                                                   labels), baseline_name)
    decision = verdict(checks, champion_decision(comparison["difference"] if comparison else None, params),
                       comparison)
    results = {"model": model_metrics, "baseline": baseline_metrics, "champion": comparison, "test_rows": len(test),
               "baseline_name": baseline_name}
    write_json(metrics_path, results)
    write_json(verdict_path, decision)
    write_outputs(test, modality.column, items, truth, predicted, probabilities, results, decision, labels,
                  {"predictions": predictions_path, "per_class": per_class_path, "reliability": reliability_path,
                   "reliability_uncalibrated": reliability_uncalibrated_path, "report": report_path})
    interval = model_metrics["intervals"]["macro_f1"]
    print(f"test macro-F1: model {model_metrics['macro']['f1']:.4f} [{interval[0]:.4f}, {interval[1]:.4f}], "
          f"{baseline_name} {baseline_metrics['macro']['f1']:.4f} ({len(test)} test rows)")
    for check in decision["checks"]:
        print(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['message']}")
    print(f"decision: {decision['decision']}: {decision['reason']}")
    return EvaluateResult(macro_f1=model_metrics["macro"]["f1"], baseline_macro_f1=baseline_metrics["macro"]["f1"],
                          passed=decision["passed"])


def _write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """A CSV with a fixed float format, so the same predictions give the same bytes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6f", lineterminator="\n")


def main() -> None:
    def _run(p: Params) -> EvaluateResult:
        return run(p.evaluate, p.paths.model, p.paths.prepared, p.paths.metrics, p.paths.verdict,
                   model_name=p.package.model_name, train_metrics_path=p.paths.train_metrics,
                   predictions_path=p.paths.predictions, per_class_path=p.paths.per_class,
                   reliability_path=p.paths.reliability,
                   reliability_uncalibrated_path=p.paths.reliability_uncalibrated,
                   report_path=p.paths.evaluation_report)

    stage_main("evaluate", _run)


if __name__ == "__main__":
    main()
