"""Stage `evaluate`: score the candidate and a TF-IDF baseline on the test split, and decide the gate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import EvaluateParams, Params
from components.gate import check_gates, verdict
from components.io import read_labels, read_split, write_json
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


def classification_metrics(true: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 and per-class figures (scikit-learn), rounded for stable diffs."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        true, predicted, labels=labels, average="macro", zero_division=0
    )
    per_p, per_r, per_f, support = precision_recall_fscore_support(
        true, predicted, labels=labels, average=None, zero_division=0
    )
    return {
        "accuracy": round(float(accuracy_score(true, predicted)), DIGITS),
        "macro": {
            "precision": round(float(precision), DIGITS),
            "recall": round(float(recall), DIGITS),
            "f1": round(float(f1), DIGITS),
        },
        "per_class": {
            label: {
                "precision": round(float(p), DIGITS),
                "recall": round(float(r), DIGITS),
                "f1": round(float(f), DIGITS),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, per_p, per_r, per_f, support, strict=True)
        },
    }


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


def run(params: EvaluateParams, model_dir: str | Path, prepared_dir: str | Path, metrics_path: str | Path,
        verdict_path: str | Path) -> EvaluateResult:
    """Score the candidate and the baseline on the test split; write the metrics and the gate verdict.

    A failed gate is not an error here: the verdict records it and the package stage refuses to ship.

    Args:
        params: the evaluate block (gate floors, inference batch size).
        model_dir: the trained model folder.
        prepared_dir: folder with the train and test splits and labels.json.
        metrics_path: where the test metrics go (a DVC metrics file).
        verdict_path: where the gate verdict goes (a DVC metrics file).

    Returns:
        Both macro-F1 figures and the verdict.
    """
    labels = read_labels(prepared_dir)
    train, test = read_split(prepared_dir, "train"), read_split(prepared_dir, "test")
    if test.empty:
        raise StageError("the test split is empty; add data or raise data.test_fraction in params.yaml")
    classifier = Classifier.load(model_dir)
    if classifier.labels != labels:
        raise StageError(f"the model's labels {classifier.labels} differ from the data's {labels}; rerun train")
    truth = test["label"].tolist()
    predicted = [p.label for p in classifier.predict(test["text"].tolist(), batch_size=params.batch_size)]
    model_metrics = classification_metrics(truth, predicted, labels)
    baseline_metrics = classification_metrics(truth, baseline_predictions(train, test), labels)
    checks = check_gates(model_metrics, baseline_metrics, params)
    decision = verdict(checks)
    write_json(metrics_path, {"model": model_metrics, "baseline": baseline_metrics, "test_rows": len(test)})
    write_json(verdict_path, decision)

    print(f"test macro-F1: model {model_metrics['macro']['f1']:.4f}, "
          f"TF-IDF baseline {baseline_metrics['macro']['f1']:.4f} ({len(test)} test rows)")
    for check in checks:
        print(f"  [{'pass' if check.passed else 'FAIL'}] {check.message}")
    return EvaluateResult(
        macro_f1=model_metrics["macro"]["f1"],
        baseline_macro_f1=baseline_metrics["macro"]["f1"],
        passed=decision["passed"],
    )


def main() -> None:
    def _run(p: Params) -> EvaluateResult:
        return run(p.evaluate, p.paths.model, p.paths.prepared, p.paths.metrics, p.paths.verdict)

    stage_main("evaluate", _run)


if __name__ == "__main__":
    main()
