import pytest

from components.config import EvaluateParams
from components.evaluate import baseline_predictions, classification_metrics
from components.gate import check_gates, verdict


def figures(precision: float, recall: float, f1: float) -> dict:
    return {"macro": {"precision": precision, "recall": recall, "f1": f1}}


FLOORS = EvaluateParams(min_macro_precision=0.6, min_macro_recall=0.6, min_macro_f1=0.6, min_margin_over_baseline=0.02)


def test_a_good_candidate_passes_every_check() -> None:
    result = verdict(check_gates(figures(0.8, 0.8, 0.8), figures(0.7, 0.7, 0.7), FLOORS))
    assert result["passed"] is True
    assert result["failures"] == []
    assert len(result["checks"]) == 4


@pytest.mark.parametrize(
    ("model", "baseline", "failed"),
    [
        (figures(0.59, 0.8, 0.8), figures(0.5, 0.5, 0.5), ["macro precision"]),
        (figures(0.8, 0.59, 0.8), figures(0.5, 0.5, 0.5), ["macro recall"]),
        (figures(0.8, 0.8, 0.59), figures(0.5, 0.5, 0.5), ["macro f1 >="]),
        (figures(0.8, 0.8, 0.8), figures(0.79, 0.79, 0.79), ["margin"]),
        (figures(0.8, 0.8, 0.8), figures(0.9, 0.9, 0.9), ["margin"]),
        (figures(0.1, 0.1, 0.1), figures(0.5, 0.5, 0.5), ["macro precision", "macro recall", "macro f1 >=", "margin"]),
    ],
)
def test_each_failed_condition_is_named(model: dict, baseline: dict, failed: list[str]) -> None:
    result = verdict(check_gates(model, baseline, FLOORS))
    assert result["passed"] is False
    conditions = [failure["condition"] for failure in result["failures"]]
    assert len(conditions) == len(failed)
    for expected, condition in zip(failed, conditions, strict=True):
        assert expected in condition


def test_floor_is_inclusive_and_margin_strict() -> None:
    at_floor = check_gates(figures(0.6, 0.6, 0.71), figures(0.7, 0.7, 0.7), FLOORS)
    assert [check.passed for check in at_floor] == [True, True, True, False]
    # "Must beat the baseline": a tie is not a win, even with a zero margin required.
    tie = check_gates(figures(0.7, 0.7, 0.7), figures(0.7, 0.7, 0.7), EvaluateParams(min_margin_over_baseline=0.0))
    assert tie[-1].passed is False


def test_failure_message_carries_the_numbers_and_the_param() -> None:
    [failure] = verdict(check_gates(figures(0.8, 0.8, 0.55), figures(0.5, 0.5, 0.5), FLOORS))["failures"]
    assert "0.5500" in failure["message"] and "0.6000" in failure["message"]
    assert "evaluate.min_macro_f1" in failure["message"]


def test_classification_metrics_match_hand_counts() -> None:
    true = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "b", "a"]
    metrics = classification_metrics(true, pred, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["per_class"]["a"] == {"precision": pytest.approx(2 / 3, abs=1e-6),
                                         "recall": pytest.approx(2 / 3, abs=1e-6),
                                         "f1": pytest.approx(2 / 3, abs=1e-6), "support": 3}
    assert metrics["per_class"]["c"]["f1"] == 0.0
    assert metrics["macro"]["recall"] == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-6)


def test_baseline_learns_an_easy_split() -> None:
    import pandas as pd

    train = pd.DataFrame({"text": ["great film"] * 5 + ["awful film"] * 5, "label": ["pos"] * 5 + ["neg"] * 5})
    test = pd.DataFrame({"text": ["a great one", "so awful"], "label": ["pos", "neg"]})
    assert baseline_predictions(train, test) == ["pos", "neg"]
