"""Stage `augment`: add label-preserving perturbed copies of train rows (random word swap and deletion)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import AugmentParams
from components.io import atomic_dir, read_split, write_split
from components.stage import stage_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentResult:
    """Rows in the train split before and after augmentation."""

    original_rows: int
    added_rows: int


def perturb(text: str, rng: np.random.Generator, p_swap: float, p_delete: float) -> str:
    """Swap and delete words at random (EDA's random swap / random deletion); never returns an empty text.

    Short reviews keep their sentiment words with high probability at the default rates, which is what makes
    these operations label-preserving in practice.
    """
    words = text.split()
    if len(words) < 2:
        return text
    kept = [word for word in words if rng.random() >= p_delete] or [words[int(rng.integers(len(words)))]]
    for _ in range(int(round(p_swap * len(kept)))):
        i, j = rng.integers(len(kept), size=2)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


def augment(train: pd.DataFrame, params: AugmentParams) -> pd.DataFrame:
    """The train split plus round(fraction * rows) perturbed copies; each copy keeps its source_row and label."""
    train = train.assign(augmented=False)
    n_new = round(len(train) * params.fraction) if params.enabled else 0
    if n_new == 0 or train.empty:
        return train
    rng = np.random.default_rng(params.seed)
    picks = train.iloc[rng.integers(len(train), size=n_new)]
    texts = [perturb(text, rng, params.p_swap, params.p_delete) for text in picks["text"]]
    copies = picks.assign(text=texts, augmented=True)
    # A copy identical to its original adds weight, not information; drop those.
    copies = copies[copies["text"].to_numpy() != picks["text"].to_numpy()]
    return pd.concat([train, copies], ignore_index=True)


def run(params: AugmentParams, prepared_dir: str | Path, out_dir: str | Path) -> AugmentResult:
    """Augment the prepared train split into out_dir/train.jsonl (val and test are never augmented).

    Args:
        params: the augment block of params.yaml.
        prepared_dir: folder with the prepared splits.
        out_dir: the augmented-data folder (paths.augmented).

    Returns:
        Row counts before and after.
    """
    train = read_split(prepared_dir, "train")
    augmented = augment(train, params)
    with atomic_dir(out_dir) as tmp:
        write_split(tmp, "train", augmented)
    result = AugmentResult(original_rows=len(train), added_rows=len(augmented) - len(train))
    log.info("augmented train split: %d rows + %d perturbed copies", result.original_rows, result.added_rows)
    return result


def main() -> None:
    stage_main("augment", lambda p: run(p.augment, p.paths.prepared, p.paths.augmented))


if __name__ == "__main__":
    main()
