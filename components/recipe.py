"""train.recipe auto: how to train for the data at hand, chosen from the number of original train rows per class.

The rule, as params.yaml's comments and the README give it (bench/fewshot.py and bench/augment_effect.py measured
it on the built-in corpus):

| rows per class  | train.method | train.learning_rate | augment.copies_per_example | train.epochs           |
|-----------------|--------------|---------------------|----------------------------|------------------------|
| up to 512       | contrastive  | 5e-5 (the head)     | 0 (the pairs and the head  | ~300 optimiser steps,  |
|                 |              |                     | read the original rows)    | 3 to 20 epochs         |
| above 512       | finetune     | 5e-5                | 0.5                        | the same               |

train.contrastive_loss auto (for contrastive tuning): CoSENT for two labels, SetFit's cosine loss for three or more
(measured on the built-in corpus's binary and 3-class tasks, held-out draws: bench/README.md, Few labels).
train.contrastive_epochs auto: one pass over the pairs up to 32 rows per class, two above (measured at 64 per class
on the binary task's held-out draws).
train.contrastive_pairs auto: 20 rounds of pairs per text (SetFit's) up to 64 rows per class, then as many as keep the
pairs per label at 64's (10 at 128, 5 at 256, 3 at 512): contrastive tuning with them led fine-tuning by 1.6 to 4.4
points at 128, 256 and 512 per class (binary task, held-out draws 10-11), so contrastive reaches up to 512.

A key set to a value in params.yaml wins over the rule; `auto` asks the rule. With train.recipe: fixed, every
`auto` key takes the one value it had before the rule (finetune, 3 epochs, 5e-5, 0.5 copies, CoSENT, one pass over
the pairs). Where contrastive cannot run (a modality without it, several processes, a LoRA adapter, gradual
unfreezing) the rule takes finetune, and a small split then gets the finetune row's values but its own epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from components.config import AugmentParams, ModelParams, TrainParams

AUTO = "auto"
CONTRASTIVE_UP_TO = 512  # original train rows per class (mean over the labels) up to which contrastive is chosen
AUTO_STEPS = 300  # epochs auto: as many passes as come nearest this many optimiser steps ...
AUTO_EPOCHS = (3, 20)  # ... within these bounds: 5,000 rows train 3 epochs, 16 per class 20
# method -> (learning_rate, augment.copies_per_example)
BY_METHOD = {"contrastive": (5e-5, 0.0), "finetune": (5e-5, 0.5)}
# train.recipe fixed: what each auto key means without the rule
FIXED = {"method": "finetune", "epochs": 3.0, "learning_rate": 5e-5, "copies_per_example": 0.5,
         "contrastive_loss": "cosent", "contrastive_epochs": 1.0, "contrastive_pairs": 20}
COSENT_UP_TO_LABELS = 2  # contrastive_loss auto: CoSENT up to this many labels, SetFit's cosine loss above
ONE_PASS_UP_TO = 32  # contrastive_epochs auto: one pass over the pairs up to this many rows per class, two above
PAIR_ROUNDS = 20  # contrastive_pairs auto: SetFit's rounds of pairs per text (its num_iterations) ...
PAIR_ROUNDS_UP_TO = 64  # ... up to this many rows per class; above, as many as keep the pairs per label at 64's


@dataclass(frozen=True)
class Recipe:
    """What the train and augment stages use; `chosen` names the keys the rule decided (the rest were set)."""

    rows_per_class: float
    method: str
    learning_rate: float
    copies_per_example: float
    chosen: tuple[str, ...]

    def describe(self) -> str:
        """One line for the log and the train summary."""
        if not self.chosen:
            return "train.recipe: every choice is set in params.yaml"
        values = {"method": f"train.method {self.method}",
                  "learning_rate": f"train.learning_rate {self.learning_rate:g}",
                  "copies_per_example": f"augment.copies_per_example {self.copies_per_example:g}"}
        shown = ", ".join(values[key] for key in self.chosen)
        return (f"train.recipe auto for {self.rows_per_class:.1f} train rows per class (contrastive up to "
                f"{CONTRASTIVE_UP_TO}): {shown}")


def original_rows_per_class(train: pd.DataFrame, labels: list[str]) -> float:
    """Train rows per label, augmented copies not counted (the mean over the labels)."""
    original = int((~train["augmented"].astype(bool)).sum()) if "augmented" in train.columns else len(train)
    return original / max(1, len(labels))


def contrastive_possible(train: TrainParams, model: ModelParams, modality_can: bool) -> bool:
    """Whether train.method contrastive can run with these params (one process, no adapter, no gradual unfreezing)."""
    return modality_can and train.world_size == 1 and model.adapter == "none" and not model.gradual_unfreeze


def choose(train: TrainParams, augment: AugmentParams, model: ModelParams, rows_per_class: float,
           modality_can: bool = True) -> Recipe:
    """The recipe for rows_per_class original train rows per class: every `auto` key decided by the rule (or by
    FIXED under train.recipe fixed), every other key as params.yaml sets it."""
    rule = train.recipe == AUTO
    chosen = []
    method = train.method
    if method == AUTO:
        chosen.append("method")
        small = rows_per_class <= CONTRASTIVE_UP_TO and contrastive_possible(train, model, modality_can)
        method = ("contrastive" if small else "finetune") if rule else FIXED["method"]
    learning_rate, copies = BY_METHOD[method] if rule else (FIXED["learning_rate"], FIXED["copies_per_example"])
    if train.learning_rate == AUTO:
        chosen.append("learning_rate")
    else:
        learning_rate = float(train.learning_rate)
    if augment.copies_per_example == AUTO:
        chosen.append("copies_per_example")
    else:
        copies = float(augment.copies_per_example)
    return Recipe(rows_per_class, method, learning_rate, copies, tuple(chosen))


def contrastive_loss(params: TrainParams, labels: int) -> str:
    """train.contrastive_loss, or for auto the one the rule picks for this many labels: CoSENT for two, SetFit's cosine
    loss for more. On the built-in corpus's 3-class task the cosine loss scored 0.64 against CoSENT's 0.56 at 8 per
    class (two held-out draws); on its binary task the two were within a point of each other at 8 and CoSENT 1.5
    points ahead at 16 (three held-out draws and the five reported ones)."""
    if params.contrastive_loss != AUTO:
        return params.contrastive_loss
    if params.recipe != AUTO:
        return FIXED["contrastive_loss"]
    return "cosent" if labels <= COSENT_UP_TO_LABELS else "cosine"


def epochs(params: TrainParams, train_rows: int, world_size: int = 1) -> float:
    """train.epochs, or for auto the epochs that come nearest AUTO_STEPS optimiser steps over train_rows rows,
    within AUTO_EPOCHS (FIXED's under train.recipe fixed): 5,000 rows in batches of 16 train 3 epochs (~990 steps),
    100 rows 20 (140 steps)."""
    if params.epochs != AUTO:
        return float(params.epochs)
    if params.recipe != AUTO:
        return float(FIXED["epochs"])
    rows_per_step = params.batch_size * params.gradient_accumulation_steps * world_size
    steps_per_epoch = max(1, math.ceil(train_rows / rows_per_step))
    low, high = AUTO_EPOCHS
    return float(min(max(math.ceil(AUTO_STEPS / steps_per_epoch), low), high))


def contrastive_epochs(params: TrainParams, rows_per_class: float) -> float:
    """train.contrastive_epochs, or for auto the passes over the pairs the rule picks: one up to ONE_PASS_UP_TO
    original rows per class, two above. At 64 per class (binary task, held-out draws 10-11) a second pass scored
    0.7427 / 0.7743 against one pass's 0.7331 / 0.7497, for twice the tuning time; at 8-32 per class one pass already
    led SetFit, and a second there is unmeasured."""
    if params.contrastive_epochs != AUTO:
        return float(params.contrastive_epochs)
    if params.recipe != AUTO:
        return float(FIXED["contrastive_epochs"])
    return 1.0 if rows_per_class <= ONE_PASS_UP_TO else 2.0


def contrastive_pairs(params: TrainParams, rows_per_class: float) -> int:
    """train.contrastive_pairs, or for auto the rounds of pairs per train text: PAIR_ROUNDS up to PAIR_ROUNDS_UP_TO
    original rows per class, then ceil(20 * 64 / rows per class), so the pairs, and the tuning time, stay about what
    they are at 64 per class: 10 rounds at 128, 5 at 256. On the binary task's held-out draw 10 that scored 0.7643 at
    128 per class (20 rounds: 0.7619, in twice the time) and 0.7959 at 256 (20 rounds: 0.7783, in four times)."""
    if params.contrastive_pairs != AUTO:
        return int(params.contrastive_pairs)
    if params.recipe != AUTO:
        return int(FIXED["contrastive_pairs"])
    return max(1, math.ceil(PAIR_ROUNDS * PAIR_ROUNDS_UP_TO / max(rows_per_class, PAIR_ROUNDS_UP_TO)))
