import numpy as np
import pandas as pd

from components.augment import augment, perturb
from components.config import AugmentParams


def train_split(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame({
        "text": [f"the film number {i} was really quite good fun" for i in range(n)],
        "label": ["pos" if i % 2 else "neg" for i in range(n)],
        "source_row": range(n),
    })


def test_perturb_keeps_words_and_never_empties() -> None:
    rng = np.random.default_rng(0)
    text = "one two three four five six"
    for _ in range(200):
        out = perturb(text, rng, p_swap=0.3, p_delete=0.9)
        assert out
        assert set(out.split()) <= set(text.split())
    assert perturb("single", rng, 1.0, 1.0) == "single"


def test_augment_adds_copies_with_their_source_and_label() -> None:
    train = train_split()
    out = augment(train, AugmentParams(fraction=1.0, p_swap=0.2, p_delete=0.2, seed=1))
    original, copies = out[~out["augmented"]], out[out["augmented"]]
    pd.testing.assert_frame_equal(original.drop(columns="augmented"), train)
    assert 30 <= len(copies) <= 50
    by_row = train.set_index("source_row")["label"]
    assert (copies["label"].to_numpy() == by_row.loc[copies["source_row"]].to_numpy()).all()
    sources = by_row.index.map(lambda r: train.loc[r, "text"])
    assert all(text != sources[row] for text, row in zip(copies["text"], copies["source_row"], strict=True))


def test_augment_is_seeded() -> None:
    params = AugmentParams(fraction=0.5, seed=4)
    pd.testing.assert_frame_equal(augment(train_split(), params), augment(train_split(), params))
    assert not augment(train_split(), params).equals(augment(train_split(), AugmentParams(fraction=0.5, seed=5)))


def test_disabled_augmentation_changes_nothing() -> None:
    out = augment(train_split(), AugmentParams(enabled=False))
    assert len(out) == 50 and not out["augmented"].any()
