"""The quality gate: pure checks of a candidate's test metrics against the floors in params.yaml."""

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


def check_gates(model: dict[str, Any], baseline: dict[str, Any], params: EvaluateParams) -> list[GateCheck]:
    """Every gate condition for a candidate, passed or not.

    Args:
        model: the candidate's test metrics ({"macro": {"precision", "recall", "f1"}, ...}).
        baseline: the TF-IDF + logistic regression baseline's test metrics, same shape, same test split.
        params: the floors.

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
    margin = model["macro"]["f1"] - baseline["macro"]["f1"]
    required = params.min_margin_over_baseline
    passed = margin > required
    checks.append(
        GateCheck(
            condition="macro f1 margin over the TF-IDF baseline",
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


def verdict(checks: list[GateCheck]) -> dict[str, Any]:
    """The verdict file's content: passed, the failed conditions, and every check."""
    return {
        "passed": all(check.passed for check in checks),
        "failures": [asdict(check) for check in checks if not check.passed],
        "checks": [asdict(check) for check in checks],
    }
