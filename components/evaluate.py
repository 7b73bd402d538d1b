"""Stage `evaluate`: score the candidate, a TF-IDF baseline and the champion on the test split; decide the gate;
write the metrics, the plots' data and a report a person reads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import EvaluateParams, Params
from components.gate import champion_decision, check_gates, verdict
from components.io import read_json, read_labels, read_split, write_json
from components.predict import Classifier
from components.stage import StageError, stage_main

log = logging.getLogger(__name__)

DIGITS = 6


@dataclass(frozen=True)
class EvaluateResult:
    """The candidate's and the baseline's test macro-F1, and whether the gate passed."""

    macro_f1: float
    baseline_macro_f1: float
    passed: bool


def baseline_predictions(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> list[str]:
    """Predictions of TF-IDF (word 1-2 grams) + logistic regression trained on the same train split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
    )
    pipeline.fit(train["text"], train["label"])
    return [str(label) for label in pipeline.predict(test["text"])]


def baseline_name(images: bool) -> str:
    """What the simple baseline is, as reports and the command line name it."""
    return "thumbnail logistic regression" if images else "TF-IDF baseline"


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


def load_champion(model_name: str) -> tuple[str, Classifier] | None:
    """The champion's tag and classifier, or None when nothing was promoted yet."""
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
    return tag, Classifier.load(stored.path)


