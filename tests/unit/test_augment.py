from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.augment import run
from components.config import AugmentParams, ConfigError, ModelParams, parse_params
from components.copies import copies_per_class, pick_sources
from components.io import SUMMARY_FILE, read_json, read_split, write_split
from components.modalities.text import TextModality
from components.modalities.text.augment import (
    MAX_ATTEMPTS,
    char_noise,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_substitution,
    typo,
)
from components.modalities.text.augment import augment as augment_texts
from components.modalities.text.model import resolve_model
from components.modalities.text.normalise import dedup_key
from components.modalities.text.settings import TextAugmentParams, TextParams
from components.modalities.text.synonyms import (
    label_profiles,
    label_shift,
    nearest_neighbours,
    negation_pair,
    synonym_table,
    whole_words,
)
from components.stage import StageError

SYNONYMS = {"good": ("great", "fine"), "film": ("movie", "picture"), "funny": ("amusing",)}
NO_SYNONYMS = {"p_synonym": 0.0, "p_insert": 0.0}
TEXTS = [
    "A good film.",
    "Good, funny and far too long for its own good",
    "the film number seven was really quite good fun to watch",
    "short",
    "Two words",
]
OPS = {
    "synonym": lambda text, p, rng: synonym_substitution(text, p, rng, SYNONYMS),
    "insert": lambda text, p, rng: random_insertion(text, p, rng, SYNONYMS),
    "swap": random_swap,
    "delete": random_deletion,
    "char": char_noise,
}


def augment(train: pd.DataFrame, params: AugmentParams, synonyms: dict | None = None, held_out: list[str] = (),
            ops: TextAugmentParams = TextAugmentParams()) -> pd.DataFrame:
    """Text's augmentation with the stage's counts of copies, as the augment stage calls it."""
    wanted = copies_per_class(train["label"].value_counts().to_dict(), params)
    return augment_texts(train, wanted, ops, params.seed, synonyms, held_out)


@pytest.fixture(scope="module")
def model_dir() -> str:
    return resolve_model(ModelParams())[0]


def train_split(n: int = 50, labels: tuple[str, ...] = ("neg", "pos")) -> pd.DataFrame:
    return pd.DataFrame({
        "text": [f"the film number {i} was really quite good and funny to watch" for i in range(n)],
        "label": [labels[i % len(labels)] for i in range(n)],
        "source_row": np.arange(100, 100 + n),
    })


# --- the operations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_probability_zero_is_the_identity(op: str) -> None:
    for seed in range(20):
        for text in TEXTS:
            assert OPS[op](text, 0.0, np.random.default_rng(seed)) == text


@pytest.mark.parametrize("op", OPS)
def test_ops_never_empty_a_text_and_change_it_at_probability_one(op: str) -> None:
    changed = 0
    for seed in range(20):
        for text in TEXTS:
            out = OPS[op](text, 1.0, np.random.default_rng(seed))
            assert out.strip()
            changed += out != text
    assert changed > 20


@pytest.mark.parametrize("op", OPS)
def test_ops_are_seeded(op: str) -> None:
    text = TEXTS[2]
    runs = [OPS[op](text, 0.5, np.random.default_rng(seed)) for seed in (7, 7, 8, 9, 10)]
    assert runs[0] == runs[1]
    assert len(set(runs)) > 1


def test_swap_and_deletion_only_move_or_drop_words() -> None:
    rng = np.random.default_rng(0)
    words = TEXTS[2].split()
    for _ in range(100):
        assert Counter(random_swap(TEXTS[2], 0.5, rng).split()) == Counter(words)
        kept = iter(words)
        assert all(word in kept for word in random_deletion(TEXTS[2], 0.9, rng).split())  # a subsequence
    assert random_deletion("single", 1.0, rng) == "single"


def test_synonym_substitution_keeps_case_punctuation_and_length() -> None:
    rng = np.random.default_rng(1)
    out = synonym_substitution("Good, GOOD film!", 1.0, rng, SYNONYMS)
    first, second, third = out.split()
    assert first in ("Great,", "Fine,") and second in ("GREAT", "FINE") and third in ("movie!", "picture!")
    assert synonym_substitution("nothing to replace here", 1.0, rng, SYNONYMS) == "nothing to replace here"


def test_insertion_adds_neighbours_of_the_texts_own_words() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        out = random_insertion("a good film", 1.0, rng, SYNONYMS)
        added = Counter(out.split()) - Counter("a good film".split())
        assert sum(added.values()) >= 1 and set(added) <= {"great", "fine", "movie", "picture"}
    assert random_insertion("nothing to use", 1.0, rng, SYNONYMS) == "nothing to use"


def test_typos_change_one_letter_inside_a_word() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        out = typo("wonderful", rng)
        assert out[0] == "w" and out[-1] == "l" and abs(len(out) - 9) <= 1
        assert sorted(out) == sorted("wonderful") or len(out) != 9
    assert typo("bad", rng) == "bad"
    noisy = char_noise("(Wonderful), truly.", 1.0, np.random.default_rng(4))
    assert noisy.startswith("(W") and noisy.endswith("y.") and "), " in noisy


