"""How many augmented copies each class gets, and which rows they copy: the counting every modality's augmentation
shares (components/augment.py asks for the counts; a modality makes the copies)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from components.config import AugmentParams
from components.stage import StageError


def _round(value: float) -> int:
    return math.floor(value + 0.5)


def copies_per_class(counts: Mapping[str, int], params: AugmentParams) -> dict[str, int]:
    """Copies each label gets: its multiplier (per_class, else copies_per_example) times its rows; with balance,
    raised so every class reaches the largest class's total; never above max_copies_per_example times its rows.

    Raises:
        StageError: per_class names a label the train split does not have.
    """
    unknown = sorted(set(params.per_class) - set(counts))
    if unknown:
        raise StageError(f"augment.per_class names {unknown}, which the train split does not have; "
                         f"its labels are {sorted(counts)}")
    if not params.enabled:
        return {label: 0 for label in counts}
    wanted = {label: _round(params.per_class.get(label, params.copies_per_example) * n) for label, n in counts.items()}
    if params.balance and counts:
        target = max(n + wanted[label] for label, n in counts.items())
        wanted = {label: max(wanted[label], target - n) for label, n in counts.items()}
    return {label: min(wanted[label], math.floor(params.max_copies_per_example * n)) for label, n in counts.items()}


def pick_sources(rows: int, copies: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the rows to copy: every row copies // rows times, and copies % rows distinct rows once more."""
    if rows == 0 or copies == 0:
        return np.empty(0, dtype=np.int64)
    extra = rng.choice(rows, size=copies % rows, replace=False)
    return np.sort(np.concatenate([np.repeat(np.arange(rows), copies // rows), extra]))