def run(params: EvaluateParams, model_dir: str | Path, prepared_dir: str | Path, metrics_path: str | Path,
        verdict_path: str | Path, *, model_name: str | None = None, train_metrics_path: str | Path | None = None,
        predictions_path: str | Path | None = None, per_class_path: str | Path | None = None,
        reliability_path: str | Path | None = None, report_path: str | Path | None = None) -> EvaluateResult:
    """Score the candidate, the TF-IDF baseline and the champion on the test split; decide the gate.

    A refused candidate is not an error here: the verdict records it and the package stage refuses to ship.

    Args:
        params: the evaluate block (gate floors, collapse checks, champion comparison, inference batch size).
        model_dir: the trained model folder.
        prepared_dir: folder with the train, val and test splits and labels.json.
        metrics_path: where the test metrics go (a DVC metrics file).
        verdict_path: where the gate verdict goes (a DVC metrics file).
        model_name: package.model_name, whose champion the candidate is compared with; None = no comparison.
        train_metrics_path: the train stage's summary (its val_loss feeds the collapse check).
        predictions_path: every test row with its true and predicted label and probability (CSV; the confusion plot).
        per_class_path: per-class precision, recall and F1 (CSV; a bar plot).
        reliability_path: the reliability diagram's bins (CSV).
        report_path: the markdown report a person reads.

    Returns:
        The model's and the baseline's macro-F1 and the verdict.
    """
    from components import metrics as m

    labels = read_labels(prepared_dir)
    train, val, test = (read_split(prepared_dir, split) for split in ("train", "val", "test"))
    if test.empty:
        raise StageError("the test split is empty; add data or raise data.test_fraction in params.yaml")
    classifier = Classifier.load(model_dir)
    if classifier.labels != labels:
        raise StageError(f"the model's labels {classifier.labels} differ from the data's {labels}; rerun train")
    from components.images import holds_images

    images = holds_images(prepared_dir)
    truth = test["label"].tolist()
    # texts, or for images their files (the predictions CSV and the report name each by its file)
    texts = [str(Path(prepared_dir) / image) for image in test["image"]] if images else test["text"].tolist()
    probabilities = classifier.predict_proba(texts, batch_size=params.batch_size)
    broken = int((~np.isfinite(probabilities).all(axis=1)).sum())
    if broken:
        raise StageError(f"the candidate gives non-finite (NaN or infinite) probabilities for {broken} of "
                         f"{len(texts)} test texts: training diverged; lower train.learning_rate (now in "
                         f"{model_dir}/tuneline.json) and rerun. Nothing was packaged; the champion stays.")
    predicted = [labels[i] for i in probabilities.argmax(axis=1)]
    true_index = np.array([labels.index(label) for label in truth])

    model_metrics = m.classification_metrics(truth, predicted, labels)
    model_metrics["prediction_share"] = prediction_share(predicted, labels)
    model_metrics["intervals"] = m.bootstrap_intervals(truth, predicted, labels, params.bootstrap_resamples,
                                                       params.confidence, params.seed)
    model_metrics["ece"] = round(m.expected_calibration_error(probabilities, true_index), DIGITS)
    if images:
        from components.vision import thumbnail_baseline

        baseline = thumbnail_baseline([Path(prepared_dir) / image for image in train["image"]],
                                      train["label"].tolist(), [Path(t) for t in texts])
    else:
        baseline = baseline_predictions(train, test)
    baseline_metrics = m.classification_metrics(truth, baseline, labels)

    comparison = None
    champion = load_champion(model_name) if model_name else None
    if champion is not None:
        tag, champion_classifier = champion
        from components.vision import ImagePredictor

        if isinstance(champion_classifier, ImagePredictor) != images:
            kinds = ("image", "text") if images else ("text", "image")
            raise StageError(f"the champion of package.model_name {model_name!r} ({tag}) is a {kinds[1]} model, and "
                             f"this candidate classifies {kinds[0]}s: give each kind of model its own name "
                             f"(package.model_name: tuneline-image for images, as images/params.yaml has it). "
                             "Nothing was packaged; the champion stays.")
        champion_predicted = [p.label for p in champion_classifier.predict(texts, batch_size=params.batch_size)]
        champion_metrics = m.classification_metrics(truth, champion_predicted, labels)
        comparison = {
            "tag": tag,
            "accuracy": champion_metrics["accuracy"],
            "macro": champion_metrics["macro"],
            "difference": m.paired_bootstrap_difference(truth, predicted, champion_predicted, labels,
                                                        params.bootstrap_resamples, params.confidence, params.seed),
            "mcnemar": m.mcnemar(truth, predicted, champion_predicted),
        }
    training = None
    if train_metrics_path is not None and Path(train_metrics_path).is_file() and not val.empty:
        val_loss = read_json(train_metrics_path).get("val_loss")
        if val_loss is not None and val_loss == val_loss:  # NaN when training had no validation split
            training = {"val_loss": float(val_loss),
                        "chance_loss": chance_loss(train["label"].tolist(), val["label"].tolist(), labels)}
    checks = check_gates(model_metrics, baseline_metrics, params, training)
    decision = verdict(checks, champion_decision(comparison["difference"] if comparison else None, params),
                       comparison)
    results = {"model": model_metrics, "baseline": baseline_metrics, "champion": comparison, "test_rows": len(test),
               "baseline_name": baseline_name(images)}
    write_json(metrics_path, results)
    write_json(verdict_path, decision)
    top = probabilities.max(axis=1)
    if predictions_path is not None:
        _write_csv(predictions_path, pd.DataFrame({
            "source_row": test["source_row"] if "source_row" in test else range(len(test)),
            "label": truth, "predicted": predicted, "probability": np.round(top, DIGITS), "text": texts}))
    if per_class_path is not None:
        _write_csv(per_class_path, pd.DataFrame([
            {"class": label, **{k: figures[k] for k in ("precision", "recall", "f1", "support")}}
            for label, figures in model_metrics["per_class"].items()]))
    if reliability_path is not None:
        _write_csv(reliability_path, pd.DataFrame(m.reliability_bins(probabilities, true_index)))
    if report_path is not None:
        mistakes = m.most_confident_mistakes(texts, truth, predicted, top.tolist())
        report = m.render_report(results, decision, mistakes, m.confusion(truth, predicted, labels), labels)
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(report, encoding="utf-8")

    interval = model_metrics["intervals"]["macro_f1"]
    print(f"test macro-F1: model {model_metrics['macro']['f1']:.4f} [{interval[0]:.4f}, {interval[1]:.4f}], "
          f"{baseline_name(images)} {baseline_metrics['macro']['f1']:.4f} "
          f"({len(test)} test rows)")
    for check in decision["checks"]:
        print(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['message']}")
    print(f"decision: {decision['decision']}: {decision['reason']}")
    return EvaluateResult(
        macro_f1=model_metrics["macro"]["f1"],
        baseline_macro_f1=baseline_metrics["macro"]["f1"],
        passed=decision["passed"],
    )


def _write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """A CSV with a fixed float format, so the same predictions give the same bytes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6f", lineterminator="\n")


def main() -> None:
    def _run(p: Params) -> EvaluateResult:
        return run(p.evaluate, p.paths.model, p.paths.prepared, p.paths.metrics, p.paths.verdict,
                   model_name=p.package.model_name, train_metrics_path=p.paths.train_metrics,
                   predictions_path=p.paths.predictions, per_class_path=p.paths.per_class,
                   reliability_path=p.paths.reliability, report_path=p.paths.evaluation_report)

    stage_main("evaluate", _run)


if __name__ == "__main__":
    main()
