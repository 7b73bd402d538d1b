"""Perturbed copies of train texts: small per-word operations, each with its own probability in text.augment.

Synonym-like substitution and insertion (nearest neighbours in the pretrained model's own input embeddings, so no
word list or download is needed: components/modalities/text/synonyms.py), random swap, random deletion, and
typo-like character noise. Every copy keeps its source row's label and `source_row`, and is never identical (by
`dedup_key`) to its original, to another train text, or to any val or test text, so augmentation cannot leak
evaluation texts into training.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from components.copies import pick_sources
from components.modalities.text.normalise import dedup_key
from components.modalities.text.settings import TextAugmentParams

Synonyms = Mapping[str, tuple[str, ...]]

# Tries for a copy that differs from its original and from every train, val and test text before giving up.
MAX_ATTEMPTS = 10
MIN_TYPO_LETTERS = 4
# One token: leading punctuation, the word, trailing punctuation ("(good," -> "(", "good", ",").
_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------
# The operations: pure functions of a text, a probability and a generator. Probability 0 returns the text as is.


def _split_token(token: str) -> tuple[str, str, str]:
    """Leading punctuation, the word, trailing punctuation."""
    lead, core, trail = _TOKEN.match(token).groups()
    return lead, core, trail


def _match_case(word: str, like: str) -> str:
    """`word` written in the case pattern of `like` (UPPER, Capitalised or lower)."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def synonym_substitution(text: str, p: float, rng: np.random.Generator, synonyms: Synonyms) -> str:
    """Replace each word that has neighbours, with probability p, by one of them (case and punctuation kept)."""
    if p <= 0 or not synonyms:
        return text
    tokens = text.split()
    for i, token in enumerate(tokens):
        lead, core, trail = _split_token(token)
        options = synonyms.get(core.lower())
        if options and rng.random() < p:
            tokens[i] = lead + _match_case(options[int(rng.integers(len(options)))], core) + trail
    return " ".join(tokens)


def random_insertion(text: str, p: float, rng: np.random.Generator, synonyms: Synonyms) -> str:
    """Insert, for each word with probability p, a neighbour of a random word of the text at a random place."""
    if p <= 0 or not synonyms:
        return text
    tokens = text.split()
    inserts = int(rng.binomial(len(tokens), p))
    donors = [core.lower() for _, core, _ in map(_split_token, tokens) if core.lower() in synonyms]
    if not inserts or not donors:
        return text
    for _ in range(inserts):
        options = synonyms[donors[int(rng.integers(len(donors)))]]
        tokens.insert(int(rng.integers(len(tokens) + 1)), options[int(rng.integers(len(options)))])
    return " ".join(tokens)


def random_swap(text: str, p: float, rng: np.random.Generator) -> str:
    """Swap each word, with probability p, with another word of the text."""
    tokens = text.split()
    if p <= 0 or len(tokens) < 2:
        return text
    for i in np.flatnonzero(rng.random(len(tokens)) < p):
        j = int(rng.integers(len(tokens) - 1))
        j += j >= i  # any position but i
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return " ".join(tokens)


def random_deletion(text: str, p: float, rng: np.random.Generator) -> str:
    """Drop each word with probability p; one word always stays, so the text is never empty."""
    tokens = text.split()
    if p <= 0 or len(tokens) < 2:
        return text
    keep = rng.random(len(tokens)) >= p
    if not keep.any():
        keep[int(rng.integers(len(tokens)))] = True
    return " ".join(token for token, kept in zip(tokens, keep, strict=True) if kept)


def typo(word: str, rng: np.random.Generator) -> str:
    """One typo inside a word, its first and last letters kept: two neighbouring letters swapped, one dropped or
    one doubled."""
    if len(word) < MIN_TYPO_LETTERS:
        return word
    kind = int(rng.integers(3))
    if kind == 0:
        i = int(rng.integers(1, len(word) - 2))
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    i = int(rng.integers(1, len(word) - 1))
    return word[:i] + word[i + 1:] if kind == 1 else word[:i] + word[i] + word[i:]


def char_noise(text: str, p: float, rng: np.random.Generator) -> str:
    """Put a typo into each word of at least 4 letters with probability p."""
    if p <= 0:
        return text
    tokens = text.split()
    for i in np.flatnonzero(rng.random(len(tokens)) < p):
        lead, core, trail = _split_token(tokens[i])
        if core.isalpha():
            tokens[i] = lead + typo(core, rng) + trail
    return " ".join(tokens)


def perturb(text: str, params: TextAugmentParams, rng: np.random.Generator, synonyms: Synonyms) -> str:
    """Apply every operation in turn (substitution, insertion, swap, deletion, typos) with params' probabilities."""
    text = synonym_substitution(text, params.p_synonym, rng, synonyms)
    text = random_insertion(text, params.p_insert, rng, synonyms)
    text = random_swap(text, params.p_swap, rng)
    text = random_deletion(text, params.p_delete, rng)
    return char_noise(text, params.p_char, rng)


def augment(train: pd.DataFrame, wanted: Mapping[str, int], params: TextAugmentParams, seed: int,
            synonyms: Synonyms | None = None, held_out: Iterable[str] = ()) -> pd.DataFrame:
    """The train split (augmented = False) followed by its perturbed copies (augmented = True).

    A copy keeps its source row's label and source_row. A copy whose dedup_key equals its original's, another
    train text's, an earlier copy's or a `held_out` (val/test) text's is drawn again, up to MAX_ATTEMPTS times,
    then given up, so a text too short to change may get fewer copies than asked.

    Args:
        train: columns text, label, source_row.
        wanted: copies per label (components.copies.copies_per_class).
        params: the operations' probabilities (text.augment).
        seed: augment.seed; the same seed and data give the same copies.
        synonyms: word -> substitutes for synonym substitution and insertion (build_synonyms); none = skip both.
        held_out: texts a copy must never equal (the val and test splits).
    """
    train = train.reset_index(drop=True).assign(augmented=False)
    if not sum(wanted.values()):
        return train
    synonyms = synonyms or {}
    rng = np.random.default_rng(seed)
    taken = {dedup_key(text) for text in held_out} | {dedup_key(text) for text in train["text"]}
    copies: list[dict[str, Any]] = []
    for label in sorted(wanted):
        members = np.flatnonzero(train["label"].to_numpy() == label)
        for position in members[pick_sources(len(members), wanted[label], rng)]:
            row = train.iloc[position]
            for _ in range(MAX_ATTEMPTS):
                text = perturb(row["text"], params, rng, synonyms)
                key = dedup_key(text)
                if key and key not in taken:
                    taken.add(key)
                    copies.append({**row.to_dict(), "text": text, "augmented": True})
                    break
    if not copies:
        return train
    return pd.concat([train, pd.DataFrame(copies, columns=train.columns)], ignore_index=True)

