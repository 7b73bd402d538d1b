"""Stage `augment`: add label-preserving perturbed copies of train rows; val and test are never touched.

Each copy is made by small text operations, each with its own per-word probability in params.yaml: synonym-like
substitution and insertion (nearest neighbours in the pretrained model's own input-embedding matrix, so no word
list or download is needed), random swap, random deletion, and typo-like character noise. Every copy keeps its
source row's label and `source_row`, and is never identical (by `dedup_key`) to its original, to another train
text, or to any val or test text, so augmentation cannot leak evaluation texts into training.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import AugmentParams, ModelParams, Params
from components.io import SUMMARY_FILE, atomic_dir, read_json, read_split, write_json, write_split
from components.stage import StageError, stage_main
from components.text import dedup_key

log = logging.getLogger(__name__)

Synonyms = Mapping[str, tuple[str, ...]]

# Tries for a copy that differs from its original and from every train, val and test text before giving up.
MAX_ATTEMPTS = 10
MIN_WORD_LETTERS = 3
MIN_TYPO_LETTERS = 4
# Word-start markers of byte-level BPE (RoBERTa, GPT-2) and SentencePiece (T5, XLM-R) vocabularies.
WORD_START_MARKERS = ("\u0120", "\u2581")
# Input-embedding tensors by the names transformers gives them, most common first.
EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "shared.weight", "wte.weight")
# Pseudo-rows that pull a word's label profile towards the overall label shares (a word seen once is weak evidence).
LABEL_SMOOTHING_ROWS = 5.0
# Neighbours in embedding space include antonyms formed by a prefix (safe/unsafe, complete/incomplete).
NEGATION_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "mis")
# One token: leading punctuation, the word, trailing punctuation ("(good," -> "(", "good", ",").
_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
_LETTERS = r"(?u)\b[^\W\d_]+\b"


@dataclass(frozen=True)
class AugmentResult:
    """Rows in the train split before and after augmentation."""

    original_rows: int
    added_rows: int
    added_per_class: dict[str, int]
    rejected: int
    synonym_words: int


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


def perturb(text: str, params: AugmentParams, rng: np.random.Generator, synonyms: Synonyms) -> str:
    """Apply every operation in turn (substitution, insertion, swap, deletion, typos) with params' probabilities."""
    text = synonym_substitution(text, params.p_synonym, rng, synonyms)
    text = random_insertion(text, params.p_insert, rng, synonyms)
    text = random_swap(text, params.p_swap, rng)
    text = random_deletion(text, params.p_delete, rng)
    return char_noise(text, params.p_char, rng)


# ---------------------------------------------------------------------------------------------------------------
# Synonym-like neighbours from the model's own input embeddings.


def whole_words(vocab: Mapping[str, int], stopwords: Collection[str] = ()) -> dict[str, int]:
    """Lower-cased whole-word vocabulary entries (letters only, 3+ of them, not stopwords) and their token ids.

    WordPiece marks word pieces with '##'; byte-level BPE and SentencePiece instead mark word starts, so in those
    vocabularies only marked tokens are whole words. Special tokens ([CLS], <s>) are not letters and drop out.
    A lower-case token is preferred over its capitalised twin.
    """
    marked = any(token[:1] in WORD_START_MARKERS for token in vocab)
    if marked:
        whole = [(token[1:], index) for token, index in vocab.items() if token[:1] in WORD_START_MARKERS]
    else:
        whole = [(token, index) for token, index in vocab.items() if not token.startswith("##")]
    words: dict[str, int] = {}
    for token, index in sorted(whole, key=lambda item: (item[0] != item[0].lower(), item[1])):
        word = token.lower()
        if len(word) >= MIN_WORD_LETTERS and word.isalpha() and word not in stopwords:
            words.setdefault(word, index)
    return words


