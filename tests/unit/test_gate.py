import pytest

from components.config import EvaluateParams
from components.gate import check_gates, verdict
from components.metrics import classification_metrics
from components.modalities.text import tfidf_predictions as baseline_predictions


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


def per_class(**recalls: float) -> dict:
    return {label: {"precision": 0.5, "recall": r, "f1": 0.5, "support": 10} for label, r in recalls.items()}


def test_every_class_recall_has_a_floor() -> None:
    model = {**figures(0.8, 0.8, 0.8), "per_class": per_class(a=0.9, b=0.15, c=0.1)}
    checks = check_gates(model, figures(0.5, 0.5, 0.5), EvaluateParams(min_class_recall=0.2))
    failed = [c for c in checks if not c.passed]
    assert len(failed) == 1 and "b 0.1500" in failed[0].message and "c 0.1000" in failed[0].message
    assert "evaluate.min_class_recall" in failed[0].message


@pytest.mark.parametrize(
    ("shares", "supports", "ceiling", "passed"),
    [
        ({"a": 0.97, "b": 0.03}, {"a": 50, "b": 50}, 0.95, False),  # one class for nearly everything
        ({"a": 0.6, "b": 0.4}, {"a": 50, "b": 50}, 0.95, True),
        ({"a": 0.97, "b": 0.03}, {"a": 97, "b": 3}, 0.95, True),  # the test labels really are that skewed
        ({"a": 1.0, "b": 0.0}, {"a": 50, "b": 50}, 1.0, True),  # 1 = off
    ],
)
def test_collapse_on_prediction_share(shares: dict, supports: dict, ceiling: float, passed: bool) -> None:
    model = {**figures(0.8, 0.8, 0.8), "prediction_share": shares,
             "per_class": {k: {"recall": 1.0, "support": v} for k, v in supports.items()}}
    check = check_gates(model, figures(0.5, 0.5, 0.5), EvaluateParams(max_prediction_share=ceiling))[3]
    assert check.condition.startswith("no collapse") and check.passed is passed
    if not passed:
        assert "collapsed" in check.message and "'a'" in check.message


def test_collapse_on_a_validation_loss_that_never_left_chance() -> None:
    params = EvaluateParams()
    stuck = check_gates(figures(0.8, 0.8, 0.8), figures(0.5, 0.5, 0.5), params,
                        training={"val_loss": 1.10, "chance_loss": 1.05})
    learned = check_gates(figures(0.8, 0.8, 0.8), figures(0.5, 0.5, 0.5), params,
                          training={"val_loss": 0.60, "chance_loss": 1.05})
    assert not stuck[3].passed and "never went below chance level 1.0500" in stuck[3].message
    assert learned[3].passed
    off = check_gates(figures(0.8, 0.8, 0.8), figures(0.5, 0.5, 0.5), EvaluateParams(val_loss_below_chance=False),
                      training={"val_loss": 1.10, "chance_loss": 1.05})
    assert len(off) == 4 and all(check.passed for check in off)


def difference(diff: float, low: float, high: float, n: int = 200) -> dict:
    return {"difference": diff, "low": low, "high": high, "n": n, "confidence": 0.95}


@pytest.mark.parametrize(
    ("interval", "when", "action", "words"),
    [
        (difference(-0.10, -0.15, -0.05), "promote", "refuse", "significantly worse"),
        (difference(0.10, 0.05, 0.15), "keep", "promote", "significantly better"),
        (difference(0.02, -0.03, 0.07), "keep", "keep", "too small to decide"),
        (difference(0.02, -0.03, 0.07), "promote", "promote", "needs about"),
        (difference(0.0, 0.0, 0.0), "keep", "keep", "score the same"),
        (difference(-0.35, -0.37, 0.0, n=60), "keep", "keep", "rests on a handful"),
    ],
)
def test_champion_decision(interval: dict, when: str, action: str, words: str) -> None:
    from components.gate import champion_decision

    decision = champion_decision(interval, EvaluateParams(when_indistinguishable=when))
    assert decision.action == action and words in decision.reason
    result = verdict(check_gates(figures(0.8, 0.8, 0.8), figures(0.5, 0.5, 0.5), FLOORS), decision, {"tag": "t"})
    assert result["decision"] == action and result["passed"] is (action != "refuse")
    if action == "refuse":
        assert result["failures"][0]["condition"] == "not significantly worse than the champion"


def test_rows_needed_scale_with_the_interval() -> None:
    from components.gate import champion_decision

    # width 0.1 for a difference of 0.02 over 200 rows: (0.1 / 0.04)^2 * 200 = 1250 rows
    reason = champion_decision(difference(0.02, -0.03, 0.07), EvaluateParams()).reason
    assert "needs about 1,251 test rows" in reason


def test_no_champion_promotes_and_failed_checks_refuse_whatever_the_champion() -> None:
    from components.gate import champion_decision

    first = champion_decision(None, EvaluateParams())
    assert first.action == "promote" and first.check is None
    bad = verdict(check_gates(figures(0.1, 0.1, 0.1), figures(0.5, 0.5, 0.5), FLOORS),
                  champion_decision(difference(0.1, 0.05, 0.15), EvaluateParams()))
    assert bad["decision"] == "refuse" and bad["passed"] is False and "failed:" in bad["reason"]
