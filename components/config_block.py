"""The base of every params.yaml block, and the bounded numbers they share (components/config.py re-exports them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Block(BaseModel):
    """One block of params.yaml: an unknown key is an error, and the values cannot change once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
