"""The `text` block of params.yaml: where the text is, how long it may be, how much of it the model reads, and the
operations that make augmented copies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from components.config import Block, Probability


class TextAugmentParams(Block):
    """Per-word operations that make a perturbed copy of a train text, each with its probability."""

    p_synonym: Probability = 0.1  # replace a word with an embedding-space neighbour (the model's own)
    p_insert: Probability = 0.05  # insert a neighbour of a random word of the text
    p_swap: Probability = 0.03  # swap a word with another word of the text
    p_delete: Probability = 0.05  # drop a word
    p_char: Probability = 0.02  # a typo: two letters swapped, one dropped or one doubled
    synonym_top_k: Annotated[int, Field(ge=1, le=100)] = 5
    synonym_min_similarity: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.4
    synonym_max_label_shift: Probability = 0.2

    @property
    def uses_synonyms(self) -> bool:
        return self.p_synonym > 0 or self.p_insert > 0


class TextParams(Block):
    """Text data (data.modality: text)."""

    column: str = "text"  # the text column of a table source (ignored for builtin)
    min_chars: Annotated[int, Field(ge=1)] = 1  # a shorter text fails validate's text_length check
    max_chars: Annotated[int, Field(ge=1)] = 200_000  # a longer one too: a runaway cell (a whole file), not an article
    max_tokens: Annotated[int, Field(ge=8, le=4096)] = 128  # tokens the model reads of each text
    truncation: Literal["head", "head_tail"] = "head_tail"  # of a text over max_tokens: both ends, or its opening
    pooling: Literal["auto", "mean", "cls"] = "auto"  # what the head reads (pooling.py); auto = the checkpoint's own
    augment: TextAugmentParams = TextAugmentParams()
