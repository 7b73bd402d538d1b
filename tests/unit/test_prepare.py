from pathlib import Path

import pandas as pd
import pytest

from components import prepare
from components.config import DataParams
from components.io import read_labels, read_split
from components.stage import StageError
from components.text import dedup_key, normalise


def frame(rows: list[tuple[str | None, str | None]]) -> pd.DataFrame:
    return pd.DataFrame({"text": [r[0] for r in rows], "label": [r[1] for r in rows], "source_row": range(len(rows))})


def corpus(n_per_label: int = 40) -> pd.DataFrame:
    rows = [(f"review number {i} of label {label}", label) for label in ("a", "b") for i in range(n_per_label)]
    return frame(rows)


def test_normalise_removes_noise_and_collapses_whitespace() -> None:
    assert normalise("  Great\x85film\t\r\n  really\u200b ") == "Great film really"
    assert dedup_key("A GREAT film!!") == dedup_key("a great   film")


def test_split_is_stratified_deterministic_and_complete() -> None:
    data = corpus()
    first = prepare.split(data, 0.2, 0.2, seed=7)
    again = prepare.split(data, 0.2, 0.2, seed=7)
    other = prepare.split(data, 0.2, 0.2, seed=8)
    for name, part in first.items():
        pd.testing.assert_frame_equal(part, getattr(again, name))
        assert part["label"].value_counts().to_dict() == {"a": len(part) // 2, "b": len(part) // 2}
    assert sorted(pd.concat([p for _, p in first.items()])["source_row"]) == list(range(len(data)))
    assert len(first.test) == 16 and len(first.val) == 16 and len(first.train) == 48
    assert not first.test["source_row"].equals(other.test["source_row"])


def test_duplicates_stay_in_one_split() -> None:
    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(60)]
    rows += [("TEXT 3!", "a"), ("text   3", "a"), ("Text 4.", "b")]
    splits = prepare.split(frame(rows), 0.2, 0.2, seed=1)
    homes = {}
    for name, part in splits.items():
        for text in part["text"]:
            homes.setdefault(dedup_key(text), set()).add(name)
    assert all(len(where) == 1 for where in homes.values())


def test_tiny_class_still_gets_a_train_row() -> None:
    rows = [(f"text {i}", "big") for i in range(50)] + [("lonely one", "small"), ("lonely two", "small")]
    splits = prepare.split(frame(rows), 0.3, 0.3, seed=0)
    assert "small" in set(splits.train["label"])


def test_subsample_keeps_label_shares() -> None:
    data = frame([(f"t{i}", "a") for i in range(90)] + [(f"u{i}", "b") for i in range(10)])
    small = prepare.subsample(data, 50, seed=3)
    assert small["label"].value_counts().to_dict() == {"a": 45, "b": 5}


@pytest.mark.parametrize(("value", "expected"), [(1, "1"), (1.0, "1"), (2.5, "2.5"), (" pos ", "pos"), ("", None),
                                                 (None, None), (float("nan"), None)])
def test_label_string(value: object, expected: str | None) -> None:
    assert prepare._label_string(value) == expected


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_run_on_a_user_csv_with_other_columns(tmp_path: Path) -> None:
    lines = ["review;sentiment"] + [f"film {i} was {'good' if i % 2 else 'bad'};{i % 2}" for i in range(40)]
    source = write_csv(tmp_path / "mine.csv", "\ufeff" + "\r\n".join(lines) + "\r\n")
    params = DataParams(path=str(source), text_column="review", label_column="sentiment")
    result = prepare.run(params, tmp_path / "out")
    assert result.labels == ["0", "1"]
    assert sum(result.counts.values()) == 40
    assert read_labels(tmp_path / "out") == ["0", "1"]
    assert set(read_split(tmp_path / "out", "train")["label"]) == {"0", "1"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "is empty"),
        ("header.csv", "text,label\n", "no rows"),
        ("columns.csv", "body,target\nhello,a\n", "set data.text_column / data.label_column"),
        ("data.xlsx", "text,label\n", "cannot tell the format"),
    ],
)
def test_bad_sources_say_what_to_fix(tmp_path: Path, name: str, content: str, message: str) -> None:
    source = write_csv(tmp_path / name, content)
    with pytest.raises(StageError, match=message):
        prepare.run(DataParams(path=str(source)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="does not exist"):
        prepare.load(DataParams(path=str(tmp_path / "nope.csv")))


def test_failed_run_keeps_previous_output(tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(30)))
    prepare.run(DataParams(path=str(good)), tmp_path / "out")
    before = read_split(tmp_path / "out", "train")
    bad = write_csv(tmp_path / "bad.csv", "other\nx\n")
    with pytest.raises(StageError):
        prepare.run(DataParams(path=str(bad)), tmp_path / "out")
    pd.testing.assert_frame_equal(read_split(tmp_path / "out", "train"), before)


def test_builtin_corpus_loads() -> None:
    data, source = prepare.load(DataParams())
    assert source.startswith("builtin:")
    assert set(data["label"]) == {"fresh", "rotten", "plot"}
    assert len(data) > 5000
    assert not data["text"].str.contains("\x85").any()


def test_a_source_outside_the_watched_folder_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inside = tmp_path / "raw" / "mine.csv"
    with caplog.at_level("WARNING"):
        prepare.warn_if_unwatched(DataParams(path=str(inside)), tmp_path / "raw")
        assert not caplog.records
        prepare.warn_if_unwatched(DataParams(path=str(tmp_path / "elsewhere.csv")), tmp_path / "raw")
    assert "will not notice" in caplog.text