def nearest_neighbours(queries: np.ndarray, candidates: np.ndarray, k: int, self_index: np.ndarray | None = None,
                       chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar candidate rows of each query row, best first.

    Args:
        queries: (q, d) vectors.
        candidates: (c, d) vectors.
        k: neighbours per query (at most c).
        self_index: for each query, its own row among the candidates (never its own neighbour), or -1.
        chunk: queries per matrix product, to bound memory at chunk x c floats.

    Returns:
        (indices, similarities), both (q, k).
    """
    def unit(matrix: np.ndarray) -> np.ndarray:
        matrix = np.asarray(matrix, dtype=np.float32)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    queries, candidates = unit(queries), unit(candidates)
    k = min(k, len(candidates) - (self_index is not None))
    indices = np.empty((len(queries), k), dtype=np.int64)
    similarities = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ candidates.T
        if self_index is not None:
            own = np.asarray(self_index[start:start + chunk])
            rows = np.flatnonzero(own >= 0)
            scores[rows, own[rows]] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        similarities[start:start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return indices, similarities


def negation_pair(a: str, b: str) -> bool:
    """True when one word is the other with a negating prefix (safe/unsafe, like/dislike)."""
    return any(a == prefix + b or b == prefix + a for prefix in NEGATION_PREFIXES)


def words_in(texts: Iterable[str]) -> set[str]:
    """The lower-cased words (letters only) of some texts, as synonym substitution sees them."""
    pattern = re.compile(_LETTERS)
    return {word.lower() for text in texts for word in pattern.findall(text)}


def label_profiles(texts: Iterable[str], labels: Iterable[str], words: list[str],
                   smoothing: float = LABEL_SMOOTHING_ROWS) -> np.ndarray:
    """For each word, the share of each label among the rows that hold it (labels in sorted order), smoothed
    towards the labels' overall shares by `smoothing` pseudo-rows; a word no text holds gets those shares.

    Returns:
        (len(words), labels) array whose rows sum to 1.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    texts, labels = list(texts), np.asarray(list(labels), dtype=object)
    classes = sorted(set(labels))
    shares = np.array([(labels == label).mean() for label in classes])
    profiles = np.tile(shares, (len(words), 1))
    try:
        counter = CountVectorizer(binary=True, lowercase=True, token_pattern=_LETTERS).fit(texts)
    except ValueError:  # no words at all
        return profiles
    holds = counter.transform(texts).T.tocsr()  # words x rows
    per_label = np.column_stack([np.asarray(holds[:, labels == label].sum(axis=1)).ravel() for label in classes])
    known = counter.vocabulary_
    rows = np.array([i for i, word in enumerate(words) if word in known], dtype=np.int64)
    if len(rows):
        counts = per_label[[known[words[i]] for i in rows]]
        profiles[rows] = (counts + smoothing * shares) / (counts.sum(axis=1, keepdims=True) + smoothing)
    return profiles


def label_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Total variation distance between label profiles (0 = same labels, 1 = disjoint), over the last axis."""
    return 0.5 * np.abs(a - b).sum(axis=-1)


def _embedding_key(keys: Iterable[str]) -> str | None:
    keys = list(keys)
    for suffix in EMBEDDING_SUFFIXES:
        matching = sorted((key for key in keys if key.endswith(suffix)), key=len)
        if matching:
            return matching[0]
    return None


def load_vocab(model_dir: str | Path) -> dict[str, int]:
    """The tokenizer's vocabulary (token -> id): from tokenizer.json when there is one, else through transformers."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir)).get_vocab()


def load_word_embeddings(model_dir: str | Path, token_ids: np.ndarray) -> np.ndarray:
    """Rows `token_ids` of the model's input-embedding matrix, read from its safetensors file(s) alone, as float32."""
    from safetensors import safe_open

    folder = Path(model_dir)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index)["weight_map"]
        key = _embedding_key(weight_map)
        file = folder / weight_map[key] if key else None
    else:
        file = folder / "model.safetensors"
        if not file.is_file():
            raise StageError(
                f"synonym substitution reads the input embeddings from {folder}/model.safetensors, which is missing; "
                "save the model with safetensors, or set augment.p_synonym and augment.p_insert to 0"
            )
        with safe_open(str(file), framework="pt") as handle:
            key = _embedding_key(handle.keys())
    if key is None:
        raise StageError(
            f"no input-embedding tensor (a name ending in one of {list(EMBEDDING_SUFFIXES)}) in {folder}; "
            "set augment.p_synonym and augment.p_insert to 0 to augment without synonyms"
        )
    with safe_open(str(file), framework="pt") as handle:
        # torch, not numpy: numpy has no bfloat16, the dtype many checkpoints are saved in.
        import torch

        table = handle.get_tensor(key)
        return table[torch.as_tensor(token_ids, dtype=torch.long)].float().numpy()


