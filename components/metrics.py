"""Pure evaluation functions for a classifier: scores, intervals, calibration and comparisons (the markdown report
that shows them is components/report.py).

Labels are strings and `labels` is the ordered list of every label; tables and matrices follow that order. Every
float that goes into a results file is rounded to DIGITS places so that metric diffs stay stable between runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DIGITS = 6
METRIC_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def classification_metrics(true: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro and weighted precision/recall/F1, and per-class figures, computed by scikit-learn.

    Args:
        true: the true label of each row.
        predicted: the predicted label of each row, same order.
        labels: every label, in report order; a label absent from both lists still counts in the macro average.

    Returns:
        {"accuracy", "macro": {"precision", "recall", "f1"}, "weighted": {...},
        "per_class": {label: {"precision", "recall", "f1", "support"}}}, floats rounded to DIGITS.

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    _check_rows(true, predicted)
    averages: dict[str, dict[str, float]] = {}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            true, predicted, labels=labels, average=average, zero_division=0
        )
        averages[average] = {"precision": _round(precision), "recall": _round(recall), "f1": _round(f1)}
    per_p, per_r, per_f, support = precision_recall_fscore_support(
        true, predicted, labels=labels, average=None, zero_division=0
    )
    return {
        "accuracy": _round(accuracy_score(true, predicted)),
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "per_class": {
            label: {"precision": _round(p), "recall": _round(r), "f1": _round(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, per_p, per_r, per_f, support, strict=True)
        },
    }


def confusion(true: list[str], predicted: list[str], labels: list[str]) -> list[list[int]]:
    """Confusion matrix as plain ints: row i is true label labels[i], column j is predicted label labels[j]."""
    from sklearn.metrics import confusion_matrix

    _check_rows(true, predicted, allow_empty=True)
    if not true:
        return [[0] * len(labels) for _ in labels]
    matrix = confusion_matrix(true, predicted, labels=labels)
    return [[int(count) for count in row] for row in matrix]


def bootstrap_intervals(
    true: list[str],
    predicted: list[str],
    labels: list[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for accuracy and macro precision/recall/F1 over resampled test rows.

    Rows are resampled as (true, predicted) pairs (an index array is bootstrapped). The percentile method is used
    because BCa breaks down when a statistic is constant across resamples (a perfect or a one-class test split).

    Args:
        true: the true label of each row.
        predicted: the predicted label of each row, same order.
        labels: every label, in report order.
        n_resamples: bootstrap resamples.
        confidence: the interval's confidence level, in (0, 1).
        seed: seeds the resampling; the same seed gives the same intervals.

    Returns:
        {"accuracy", "macro_precision", "macro_recall", "macro_f1"} -> [low, high], rounded to DIGITS. With fewer
        than two rows there is nothing to resample and each interval is [value, value].

    Raises:
        ValueError: the lists differ in length or are empty, or confidence is outside (0, 1).
    """
    import numpy as np
    from scipy.stats import bootstrap

    _check_rows(true, predicted)
    _check_confidence(confidence)
    true_codes, predicted_codes = _encode(true, labels), _encode(predicted, labels)
    correct = np.array([t == p for t, p in zip(true, predicted, strict=True)], dtype=float)
    n_rows = len(true)

    def scores(rows: np.ndarray) -> dict[str, np.ndarray]:
        precision, recall, f1 = _macro_scores(_batch_counts(true_codes, predicted_codes, rows, len(labels) + 1))
        return {
            "accuracy": correct[rows].mean(axis=-1),
            "macro_precision": precision,
            "macro_recall": recall,
            "macro_f1": f1,
        }

    if n_rows < 2:
        point = scores(np.arange(n_rows)[None, :])
        return {key: [_round(point[key][0])] * 2 for key in METRIC_KEYS}

    intervals: dict[str, list[float]] = {}
    for key in METRIC_KEYS:

        def statistic(index: np.ndarray, axis: int = -1, key: str = key) -> np.ndarray:
            # scipy hands over the original index array and then a stack of resampled ones; flatten to 2-D.
            index = np.moveaxis(np.asarray(index, dtype=np.intp), axis, -1)
            flat = index.reshape(-1, index.shape[-1])
            return scores(flat)[key].reshape(index.shape[:-1])

        # A fresh generator per metric, so every metric is judged on the very same resamples.
        result = bootstrap(
            (np.arange(n_rows),),
            statistic,
            n_resamples=n_resamples,
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        intervals[key] = [_round(result.confidence_interval.low), _round(result.confidence_interval.high)]
    return intervals


def expected_calibration_error(probabilities: np.ndarray, true_index: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-label confidence, over equal-width bins on [0, 1].

    Args:
        probabilities: (rows, labels) predicted probabilities.
        true_index: (rows,) index of each row's true label in the probability columns.
        bins: number of equal-width confidence bins.

    Returns:
        Sum over bins of (bin rows / all rows) * |mean confidence - accuracy|, rounded to DIGITS; 0.0 with no rows.

    Raises:
        ValueError: the arrays' shapes do not match, or bins < 1.
    """
    import numpy as np

    confidence, correct, which = _top_label(probabilities, true_index, bins)
    if confidence.size == 0:
        return 0.0
    gap = 0.0
    for index in np.unique(which):
        members = which == index
        gap += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return _round(gap)


def reliability_bins(probabilities: np.ndarray, true_index: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Mean confidence and accuracy per non-empty confidence bin, for a reliability diagram.

    Args:
        probabilities: (rows, labels) predicted probabilities.
        true_index: (rows,) index of each row's true label in the probability columns.
        bins: number of equal-width confidence bins on [0, 1].

    Returns:
        One {"bin": "0.6-0.7", "confidence", "accuracy", "count"} per non-empty bin, lowest bin first.

    Raises:
        ValueError: the arrays' shapes do not match, or bins < 1.
    """
    import numpy as np

    confidence, correct, which = _top_label(probabilities, true_index, bins)
    # Enough decimals that every edge prints exactly (10 bins -> 0.1 steps, 20 bins -> 0.05 steps).
    decimals = next((d for d in (1, 2, 3) if 10**d % bins == 0), 3)
    rows = []
    for index in np.unique(which):
        members = which == index
        rows.append(
            {
                "bin": f"{index / bins:.{decimals}f}-{(index + 1) / bins:.{decimals}f}",
                "confidence": _round(confidence[members].mean()),
                "accuracy": _round(correct[members].mean()),
                "count": int(members.sum()),
            }
        )
    return rows


def paired_bootstrap_difference(
    true: list[str],
    candidate: list[str],
    champion: list[str],
    labels: list[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Macro-F1 of the candidate minus the champion's, with a paired percentile bootstrap interval.

    Both models are scored on the same resampled rows in every resample, so the interval reflects the difference
    between the models rather than the luck of the test split.

    Args:
        true: the true label of each row.
        candidate: the candidate's predictions, same rows and order.
        champion: the current champion's predictions, same rows and order.
        labels: every label, in report order.
        n_resamples: bootstrap resamples.
        confidence: the interval's confidence level, in (0, 1).
        seed: seeds the resampling; the same seed gives the same interval.

    Returns:
        {"metric": "macro_f1", "candidate", "champion", "difference", "low", "high", "confidence", "n"}, floats
        rounded to DIGITS.

    Raises:
        ValueError: the lists differ in length or are empty, or confidence is outside (0, 1).
    """
    import numpy as np

    _check_rows(true, candidate)
    _check_rows(true, champion, other="champion")
    _check_confidence(confidence)
    n_rows, n_codes = len(true), len(labels) + 1
    true_codes = _encode(true, labels)
    candidate_codes, champion_codes = _encode(candidate, labels), _encode(champion, labels)

    everything = np.arange(n_rows)[None, :]
    candidate_f1 = _macro_scores(_batch_counts(true_codes, candidate_codes, everything, n_codes))[2][0]
    champion_f1 = _macro_scores(_batch_counts(true_codes, champion_codes, everything, n_codes))[2][0]

    rows = np.random.default_rng(seed).integers(0, n_rows, size=(n_resamples, n_rows))
    differences = (
        _macro_scores(_batch_counts(true_codes, candidate_codes, rows, n_codes))[2]
        - _macro_scores(_batch_counts(true_codes, champion_codes, rows, n_codes))[2]
    )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return {
        "metric": "macro_f1",
        "candidate": _round(candidate_f1),
        "champion": _round(champion_f1),
        "difference": _round(candidate_f1 - champion_f1),
        "low": _round(low),
        "high": _round(high),
        "confidence": confidence,
        "n": n_rows,
    }


def mcnemar(true: list[str], candidate: list[str], champion: list[str]) -> dict[str, Any]:
    """Exact McNemar test on the rows where exactly one of the two models is right.

    Args:
        true: the true label of each row.
        candidate: the candidate's predictions, same rows and order.
        champion: the champion's predictions, same rows and order.

    Returns:
        {"candidate_only_right": b, "champion_only_right": c, "p_value"}: the two-sided binomial test of b out of
        b + c at 0.5; p = 1.0 when the models never disagree on correctness.

    Raises:
        ValueError: the lists differ in length.
    """
    from scipy.stats import binomtest

    _check_rows(true, candidate, allow_empty=True)
    _check_rows(true, champion, other="champion", allow_empty=True)
    b = sum(1 for t, a, z in zip(true, candidate, champion, strict=True) if a == t and z != t)
    c = sum(1 for t, a, z in zip(true, candidate, champion, strict=True) if z == t and a != t)
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    # Significant digits, not decimal places: a p-value of 3e-9 rounded to 0.0 would read as certainty.
    return {"candidate_only_right": b, "champion_only_right": c, "p_value": float(f"{p_value:.{DIGITS}g}")}


def most_confident_mistakes(
    items: list[Any], true: list[str], predicted: list[str], probability: list[float], k: int = 10
) -> list[dict[str, Any]]:
    """The k wrong predictions the model was surest of, most confident first (ties keep input order).

    Args:
        items: each row's item (its text, its image's file).
        true: each row's true label.
        predicted: each row's predicted label.
        probability: the probability the model gave its prediction, per row.
        k: how many mistakes to return at most.

    Returns:
        [{"item", "label", "predicted", "probability"}, ...], label being the true label.

    Raises:
        ValueError: the lists differ in length.
    """
    lengths = {"items": len(items), "true": len(true), "predicted": len(predicted), "probability": len(probability)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"most_confident_mistakes needs one entry per row in every list, got lengths {lengths}")
    wrong = [i for i in range(len(true)) if true[i] != predicted[i]]
    # sorted() is stable, so equal probabilities stay in input order.
    wrong = sorted(wrong, key=lambda i: -float(probability[i]))[: max(k, 0)]
    return [
        {"item": items[i], "label": true[i], "predicted": predicted[i], "probability": _round(probability[i])}
        for i in wrong
    ]


def _round(value: Any) -> float:
    """A plain float rounded to DIGITS places."""
    return round(float(value), DIGITS)


def _check_rows(true: Sequence[str], other_rows: Sequence[str], other: str = "predicted",
                allow_empty: bool = False) -> None:
    """Raise a ValueError naming the lengths when two per-row lists do not line up, or are empty."""
    if len(true) != len(other_rows):
        raise ValueError(
            f"expected one {other} label per true label, got {len(true)} true and {len(other_rows)} {other}; "
            "pass the predictions for exactly the scored rows, in the same order"
        )
    if not allow_empty and not true:
        raise ValueError("no rows to score: the true and predicted label lists are empty")


def _check_confidence(confidence: float) -> None:
    """Raise a ValueError unless 0 < confidence < 1."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


def _encode(values: Sequence[str], labels: list[str]) -> np.ndarray:
    """Index of each value in `labels`; values outside `labels` share the extra code len(labels)."""
    import numpy as np

    code = {label: i for i, label in enumerate(labels)}
    return np.array([code.get(value, len(labels)) for value in values], dtype=np.intp)


def _batch_counts(true_codes: np.ndarray, predicted_codes: np.ndarray, rows: np.ndarray, n_codes: int) -> np.ndarray:
    """(resamples, n_codes, n_codes) confusion counts, one matrix per row of `rows`, in a single bincount."""
    import numpy as np

    n_batches = rows.shape[0]
    offsets = np.arange(n_batches, dtype=np.intp)[:, None] * (n_codes * n_codes)
    flat = offsets + true_codes[rows] * n_codes + predicted_codes[rows]
    counts = np.bincount(flat.ravel(), minlength=n_batches * n_codes * n_codes)
    return counts.reshape(n_batches, n_codes, n_codes)


def _macro_scores(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Macro precision, recall and F1 per confusion matrix, as sklearn computes them with zero_division=0.

    The last code is the catch-all for values outside `labels`: it is not averaged over, but its rows and columns
    still count as false negatives and false positives of the real labels, as they do in sklearn.
    """
    import numpy as np

    n_labels = counts.shape[-1] - 1
    tp = np.diagonal(counts, axis1=1, axis2=2)[:, :n_labels].astype(float)
    predicted_total = counts.sum(axis=1)[:, :n_labels]
    true_total = counts.sum(axis=2)[:, :n_labels]

    def divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)

    precision = divide(tp, predicted_total)
    recall = divide(tp, true_total)
    # 2tp / (2tp + fp + fn), the form sklearn uses; it is 0 where a label is neither true nor predicted.
    f1 = divide(2 * tp, predicted_total + true_total)
    return precision.mean(axis=1), recall.mean(axis=1), f1.mean(axis=1)


def _top_label(
    probabilities: np.ndarray, true_index: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label confidence, whether the top label is right, and the equal-width bin of each row."""
    import numpy as np

    probabilities = np.asarray(probabilities, dtype=float)
    true_index = np.asarray(true_index)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if probabilities.ndim != 2 or true_index.shape != (probabilities.shape[0],):
        raise ValueError(
            f"expected probabilities of shape (rows, labels) and true_index of shape (rows,), got "
            f"{probabilities.shape} and {true_index.shape}"
        )
    if probabilities.shape[0] == 0:
        empty = np.zeros(0)
        return empty, empty, np.zeros(0, dtype=np.intp)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == true_index).astype(float)
    # Bins are [i/bins, (i+1)/bins); a confidence of exactly 1.0 belongs in the top bin.
    which = np.clip(np.floor(confidence * bins).astype(np.intp), 0, bins - 1)
    return confidence, correct, which
