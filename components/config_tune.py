"""params.yaml's `tune` block: the hyperparameter search's budget, storage and space (components/tune.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from components.config_block import Block


class Dimension(Block):
    """One key of tune.space: a range (low, high; log for a log scale; step for a grid) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: Annotated[float | None, Field(gt=0.0)] = None
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> Dimension:
        ranged = self.low is not None and self.high is not None
        if ranged == (self.choices is not None) or (self.choices is not None and not self.choices):
            raise ValueError("give either low and high (a range) or a non-empty list of choices")
        if ranged and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if ranged and self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class TuneParams(Block):
    """The hyperparameter search (`tuneline tune`, components/tune.py): Optuna over params.yaml keys, scored on the
    val split's macro-F1; the test split is never read."""

    trials: Annotated[int, Field(ge=1, le=10_000)] = 20  # finished trials the study aims at, over restarts and workers
    timeout_s: Annotated[float | None, Field(gt=0.0)] = 1200.0  # this process starts no trial after this
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "successive_halving", "none"] = "median"
    storage: str = "sqlite:///.tuneline/tune.db"  # any SQLAlchemy URL (PostgreSQL: postgresql://user@host/db)
    study: str | None = None  # the study's name in the storage; null = package.model_name
    seed: int = 0
    heartbeat_s: Annotated[int, Field(ge=1, le=3600)] = 30  # a trial silent 4 heartbeats (worker killed) is retried
    include_default: bool = True  # a new study's first trial is params.yaml as it is, so "the default was best" can win
    space: dict[str, Dimension] = {
        "train.learning_rate": Dimension(low=1e-5, high=2e-4, log=True),
        "train.epochs": Dimension(choices=[2, 3, 4, 6]),
        "train.weight_decay": Dimension(low=0.0, high=0.1),
        "model.freeze_layers": Dimension(choices=[0, 2, 4]),
        "model.head.type": Dimension(choices=["linear", "mlp"]),
    }

    @field_validator("space")
    @classmethod
    def _model_and_train_keys(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        # Trials retrain on the prepared and augmented data as they are: a key of another block would need those
        # stages rerun per trial.
        wrong = [key for key in space if key.split(".")[0] not in ("model", "train") or "." not in key]
        if wrong:
            raise ValueError(f"tune.space keys are dotted model.* or train.* keys (e.g. train.learning_rate); "
                             f"not {wrong}")
        if not space:
            raise ValueError("tune.space is empty: name at least one model.* or train.* key to search")
        return space