# --- synonyms from the model's input embeddings ----------------------------------------------------------------


def test_whole_words_keeps_whole_alphabetic_words_only() -> None:
    wordpiece = {"[CLS]": 0, "good": 1, "##ing": 2, "the": 3, "Good": 4, "ab": 5, "film": 6, "42": 7, "Paris": 8}
    assert whole_words(wordpiece, {"the"}) == {"good": 1, "film": 6, "paris": 8}
    bpe = {"<s>": 0, "\u0120good": 1, "good": 2, "\u0120Film": 3, "\u0120film": 4}
    assert whole_words(bpe) == {"good": 1, "film": 4}


def test_nearest_neighbours_match_brute_force_and_skip_self() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16))
    own = np.arange(0, 300, 7)
    indices, sims = nearest_neighbours(vectors[own], vectors, 5, self_index=own, chunk=8)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    full = unit[own] @ unit.T
    full[np.arange(len(own)), own] = -np.inf
    expected = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(full, expected, axis=1), rtol=1e-5)
    assert not (indices == own[:, None]).any()


def test_neighbours_of_good_and_film_look_like_synonyms(model_dir: str) -> None:
    table = synonym_table(model_dir, ["a good film"], top_k=5, min_similarity=0.4)
    assert {"great", "excellent"} & set(table["good"])
    assert {"movie", "movies"} & set(table["film"])
    assert all(word.isalpha() and word.islower() for words in table.values() for word in words)


def test_label_shift_keeps_antonyms_out(model_dir: str) -> None:
    texts = ["a good film", "good fun", "good acting", "a bad film", "bad acting", "bad fun"]
    labels = ["pos", "pos", "pos", "neg", "neg", "neg"]
    # The raw neighbours of "good" include "bad": the guard is what removes it.
    assert "bad" in synonym_table(model_dir, texts, labels, top_k=10, min_similarity=0.3, max_label_shift=1.0)["good"]
    guarded = synonym_table(model_dir, texts, labels, top_k=10, min_similarity=0.3, max_label_shift=0.2)
    assert "bad" not in guarded["good"] and "good" not in guarded["bad"]
    assert {"great", "excellent"} & set(guarded["good"])


def test_label_profiles_and_shift() -> None:
    profiles = label_profiles(["good good", "good", "bad"], ["pos", "pos", "neg"], ["good", "bad", "unseen"],
                              smoothing=0.0)
    np.testing.assert_allclose(profiles, [[0.0, 1.0], [1.0, 0.0], [1 / 3, 2 / 3]])
    assert label_shift(profiles[0], profiles[1]) == pytest.approx(1.0)
    assert label_shift(profiles[0], profiles[0]) == 0.0
    smoothed = label_profiles(["good"], ["pos"], ["good"], smoothing=5.0)
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0)


def test_negation_pairs() -> None:
    assert negation_pair("safe", "unsafe") and negation_pair("dislike", "like")
    assert not negation_pair("film", "movie")


# --- how many copies, of which rows ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"copies_per_example": 0.5}, {"a": 5, "b": 2}),
        ({"copies_per_example": 2.0}, {"a": 20, "b": 8}),
        ({"copies_per_example": 0.5, "per_class": {"b": 3.0}}, {"a": 5, "b": 12}),
        ({"copies_per_example": 0.0, "balance": True}, {"a": 0, "b": 6}),
        ({"copies_per_example": 1.0, "balance": True}, {"a": 10, "b": 16}),
        ({"copies_per_example": 0.0, "balance": True, "max_copies_per_example": 1.0}, {"a": 0, "b": 4}),
        ({"enabled": False, "copies_per_example": 2.0, "balance": True}, {"a": 0, "b": 0}),
    ],
)
def test_copies_per_class(settings: dict, expected: dict) -> None:
    assert copies_per_class({"a": 10, "b": 4}, AugmentParams(**settings)) == expected


def test_per_class_must_name_known_labels() -> None:
    with pytest.raises(StageError, match=r"augment.per_class names \['plot'\].*\['neg', 'pos'\]"):
        copies_per_class({"neg": 3, "pos": 3}, AugmentParams(per_class={"plot": 2.0}))


def test_pick_sources_spreads_copies_over_rows() -> None:
    picks = pick_sources(4, 10, np.random.default_rng(0))
    counts = np.bincount(picks, minlength=4)
    assert counts.sum() == 10 and set(counts) == {2, 3}
    assert len(pick_sources(5, 0, np.random.default_rng(0))) == 0


# --- augment: the train split plus its copies ------------------------------------------------------------------


def test_copies_keep_label_and_source_row_and_differ_from_originals() -> None:
    train = train_split()
    out = augment(train, AugmentParams(copies_per_example=1.5, seed=1), SYNONYMS)
    original, copies = out[~out["augmented"]], out[out["augmented"]]
    pd.testing.assert_frame_equal(original.drop(columns="augmented"), train)
    assert len(copies) == 76  # round(1.5 * 25) per label
    by_row = train.set_index("source_row")
    assert (copies["label"].to_numpy() == by_row.loc[copies["source_row"], "label"].to_numpy()).all()
    assert Counter(copies["source_row"]).most_common(1)[0][1] == 2 and copies["source_row"].nunique() == 50
    train_keys = {dedup_key(text) for text in train["text"]}
    copy_keys = [dedup_key(text) for text in copies["text"]]
    assert not train_keys & set(copy_keys) and len(set(copy_keys)) == len(copy_keys)


