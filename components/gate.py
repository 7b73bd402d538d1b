"""The quality gate: pure checks of a candidate's test metrics against the floors in params.yaml, collapse checks,
and the decision against the champion (promote, keep, or refuse) from a paired bootstrap interval."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from components.config import EvaluateParams


@dataclass(frozen=True)
class GateCheck:
    """One condition of the gate, with the figures that decided it."""

    condition: str
    value: float
    threshold: float
    passed: bool
    message: str


def check_gates(model: dict[str, Any], baseline: dict[str, Any], params: EvaluateParams,
                training: dict[str, float] | None = None, baseline_name: str = "TF-IDF baseline") -> list[GateCheck]:
    """Every gate condition for a candidate, passed or not.

    Args:
        model: the candidate's test metrics ({"macro": {"precision", "recall", "f1"}, "per_class": {label:
            {"recall", "support"}}, "prediction_share": {label: share}}; the last two are optional).
        baseline: the modality's simple baseline's test metrics (TF-IDF + logistic regression for texts), same
            shape, same test split.
        params: the floors.
        training: {"val_loss", "chance_loss"} from training, for the collapse check on the loss (optional).
        baseline_name: what the baseline is, as the condition names it.

    Returns:
        One GateCheck per condition; the candidate passes when all of them pass.
    """
    checks = [
        _floor(f"macro {name}", model["macro"][name], floor)
        for name, floor in (
            ("precision", params.min_macro_precision),
            ("recall", params.min_macro_recall),
            ("f1", params.min_macro_f1),
        )
    ]
    if "per_class" in model and params.min_class_recall > 0:
        checks.append(_class_recall(model["per_class"], params.min_class_recall))
    if "prediction_share" in model:
        checks.append(_prediction_share(model, params.max_prediction_share))
    if training is not None and params.val_loss_below_chance:
        checks.append(_loss_left_chance(training["val_loss"], training["chance_loss"]))
    margin = model["macro"]["f1"] - baseline["macro"]["f1"]
    required = params.min_margin_over_baseline
    passed = margin > required
    checks.append(
        GateCheck(
            condition=f"macro f1 margin over the {baseline_name}",
            value=round(margin, 6),
            threshold=required,
            passed=passed,
            message=(
                f"macro F1 {model['macro']['f1']:.4f} vs baseline {baseline['macro']['f1']:.4f}: margin "
                f"{margin:+.4f} {'>' if passed else 'is not above'} the required {required:+.4f} "
                "(evaluate.min_margin_over_baseline)"
            ),
        )
    )
    return checks


def _floor(name: str, value: float, floor: float) -> GateCheck:
    passed = value >= floor
    key = "evaluate.min_" + name.replace(" ", "_")
    return GateCheck(
        condition=f"{name} >= {key}",
        value=round(value, 6),
        threshold=floor,
        passed=passed,
        message=f"{name} {value:.4f} {'>=' if passed else 'is below'} the floor {floor:.4f} ({key})",
    )


def _class_recall(per_class: dict[str, dict[str, float]], floor: float) -> GateCheck:
    worst = min(per_class, key=lambda label: per_class[label]["recall"])
    below = [f"{label} {figures['recall']:.4f}" for label, figures in per_class.items() if figures["recall"] < floor]
    passed = not below
    return GateCheck(
        condition="every class's recall >= evaluate.min_class_recall",
        value=round(per_class[worst]["recall"], 6),
        threshold=floor,
        passed=passed,
        message=(f"lowest class recall {per_class[worst]['recall']:.4f} ({worst}) >= the floor {floor:.4f}" if passed
                 else f"class recall below the floor {floor:.4f} (evaluate.min_class_recall): " + ", ".join(below)),
    )


def _prediction_share(model: dict[str, Any], ceiling: float) -> GateCheck:
    shares = model["prediction_share"]
    top = max(shares, key=lambda label: shares[label])
    support = {label: figures.get("support", 0) for label, figures in model.get("per_class", {}).items()}
    true_share = support.get(top, 0) / max(1, sum(support.values()))
    # A test split that really is that skewed cannot tell a collapse from a good model: only flag what the data
    # does not explain.
    passed = shares[top] < ceiling or true_share >= ceiling or ceiling >= 1.0  # 1.0 = the check is off
    return GateCheck(
        condition="no collapse: largest predicted class share < evaluate.max_prediction_share",
        value=round(shares[top], 6),
        threshold=ceiling,
        passed=passed,
        message=(f"largest predicted class share {shares[top]:.4f} ({top}; {true_share:.4f} of the true labels) "
                 + ("is below" if shares[top] < ceiling else "matches the data, though above")
                 + f" {ceiling:.4f}" if passed else
                 f"collapsed: {shares[top]:.4f} of the predictions are {top!r}, which is {true_share:.4f} of the "
                 f"true labels (evaluate.max_prediction_share {ceiling:.4f})"),
    )


def _loss_left_chance(val_loss: float, chance_loss: float) -> GateCheck:
    passed = val_loss < chance_loss
    return GateCheck(
        condition="no collapse: validation loss < a constant predictor's (the class priors)",
        value=round(val_loss, 6),
        threshold=round(chance_loss, 6),
        passed=passed,
        message=(f"best validation loss {val_loss:.4f} {'is below' if passed else 'never went below'} chance level "
                 f"{chance_loss:.4f} (the loss of always predicting the class frequencies)"
                 + ("" if passed else "; training did not learn: check the labels and train.learning_rate "
                                       "(evaluate.val_loss_below_chance turns this check off)")),
    )


@dataclass(frozen=True)
class Decision:
    """What the package stage does with a candidate: promote it, keep the champion, or refuse it."""

    action: str  # promote | keep | refuse
    reason: str
    check: GateCheck | None  # the champion comparison, as a gate condition; None without a champion


def champion_decision(difference: dict[str, Any] | None, params: EvaluateParams) -> Decision:
    """Promote, keep or refuse from the paired bootstrap interval of candidate minus champion macro-F1.

    Significantly worse (the interval below 0) is refused; significantly better (above 0) is promoted; an interval
    that straddles 0 cannot tell the two apart, and evaluate.when_indistinguishable decides. The reason says how
    many test rows a difference of this size would need.
    """
    if difference is None:
        return Decision("promote", "there is no champion yet: the candidate becomes the first", None)
    diff, low, high, n = difference["difference"], difference["low"], difference["high"], difference["n"]
    interval = f"{diff:+.4f} macro-F1 [{low:+.4f}, {high:+.4f}] at {difference['confidence']:.0%} over {n} test rows"
    if high < 0:
        reason = f"significantly worse than the champion: {interval}"
        return Decision("refuse", reason, GateCheck("not significantly worse than the champion", round(diff, 6),
                                                    0.0, False, reason))
    if low > 0:
        reason = f"significantly better than the champion: {interval}"
        return Decision("promote", reason, GateCheck("not significantly worse than the champion", round(diff, 6),
                                                     0.0, True, reason))
    width = high - low
    needed = int(n * (width / (2 * abs(diff))) ** 2) + 1 if diff else None
    if needed is None:
        size = "; the two models score the same"
    elif needed > n:
        size = (f"; the test split is too small to decide: telling {abs(diff):.4f} from noise needs about "
                f"{needed:,} test rows")
    else:  # a lopsided interval: the difference comes from a handful of rows (a small class, say)
        size = "; the interval reaches 0: the difference rests on a handful of test rows"
    action = params.when_indistinguishable
    reason = (f"not distinguishable from the champion: {interval}{size}; evaluate.when_indistinguishable is "
              f"{action}")
    return Decision(action, reason, GateCheck("not significantly worse than the champion", round(diff, 6), 0.0,
                                              True, reason))


def verdict(checks: list[GateCheck], decision: Decision | None = None,
            comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    """The verdict file's content: passed, the decision and its reason, the failed conditions, and every check."""
    checks = checks + ([decision.check] if decision is not None and decision.check is not None else [])
    passed = all(check.passed for check in checks)
    if not passed:
        action = "refuse"
        failed = [check.condition for check in checks if not check.passed]
        reason = "failed: " + "; ".join(failed)
    else:
        action = decision.action if decision is not None else "promote"
        reason = decision.reason if decision is not None else "every gate condition passed"
    return {
        "passed": passed,
        "decision": action,
        "reason": reason,
        "champion": comparison,
        "failures": [asdict(check) for check in checks if not check.passed],
        "checks": [asdict(check) for check in checks],
    }
