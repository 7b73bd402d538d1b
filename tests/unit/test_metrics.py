import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from components.metrics import (
    _batch_counts,
    _encode,
    _macro_scores,
    bootstrap_intervals,
    classification_metrics,
    confusion,
    expected_calibration_error,
    mcnemar,
    most_confident_mistakes,
    paired_bootstrap_difference,
    reliability_bins,
)
from components.report import render_report

LABELS = ["neg", "neu", "pos"]


def noisy(true: list[str], labels: list[str], accuracy: float, seed: int) -> list[str]:
    """Predictions that are right with probability `accuracy`, otherwise a random label."""
    rng = np.random.default_rng(seed)
    return [t if rng.random() < accuracy else str(rng.choice(labels)) for t in true]


def random_true(n: int, labels: list[str], seed: int) -> list[str]:
    return [str(label) for label in np.random.default_rng(seed).choice(labels, n)]


@pytest.mark.parametrize(
    ("true", "predicted"),
    [
        (["neg", "neu", "pos", "pos", "neg", "neu"], ["neg", "pos", "pos", "pos", "neu", "neu"]),
        (["neg", "neg", "neg", "pos"], ["neg", "neg", "pos", "pos"]),  # "neu" never appears: zero_division path
    ],
)
def test_classification_metrics_equal_sklearn(true: list[str], predicted: list[str]) -> None:
    result = classification_metrics(true, predicted, LABELS)
    assert result["accuracy"] == pytest.approx(accuracy_score(true, predicted), abs=1e-6)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(true, predicted, labels=LABELS, average=average, zero_division=0)
        assert result[average] == pytest.approx({"precision": p, "recall": r, "f1": f}, abs=1e-6)
    p, r, f, s = precision_recall_fscore_support(true, predicted, labels=LABELS, average=None, zero_division=0)
    assert list(result["per_class"]) == LABELS
    for i, label in enumerate(LABELS):
        row = result["per_class"][label]
        assert row == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}, abs=1e-6)
        assert isinstance(row["support"], int)


def test_weighted_follows_the_big_class_and_macro_the_small_one() -> None:
    # 18 "neg" rows all right, 2 "pos" rows both called "neg": weighted F1 stays high, macro F1 is dragged down.
    true = ["neg"] * 18 + ["pos"] * 2
    predicted = ["neg"] * 20
    result = classification_metrics(true, predicted, ["neg", "pos"])
    assert result["per_class"]["pos"]["f1"] == 0.0
    assert result["weighted"]["f1"] == pytest.approx(0.9 * (2 * 18 / 38), abs=1e-6)
    assert result["macro"]["f1"] == pytest.approx(0.5 * (2 * 18 / 38), abs=1e-6)
    assert result["weighted"]["f1"] > result["macro"]["f1"] + 0.35


def test_floats_are_rounded_to_six_digits() -> None:
    result = classification_metrics(["neg", "neu", "pos"], ["neg", "neg", "pos"], LABELS)
    assert result["macro"]["precision"] == round(0.5, 6)
    assert result["accuracy"] == round(2 / 3, 6)


def test_classification_metrics_names_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="got 2 true and 1 predicted"):
        classification_metrics(["neg", "pos"], ["neg"], LABELS)


def test_confusion_rows_are_true_and_columns_predicted_in_label_order() -> None:
    true = ["pos", "pos", "pos", "neg", "neu"]
    predicted = ["neg", "neg", "pos", "neg", "pos"]
    assert confusion(true, predicted, LABELS) == [
        [1, 0, 0],  # true neg
        [0, 0, 1],  # true neu, predicted pos
        [2, 0, 1],  # true pos: twice predicted neg
    ]
    assert confusion(true, predicted, ["pos", "neg", "neu"]) == [[1, 2, 0], [0, 1, 0], [1, 0, 0]]