def synonym_table(model_dir: str | Path, texts: Iterable[str], labels: Iterable[str] | None = None, top_k: int = 5,
                  min_similarity: float = 0.4, max_label_shift: float = 1.0) -> dict[str, tuple[str, ...]]:
    """Up to top_k substitutes for each word of `texts`: its nearest whole-word neighbours in the model's input
    embeddings, at least min_similarity apart by cosine, computed in one vectorised pass.

    Embedding neighbours include antonyms (good/bad, love/hate, safe/unsafe). Negation pairs are dropped, and with
    `labels`, so is a neighbour whose label profile in these texts (label_profiles) is more than max_label_shift
    away from the word's: 'bad', mostly in negative rows, is then no substitute for 'good', mostly in positive ones.
    Stopwords are neither looked up nor offered.

    Args:
        model_dir: a local checkpoint folder with model.safetensors (or a sharded index) and its tokenizer.
        texts: the texts whose words may be replaced (the train split).
        labels: their labels, for the label-shift guard; None = no guard.
        top_k: substitutes kept per word.
        min_similarity: cosine floor.
        max_label_shift: total-variation ceiling between a word's and a substitute's label profiles (1 = off).

    Returns:
        word -> substitutes, best first; words without one are absent.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    texts = list(texts)
    vocabulary = whole_words(load_vocab(model_dir), ENGLISH_STOP_WORDS)
    names = list(vocabulary)
    position = {word: i for i, word in enumerate(names)}
    asked = sorted(words_in(texts) & position.keys())
    if not asked or len(names) < 2:
        return {}
    vectors = load_word_embeddings(model_dir, np.fromiter(vocabulary.values(), dtype=np.int64, count=len(names)))
    own = np.array([position[word] for word in asked])
    # Spare neighbours, since the filters below drop some after the search.
    indices, similarities = nearest_neighbours(vectors[own], vectors, 2 * top_k + 5, self_index=own)
    keep = similarities >= min_similarity
    if labels is not None and max_label_shift < 1.0:
        profiles = label_profiles(texts, labels, names)
        keep &= label_shift(profiles[own][:, None, :], profiles[indices]) <= max_label_shift
    table: dict[str, tuple[str, ...]] = {}
    for word, row, kept in zip(asked, indices, keep, strict=True):
        options = [names[j] for j in row[kept] if not negation_pair(word, names[j])][:top_k]
        if options:
            table[word] = tuple(options)
    return table


def build_synonyms(train: pd.DataFrame, params: AugmentParams, model_params: ModelParams) -> dict[str, tuple[str, ...]]:
    """The synonym table for a train split: its words' neighbours in the configured model's input embeddings."""
    if not (params.enabled and params.uses_synonyms) or train.empty:
        return {}
    from components.model import resolve_model

    model_dir, name = resolve_model(model_params)
    table = synonym_table(model_dir, train["text"], train["label"], params.synonym_top_k,
                          params.synonym_min_similarity, params.synonym_max_label_shift)
    log.info("synonyms from %s: %d of the train split's words have substitutes", name, len(table))
    return table


# ---------------------------------------------------------------------------------------------------------------
# How many copies, of which rows.


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


def augment(train: pd.DataFrame, params: AugmentParams, synonyms: Synonyms | None = None,
            held_out: Iterable[str] = ()) -> pd.DataFrame:
    """The train split (augmented = False) followed by its perturbed copies (augmented = True).

    A copy keeps its source row's label and source_row. A copy whose dedup_key equals its original's, another
    train text's, an earlier copy's or a `held_out` (val/test) text's is drawn again, up to MAX_ATTEMPTS times,
    then given up, so a text too short to change may get fewer copies than asked.

    Args:
        train: columns text, label, source_row.
        params: the augment block.
        synonyms: word -> substitutes for synonym substitution and insertion (build_synonyms); none = skip both.
        held_out: texts a copy must never equal (the val and test splits).
    """
    train = train.reset_index(drop=True).assign(augmented=False)
    counts = train["label"].value_counts().to_dict()
    wanted = copies_per_class(counts, params)
    if not sum(wanted.values()):
        return train
    synonyms = synonyms or {}
    rng = np.random.default_rng(params.seed)
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


def run(params: AugmentParams, model_params: ModelParams, prepared_dir: str | Path,
        out_dir: str | Path) -> AugmentResult:
    """Augment the prepared train split into out_dir/train.jsonl (val and test are read, never augmented).

    Args:
        params: the augment block of params.yaml.
        model_params: the model block; synonyms come from this model's input embeddings.
        prepared_dir: folder with the prepared splits.
        out_dir: the augmented-data folder (paths.augmented); also gets summary.json with the counts.

    Returns:
        Row counts before and after, copies per class, and copies given up.

    Raises:
        StageError: per_class names an unknown label, or the model's embeddings cannot be read.
    """
    from components.images import augment_images, holds_images

    if holds_images(prepared_dir):
        return augment_images(params, prepared_dir, out_dir)
    train = read_split(prepared_dir, "train")
    held_out = pd.concat([read_split(prepared_dir, "val")["text"], read_split(prepared_dir, "test")["text"]])
    wanted = copies_per_class(train["label"].value_counts().to_dict(), params)
    synonyms = build_synonyms(train, params, model_params) if sum(wanted.values()) else {}
    augmented = augment(train, params, synonyms, held_out)
    added = augmented.loc[augmented["augmented"], "label"].value_counts().to_dict()
    result = AugmentResult(
        original_rows=len(train),
        added_rows=len(augmented) - len(train),
        added_per_class={label: int(added.get(label, 0)) for label in sorted(wanted)},
        rejected=sum(wanted.values()) - (len(augmented) - len(train)),
        synonym_words=len(synonyms),
    )
    with atomic_dir(out_dir) as tmp:
        write_split(tmp, "train", augmented)
        write_json(tmp / SUMMARY_FILE, {
            "original_rows": result.original_rows,
            "added_rows": result.added_rows,
            "added_per_class": result.added_per_class,
            "rows_per_class": augmented["label"].value_counts().sort_index().to_dict(),
            "rejected": result.rejected,
            "synonym_words": result.synonym_words,
        })
    log.info("augmented train split: %d rows + %d perturbed copies %s; %d copies given up (too short to change)",
             result.original_rows, result.added_rows, result.added_per_class, result.rejected)
    return result


def main() -> None:
    def _run(p: Params) -> AugmentResult:
        return run(p.augment, p.model, p.paths.prepared, p.paths.augmented)

    stage_main("augment", _run)


if __name__ == "__main__":
    main()
