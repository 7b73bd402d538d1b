"""Synonym-like neighbours from the model's own input embeddings: for each word of the train split, its nearest
whole-word neighbours by cosine, with antonyms by prefix and words of another label profile dropped. No word list,
no download: the vocabulary and the embedding matrix come from the checkpoint folder."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from components.io import read_json
from components.modalities.text.settings import TextAugmentParams
from components.stage import StageError

log = logging.getLogger(__name__)

MIN_WORD_LETTERS = 3
# Word-start markers of byte-level BPE (RoBERTa, GPT-2) and SentencePiece (T5, XLM-R) vocabularies.
WORD_START_MARKERS = ("\u0120", "\u2581")
# Input-embedding tensors by the names transformers gives them, most common first.
EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "shared.weight", "wte.weight")
# Pseudo-rows that pull a word's label profile towards the overall label shares (a word seen once is weak evidence).
LABEL_SMOOTHING_ROWS = 5.0
# Neighbours in embedding space include antonyms formed by a prefix (safe/unsafe, complete/incomplete).
NEGATION_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "mis")
_LETTERS = r"(?u)\b[^\W\d_]+\b"


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


def build_synonyms(train: pd.DataFrame, params: TextAugmentParams, model_dir: str | Path,
                   model_name: str) -> dict[str, tuple[str, ...]]:
    """The synonym table for a train split: its words' neighbours in the input embeddings of the model in model_dir."""
    if not params.uses_synonyms or train.empty:
        return {}
    table = synonym_table(model_dir, train["text"], train["label"], params.synonym_top_k,
                          params.synonym_min_similarity, params.synonym_max_label_shift)
    log.info("synonyms from %s: %d of the train split's words have substitutes", model_name, len(table))
    return table