def test_copies_never_equal_a_val_or_test_text() -> None:
    train = pd.DataFrame({"text": ["good film"], "label": ["pos"], "source_row": [0]})
    params = AugmentParams(copies_per_example=3.0)
    ops = TextAugmentParams(p_synonym=1.0, p_insert=0.0, p_swap=0.0, p_delete=0.0, p_char=0.0)
    # Possible copies: "great/fine film/movie/picture"; all but one are held out, in another case and punctuation.
    held_out = ["Great film!", "great movie", "GREAT PICTURE", "fine film.", "fine  movie"]
    copies = augment(train, params, SYNONYMS, held_out=held_out, ops=ops).query("augmented")
    assert copies["text"].tolist() == ["fine picture"]
    unguarded = augment(train, params, SYNONYMS, ops=ops).query("augmented")
    assert len(unguarded) == 3 and set(map(dedup_key, unguarded["text"])) & set(map(dedup_key, held_out))


def test_texts_that_cannot_change_get_no_copies() -> None:
    train = pd.DataFrame({"text": ["ok", "ok then"], "label": ["a", "a"], "source_row": [0, 1]})
    params = AugmentParams(copies_per_example=1.0)
    ops = TextAugmentParams(p_swap=0.5, p_delete=0.0, p_char=0.0, **NO_SYNONYMS)
    copies = augment(train, params, ops=ops).query("augmented")
    assert copies["text"].tolist() == ["then ok"]  # "ok" has no other form; each is tried MAX_ATTEMPTS times
    assert MAX_ATTEMPTS > 1


def test_balance_lifts_the_minority_class() -> None:
    train = train_split(40, labels=("big", "big", "big", "small"))
    out = augment(train, AugmentParams(copies_per_example=0.0, balance=True, seed=3), SYNONYMS)
    assert out["label"].value_counts().to_dict() == {"big": 30, "small": 30}
    assert set(out.query("augmented")["label"]) == {"small"}


def test_augment_is_seeded() -> None:
    params = AugmentParams(copies_per_example=0.5, seed=4)
    first = augment(train_split(), params, SYNONYMS)
    pd.testing.assert_frame_equal(first, augment(train_split(), params, SYNONYMS))
    assert not first.equals(augment(train_split(), params.model_copy(update={"seed": 5}), SYNONYMS))


def test_disabled_augmentation_changes_nothing() -> None:
    out = augment(train_split(), AugmentParams(enabled=False), SYNONYMS)
    assert len(out) == 50 and not out["augmented"].any()


# --- the params and the stage ----------------------------------------------------------------------------------


def test_params_are_strict() -> None:
    with pytest.raises(ConfigError, match="augment.fraction: unknown key"):
        parse_params({"augment": {"fraction": 0.3}})
    with pytest.raises(ConfigError, match="per_class.plot = 9 above max_copies_per_example = 4"):
        parse_params({"augment": {"per_class": {"plot": 9}}})
    with pytest.raises(ConfigError, match="text.augment.p_char"):
        parse_params({"text": {"augment": {"p_char": 1.5}}})
    with pytest.raises(ConfigError, match="augment.p_char: moved to text.augment.p_char"):
        parse_params({"augment": {"p_char": 0.5}})
    assert parse_params({"augment": {"per_class": {1: 2, 0.0: 1}}}).augment.per_class == {"1": 2.0, "0": 1.0}


def test_run_writes_train_only_with_the_model_synonyms(tmp_path: Path) -> None:
    prepared, out = tmp_path / "prepared", tmp_path / "augmented"
    prepared.mkdir()
    train = train_split(20)
    write_split(prepared, "train", train)
    write_split(prepared, "val", pd.DataFrame({"text": ["a good film"], "label": ["pos"], "source_row": [0]}))
    write_split(prepared, "test", pd.DataFrame({"text": ["a bad film"], "label": ["neg"], "source_row": [1]}))
    text = TextModality(TextParams(augment=TextAugmentParams(p_synonym=0.5, p_insert=0.0, p_char=0.0)))
    result = run(AugmentParams(copies_per_example=1.0), ModelParams(), text, prepared, out)
    written = read_split(out, "train")
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY_FILE, "train.jsonl"]
    assert result.original_rows == 20 and result.added_rows == 20 and result.rejected == 0
    assert result.details["synonym_words"] > 0 and result.added_per_class == {"neg": 10, "pos": 10}
    assert len(written) == 40 and written["augmented"].sum() == 20
    assert read_json(out / SUMMARY_FILE)["rows_per_class"] == {"neg": 20, "pos": 20}
    # Substitutes from the model appear in the copies: words no train text holds (swap and deletion add none).
    train_words = {word for text in train["text"] for word in text.split()}
    assert any(set(text.split()) - train_words for text in written.query("augmented")["text"])
