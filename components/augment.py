"""Stage `augment`: add label-preserving perturbed copies of train rows; val and test are never touched.

How many copies each class gets is the augment block's (copies_per_example, per_class, balance,
max_copies_per_example: components/copies.py); how a copy is made is the modality's (text.augment: synonym-like
substitution from the model's own embeddings, swaps, deletions, typos; image.augment: crops, flips, rotations,
colour jitter). Every copy keeps its source row's label and `source_row`, and is never equal to a val or test item,
so augmentation cannot leak evaluation data into training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import modalities, recipe
from components.config import AugmentParams, ModelParams, Params, TrainParams
from components.copies import copies_per_class
from components.io import SUMMARY_FILE, atomic_dir, read_split, write_json, write_split
from components.modalities import Modality
from components.stage import stage_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentResult:
    """Rows in the train split before and after augmentation; `details` are the modality's own figures."""

    original_rows: int
    added_rows: int
    added_per_class: dict[str, int]
    rejected: int
    details: dict[str, Any] = field(default_factory=dict)


def run(params: AugmentParams, model_params: ModelParams, modality: Modality, prepared_dir: str | Path,
        out_dir: str | Path, train_params: TrainParams | None = None) -> AugmentResult:
    """Augment the prepared train split into out_dir/train.jsonl (val and test are read, never augmented).

    Args:
        params: the augment block of params.yaml.
        model_params: the model block (text's synonyms come from this model's input embeddings).
        modality: what the prepared data holds, with its block of params.yaml (its augment settings).
        prepared_dir: folder with the prepared splits.
        out_dir: the augmented-data folder (paths.augmented); also gets summary.json with the counts, and the
            files copies need (images).
        train_params: the train block (its defaults when None): with copies_per_example auto, train.recipe decides
            the copies from the train rows per class and the method it picks (components/recipe.py).

    Returns:
        Row counts before and after, copies per class, and copies given up (too short to change, or equal to a
        held-out item).

    Raises:
        StageError: per_class names an unknown label, or the modality cannot make copies (e.g. text's synonyms
            need the model's embeddings).
    """
    prepared_dir = Path(prepared_dir)
    train = read_split(prepared_dir, "train")
    held_out = [read_split(prepared_dir, "val"), read_split(prepared_dir, "test")]
    counts = train["label"].value_counts().to_dict()
    if params.copies_per_example == recipe.AUTO:
        chosen = recipe.choose(train_params or TrainParams(), params, model_params,
                               recipe.original_rows_per_class(train, sorted(counts)), modality.contrastive)
        log.info("%s", chosen.describe())
        params = params.model_copy(update={"copies_per_example": chosen.copies_per_example})
    wanted = copies_per_class(counts, params)
    with atomic_dir(out_dir) as tmp:
        augmented = modality.augment(train, held_out, wanted, params, model_params, prepared_dir, tmp)
        frame = augmented.frame
        added = frame.loc[frame["augmented"].astype(bool), "label"].value_counts().to_dict()
        result = AugmentResult(
            original_rows=len(train),
            added_rows=len(frame) - len(train),
            added_per_class={label: int(added.get(label, 0)) for label in sorted(wanted)},
            rejected=sum(wanted.values()) - (len(frame) - len(train)),
            details=augmented.details,
        )
        write_split(tmp, "train", frame)
        write_json(tmp / SUMMARY_FILE, {
            "modality": modality.name,
            "original_rows": result.original_rows,
            "added_rows": result.added_rows,
            "added_per_class": result.added_per_class,
            "rows_per_class": frame["label"].value_counts().sort_index().to_dict(),
            "copies_per_example": params.copies_per_example,
            "rejected": result.rejected,
            **result.details,
        })
    log.info("augmented the train split (%s): %d rows + %d perturbed copies %s; %d copies given up (too short to "
             "change, or equal to a val/test item)", modality.items, result.original_rows, result.added_rows,
             result.added_per_class, result.rejected)
    return result


def main() -> None:
    def _run(p: Params) -> AugmentResult:
        return run(p.augment, p.model, modalities.for_prepared(p.paths.prepared, p), p.paths.prepared,
                   p.paths.augmented, p.train)

    stage_main("augment", _run)


if __name__ == "__main__":
    main()
