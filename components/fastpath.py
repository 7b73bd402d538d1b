"""The parity gate a faster inference path must pass before it may serve: on the test split, its predicted labels
agree with the trained PyTorch model's on at least `min_agreement` of the rows, and its macro-F1 is at most
`max_f1_drop` below the PyTorch model's. Modality-blind: it compares label lists."""

from __future__ import annotations

from typing import Any


def parity(reference: list[str], candidate: list[str], truth: list[str], labels: list[str], min_agreement: float,
           max_f1_drop: float) -> dict[str, Any]:
    """The verdict on `candidate`'s test predictions against `reference`'s (the PyTorch model's), with the figures.

    Raises:
        ValueError: the three lists differ in length or are empty.
    """
    from sklearn.metrics import f1_score

    if not (len(reference) == len(candidate) == len(truth)) or not truth:
        raise ValueError(f"parity needs the same test rows for both: {len(reference)} reference, {len(candidate)} "
                         f"candidate and {len(truth)} true labels")
    agreement = sum(a == b for a, b in zip(reference, candidate, strict=True)) / len(truth)
    reference_f1 = float(f1_score(truth, reference, labels=labels, average="macro", zero_division=0))
    candidate_f1 = float(f1_score(truth, candidate, labels=labels, average="macro", zero_division=0))
    drop = reference_f1 - candidate_f1
    tolerance = 1e-9  # a drop of exactly max_f1_drop passes, float rounding aside
    failures = []
    if agreement < min_agreement - tolerance:
        failures.append(f"labels agree with PyTorch on {agreement:.2%} of {len(truth)} test rows, under the "
                        f"{min_agreement:.2%} required")
    if drop > max_f1_drop + tolerance:
        failures.append(f"macro-F1 {candidate_f1:.4f} is {drop:.4f} below PyTorch's {reference_f1:.4f}, more than "
                        f"the {max_f1_drop:.4f} allowed")
    reason = "; ".join(failures) or (f"labels agree on {agreement:.2%} of {len(truth)} test rows; macro-F1 "
                                     f"{candidate_f1:.4f} vs PyTorch {reference_f1:.4f}")
    return {"passed": not failures, "agreement": round(agreement, 6), "macro_f1": round(candidate_f1, 6),
            "reference_macro_f1": round(reference_f1, 6), "f1_drop": round(drop, 6), "test_rows": len(truth),
            "reason": reason}