def test_bootstrap_intervals_contain_the_point_and_repeat_for_a_seed() -> None:
    true = random_true(200, LABELS, seed=1)
    predicted = noisy(true, LABELS, 0.75, seed=2)
    point = classification_metrics(true, predicted, LABELS)
    first = bootstrap_intervals(true, predicted, LABELS, n_resamples=500, seed=3)
    assert set(first) == {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
    estimates = {
        "accuracy": point["accuracy"],
        "macro_precision": point["macro"]["precision"],
        "macro_recall": point["macro"]["recall"],
        "macro_f1": point["macro"]["f1"],
    }
    for key, (low, high) in first.items():
        assert low < estimates[key] < high, key
    assert bootstrap_intervals(true, predicted, LABELS, n_resamples=500, seed=3) == first
    assert bootstrap_intervals(true, predicted, LABELS, n_resamples=500, seed=4) != first


def test_bootstrap_intervals_narrow_as_rows_grow() -> None:
    true = random_true(40, LABELS, seed=5)
    predicted = noisy(true, LABELS, 0.7, seed=6)
    small = bootstrap_intervals(true, predicted, LABELS, n_resamples=400, seed=0)
    large = bootstrap_intervals(true * 10, predicted * 10, LABELS, n_resamples=400, seed=0)
    for key in small:
        assert large[key][1] - large[key][0] < 0.6 * (small[key][1] - small[key][0]), key


@pytest.mark.parametrize(("true", "predicted"), [(["neg"], ["neg"]), (["neg"], ["pos"])])
def test_bootstrap_intervals_collapse_to_the_value_with_one_row(true: list[str], predicted: list[str]) -> None:
    intervals = bootstrap_intervals(true, predicted, LABELS)
    value = 1.0 if true == predicted else 0.0
    assert intervals["accuracy"] == [value, value]
    assert intervals["macro_f1"][0] == intervals["macro_f1"][1]


def test_bootstrap_intervals_survive_a_perfect_model() -> None:
    true = random_true(30, LABELS, seed=7)
    assert bootstrap_intervals(true, true, LABELS, n_resamples=200)["accuracy"] == [1.0, 1.0]


def calibrated(confidence: float, rows: int, correct: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-label rows at a fixed top confidence, the first `correct` of them right."""
    probabilities = np.tile([confidence, 1 - confidence], (rows, 1))
    true_index = np.array([0] * correct + [1] * (rows - correct))
    return probabilities, true_index


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    p1, t1 = calibrated(0.8, 10, 8)
    p2, t2 = calibrated(0.6, 5, 3)
    probabilities, true_index = np.vstack([p1, p2]), np.concatenate([t1, t2])
    assert expected_calibration_error(probabilities, true_index) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("confidence", "correct", "expected"), [(0.95, 5, 0.45), (0.9, 10, 0.1), (0.7, 4, 0.3)])
def test_ece_measures_over_and_under_confidence(confidence: float, correct: int, expected: float) -> None:
    probabilities, true_index = calibrated(confidence, 10, correct)
    assert expected_calibration_error(probabilities, true_index) == pytest.approx(expected, abs=1e-6)


def test_ece_weights_bins_by_their_rows() -> None:
    p1, t1 = calibrated(0.95, 10, 5)  # gap 0.45 on 10 rows
    p2, t2 = calibrated(0.6, 30, 18)  # perfectly calibrated, 30 rows
    ece = expected_calibration_error(np.vstack([p1, p2]), np.concatenate([t1, t2]))
    assert ece == pytest.approx(0.45 * 10 / 40, abs=1e-6)


@pytest.mark.parametrize("bins", [5, 10, 20])
def test_reliability_bins_cover_every_row(bins: int) -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1, 1, 1], size=97)
    true_index = rng.integers(0, 3, size=97)
    rows = reliability_bins(probabilities, true_index, bins=bins)
    assert sum(row["count"] for row in rows) == 97
    assert all(row["count"] > 0 for row in rows)
    assert [row["bin"] for row in rows] == sorted(row["bin"] for row in rows)


def test_reliability_bins_name_the_bin_and_its_figures() -> None:
    p1, t1 = calibrated(0.65, 4, 1)
    p2, t2 = calibrated(1.0, 2, 2)  # a confidence of exactly 1 lands in the top bin
    rows = reliability_bins(np.vstack([p1, p2]), np.concatenate([t1, t2]))
    assert rows == [
        {"bin": "0.6-0.7", "confidence": 0.65, "accuracy": 0.25, "count": 4},
        {"bin": "0.9-1.0", "confidence": 1.0, "accuracy": 1.0, "count": 2},
    ]


def test_calibration_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="true_index of shape"):
        expected_calibration_error(np.full((4, 2), 0.5), np.zeros(3))


def test_paired_difference_of_identical_models_is_exactly_zero() -> None:
    true = random_true(120, LABELS, seed=8)
    predicted = noisy(true, LABELS, 0.6, seed=9)
    result = paired_bootstrap_difference(true, predicted, list(predicted), LABELS, n_resamples=300)
    assert result["difference"] == 0.0
    assert [result["low"], result["high"]] == [0.0, 0.0]
    assert result["candidate"] == result["champion"]
    assert result["metric"] == "macro_f1"
    assert result["n"] == 120
    assert result["confidence"] == 0.95


def test_a_clearly_better_candidate_has_an_interval_above_zero() -> None:
    true = random_true(400, LABELS, seed=10)
    candidate = noisy(true, LABELS, 0.85, seed=11)
    champion = noisy(true, LABELS, 0.6, seed=12)
    result = paired_bootstrap_difference(true, candidate, champion, LABELS)
    assert result["low"] > 0
    assert result["low"] < result["difference"] < result["high"]
    assert result["difference"] == pytest.approx(
        f1_score(true, candidate, labels=LABELS, average="macro", zero_division=0)
        - f1_score(true, champion, labels=LABELS, average="macro", zero_division=0),
        abs=1e-6,
    )
    # Swapping the models mirrors the result.
    swapped = paired_bootstrap_difference(true, champion, candidate, LABELS)
    assert swapped["high"] < 0
    assert swapped["difference"] == -result["difference"]


def test_paired_difference_repeats_for_a_seed_and_is_fast() -> None:
    labels = [f"topic-{i}" for i in range(20)]
    true = random_true(800, labels, seed=13)
    candidate = noisy(true, labels, 0.7, seed=14)
    champion = noisy(true, labels, 0.65, seed=15)
    start = time.perf_counter()
    first = paired_bootstrap_difference(true, candidate, champion, labels, n_resamples=1000, seed=1)
    assert time.perf_counter() - start < 2.0
    assert paired_bootstrap_difference(true, candidate, champion, labels, n_resamples=1000, seed=1) == first
    assert paired_bootstrap_difference(true, candidate, champion, labels, n_resamples=1000, seed=2) != first


@pytest.mark.parametrize(("n_rows", "n_labels", "seed"), [(50, 3, 0), (200, 7, 1), (31, 12, 2)])
def test_fast_macro_scores_equal_sklearn_on_every_resample(n_rows: int, n_labels: int, seed: int) -> None:
    labels = [f"c{i}" for i in range(n_labels)]
    rng = np.random.default_rng(seed)
    # Draw from one label too many so some rows carry a label outside `labels`, as sklearn allows.
    true = [str(x) for x in rng.choice([*labels, "stray"], n_rows)]
    predicted = [str(x) for x in rng.choice([*labels, "stray"], n_rows)]
    rows = rng.integers(0, n_rows, size=(5, n_rows))
    precision, recall, f1 = _macro_scores(
        _batch_counts(_encode(true, labels), _encode(predicted, labels), rows, n_labels + 1)
    )
    for b in range(rows.shape[0]):
        t = [true[i] for i in rows[b]]
        p = [predicted[i] for i in rows[b]]
        expected = precision_recall_fscore_support(t, p, labels=labels, average="macro", zero_division=0)
        assert (precision[b], recall[b], f1[b]) == pytest.approx(expected[:3], abs=1e-12)
        assert f1[b] == pytest.approx(f1_score(t, p, labels=labels, average="macro", zero_division=0), abs=1e-12)


def test_mcnemar_counts_disagreements_and_tests_them_exactly() -> None:
    true = ["a"] * 10
    #            both right   cand only (5)              champ only (1)   both wrong
    candidate = ["a", "a"] + ["a", "a", "a", "a", "a"] + ["b"] + ["b", "b"]
    champion = ["a", "a"] + ["b", "b", "b", "b", "b"] + ["a"] + ["b", "b"]
    result = mcnemar(true, candidate, champion)
    assert result["candidate_only_right"] == 5
    assert result["champion_only_right"] == 1
    # Two-sided exact binomial, 5 of 6 at 0.5: 2 * (C(6,5) + C(6,6)) / 2**6 = 14 / 64.
    assert result["p_value"] == pytest.approx(14 / 64, abs=1e-6)


def test_mcnemar_is_one_when_the_models_never_disagree() -> None:
    assert mcnemar(["a", "b"], ["a", "a"], ["a", "a"]) == {
        "candidate_only_right": 0,
        "champion_only_right": 0,
        "p_value": 1.0,
    }


def test_most_confident_mistakes_come_surest_first_and_ties_keep_order() -> None:
    texts = ["t0", "t1", "t2", "t3", "t4", "t5"]
    true = ["a", "a", "b", "b", "a", "b"]
    predicted = ["b", "a", "a", "a", "b", "a"]
    probability = [0.7, 0.99, 0.9, 0.7, 0.95, 0.6]
    mistakes = most_confident_mistakes(texts, true, predicted, probability, k=3)
    assert [m["item"] for m in mistakes] == ["t4", "t2", "t0"]
    assert mistakes[0] == {"item": "t4", "label": "a", "predicted": "b", "probability": 0.95}
    every = most_confident_mistakes(texts, true, predicted, probability)
    assert [m["item"] for m in every] == ["t4", "t2", "t0", "t3", "t5"]  # t1 is right, so never listed


def report_inputs() -> tuple[dict, dict, list[dict], list[list[int]], list[str]]:
    labels = ["neg", "pos|ish"]
    metrics = {
        "test_rows": 754,
        "model": {
            "accuracy": 0.861234,
            "macro": {"precision": 0.8512, "recall": 0.8423, "f1": 0.84671},
            "weighted": {"precision": 0.86, "recall": 0.86, "f1": 0.85912},
            "per_class": {
                "neg": {"precision": 0.9, "recall": 0.8, "f1": 0.847059, "support": 400},
                "pos|ish": {"precision": 0.8, "recall": 0.9, "f1": 0.847059, "support": 354},
            },
            "intervals": {
                "accuracy": [0.836, 0.884],
                "macro_precision": [0.82, 0.88],
                "macro_recall": [0.81, 0.87],
                "macro_f1": [0.8211, 0.8702],
            },
            "ece": 0.0412,
        },
        "baseline": {
            "accuracy": 0.8,
            "macro": {"precision": 0.79, "recall": 0.78, "f1": 0.7811},
            "weighted": {"precision": 0.8, "recall": 0.8, "f1": 0.7923},
            "per_class": {},
        },
        "champion": {
            "tag": "tuneline-text:abc",
            "accuracy": 0.85,
            "macro": {"f1": 0.8333},
            "difference": {"metric": "macro_f1", "candidate": 0.84671, "champion": 0.8333, "difference": 0.01341,
                           "low": -0.0042, "high": 0.0311, "confidence": 0.95, "n": 754},
            "mcnemar": {"candidate_only_right": 31, "champion_only_right": 22, "p_value": 0.271},
        },
    }
    verdict = {
        "passed": False,
        "decision": "refuse",
        "reason": "the gate failed",
        "checks": [
            {"condition": "macro f1 >= evaluate.min_macro_f1", "value": 0.84671, "threshold": 0.8, "passed": True,
             "message": "macro f1 0.8467 >= the floor 0.8000 (evaluate.min_macro_f1)"},
            {"condition": "macro recall >= evaluate.min_macro_recall", "value": 0.8423, "threshold": 0.9,
             "passed": False, "message": "macro recall 0.8423 is below the floor 0.9000 (evaluate.min_macro_recall)"},
        ],
    }
    mistakes = [
        {"item": "great | not\nreally " + "x" * 300, "label": "neg", "predicted": "pos|ish", "probability": 0.991}
    ]
    return metrics, verdict, mistakes, [[380, 20], [35, 319]], labels


def test_render_report_shows_the_key_numbers() -> None:
    report = render_report(*report_inputs())
    for text in [
        "754",
        "0.8612",  # accuracy
        "[0.8360, 0.8840]",  # its interval
        "0.8467",  # macro F1
        "[0.8211, 0.8702]",
        "0.8591",  # weighted F1
        "0.7923",  # baseline weighted F1
        "0.7811",  # baseline macro F1
        "+0.0656",  # macro F1 margin over the baseline
        "0.0412",  # ECE
        "tuneline-text:abc",
        "+0.0134",
        "[-0.0042, +0.0311]",
        "0.2710",
        "| 380 | 20 |",
        "| 35 | 319 |",
        "| 400 |",
    ]:
        assert text in report, text


def test_render_report_lists_every_check_with_fail_lines() -> None:
    report = render_report(*report_inputs())
    assert "FAILED" in report
    assert "refuse" in report
    assert "- pass: macro f1 >= evaluate.min_macro_f1: macro f1 0.8467 >= the floor" in report
    assert "- FAIL: macro recall >= evaluate.min_macro_recall: macro recall 0.8423 is below the floor 0.9000" in report


def test_render_report_escapes_pipes_and_newlines_and_shortens_text() -> None:
    report = render_report(*report_inputs())
    mistake_row = next(line for line in report.splitlines() if line.startswith("| 0.9910 |"))
    assert "great \\| not<br>really" in mistake_row
    assert "| pos\\|ish |" in mistake_row
    assert "x" * 200 not in mistake_row
    assert "…" in mistake_row
    # Every table row of the confusion matrix keeps its column count despite the "|" in a label.
    header = next(line for line in report.splitlines() if line.startswith("| true \\ predicted"))
    assert header.replace("\\|", "").count("|") == 4


def test_render_report_copes_with_missing_parts() -> None:
    metrics, _, _, matrix, labels = report_inputs()
    metrics = {**metrics, "champion": None, "model": {k: v for k, v in metrics["model"].items() if k != "ece"}}
    report = render_report(metrics, {}, [], matrix, labels)
    assert "No champion to compare against." in report
    assert "No gate checks recorded." in report
    assert "not computed" in report
    assert "No mistakes" in report
