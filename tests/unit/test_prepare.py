import bz2
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components import prepare, tables
from components.config import ConfigError, DataParams, parse_params
from components.io import SPLITS, SUMMARY_FILE, read_labels, read_split, read_summary, write_split
from components.modalities.text import TextModality
from components.modalities.text import source as text_source
from components.modalities.text.normalise import dedup_key, normalise, normalise_counting
from components.modalities.text.settings import TextParams
from components.stage import StageError

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "fixtures" / "bad"


def run(data: DataParams, out: Path, accepted: Path | None = None, **text: object) -> prepare.PrepareResult:
    """The prepare stage on text data, with the text block's settings `text` (e.g. column="review")."""
    return prepare.run(data, TextModality(TextParams(**text)), out, accepted)


def split(data: pd.DataFrame, val: float, test: float, seed: int) -> prepare.Splits:
    """prepare.split keyed as text's rows are: by dedup_key."""
    return prepare.split(data, val, test, seed, TextModality().item_key(data).fillna(""))


def frame(rows: list[tuple[str | None, str | None]]) -> pd.DataFrame:
    return pd.DataFrame({"text": [r[0] for r in rows], "label": [r[1] for r in rows], "source_row": range(len(rows))})


def corpus(n_per_label: int = 40) -> pd.DataFrame:
    rows = [(f"review number {i} of label {label}", label) for label in ("a", "b") for i in range(n_per_label)]
    return frame(rows)


def every_row(out: Path) -> pd.DataFrame:
    """All three splits of a prepared folder, in source order."""
    parts = [read_split(out, name) for name in SPLITS]
    return pd.concat(parts, ignore_index=True).sort_values("source_row").reset_index(drop=True)


def reviews(n: int) -> list[tuple[str, str]]:
    return [(f"film {i} was {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg") for i in range(n)]


def test_normalise_removes_noise_and_collapses_whitespace() -> None:
    assert normalise("  Great\x85film\t\r\n  really\u200b ") == "Great film really"
    assert dedup_key("A GREAT film!!") == dedup_key("a great   film")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", ("plain text", 0)),
        ("Great\x85film", ("Great film", 1)),
        ("zero\u200bwidth\ufeff", ("zero width", 2)),
        # Tabs and line breaks are layout: replaced, not counted as noise.
        ("two\tcolumns\r\nand lines", ("two columns and lines", 0)),
        ("\x07\x1b", ("", 2)),
        ("e\u0301", ("\u00e9", 0)),
    ],
)
def test_normalise_counting(text: str, expected: tuple[str, int]) -> None:
    assert normalise_counting(text) == expected
    assert normalise(text) == expected[0]


def test_split_is_stratified_deterministic_and_complete() -> None:
    data = corpus()
    first = split(data, 0.2, 0.2, seed=7)
    again = split(data, 0.2, 0.2, seed=7)
    other = split(data, 0.2, 0.2, seed=8)
    for name, part in first.items():
        pd.testing.assert_frame_equal(part, getattr(again, name))
        assert part["label"].value_counts().to_dict() == {"a": len(part) // 2, "b": len(part) // 2}
    assert sorted(pd.concat([p for _, p in first.items()])["source_row"]) == list(range(len(data)))
    assert len(first.test) == 16 and len(first.val) == 16 and len(first.train) == 48
    assert not first.test["source_row"].equals(other.test["source_row"])


def test_duplicates_stay_in_one_split() -> None:
    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(60)]
    rows += [("TEXT 3!", "a"), ("text   3", "a"), ("Text 4.", "b")]
    splits = split(frame(rows), 0.2, 0.2, seed=1)
    homes = {}
    for name, part in splits.items():
        for text in part["text"]:
            homes.setdefault(dedup_key(text), set()).add(name)
    assert all(len(where) == 1 for where in homes.values())


def test_tiny_class_still_gets_a_train_row() -> None:
    rows = [(f"text {i}", "big") for i in range(50)] + [("lonely one", "small"), ("lonely two", "small")]
    splits = split(frame(rows), 0.3, 0.3, seed=0)
    assert "small" in set(splits.train["label"])


def test_subsample_keeps_label_shares() -> None:
    data = frame([(f"t{i}", "a") for i in range(90)] + [(f"u{i}", "b") for i in range(10)])
    small = prepare.subsample(data, 50, seed=3)
    assert small["label"].value_counts().to_dict() == {"a": 45, "b": 5}


@pytest.mark.parametrize(("value", "expected"), [(1, "1"), (1.0, "1"), (2.5, "2.5"), (" pos ", "pos"), ("", None),
                                                 (None, None), (float("nan"), None)])
def test_label_string(value: object, expected: str | None) -> None:
    assert tables.label_string(value) == expected


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_run_on_a_user_csv_with_other_columns(tmp_path: Path) -> None:
    lines = ["review;sentiment"] + [f"film {i} was {'good' if i % 2 else 'bad'};{i % 2}" for i in range(40)]
    source = write_csv(tmp_path / "mine.csv", "\ufeff" + "\r\n".join(lines) + "\r\n")
    params = DataParams(path=str(source), label_column="sentiment")
    result = run(params, tmp_path / "out", column="review")
    assert result.labels == ["0", "1"]
    assert sum(result.counts.values()) == 40
    assert read_labels(tmp_path / "out") == ["0", "1"]
    assert set(read_split(tmp_path / "out", "train")["label"]) == {"0", "1"}
    rows = every_row(tmp_path / "out")
    assert rows["line"].tolist() == list(range(2, 42))
    assert rows["text"].iloc[0] == "film 0 was bad"


# Line numbers ---------------------------------------------------------------------------------------------------

MULTILINE = (
    'text,label\r\n'
    '"first, with a comma",pos\r\n'          # line 2
    '"second spans\r\nthree\r\nlines",neg\r\n'  # lines 3-5
    '\r\n'                                    # line 6: blank, ignored
    'third,pos\r\n'                           # line 7
    '"fourth has ""quotes""\nand a bare LF",neg\r\n'  # lines 8-9
    'fifth,neg\r\n'                           # line 10
)


def test_line_is_where_each_csv_record_starts_even_across_quoted_line_breaks(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "multi.csv", MULTILINE + "".join(f"more {i},{'pos' if i % 2 else 'neg'}\r\n"
                                                                    for i in range(10)))
    table = tables.read_source(source)
    assert table.line[:5] == [2, 3, 7, 8, 10]
    assert table.line[5:] == list(range(11, 21))
    assert table.source_row == list(range(15))
    assert table.item[1] == "second spans\r\nthree\r\nlines"
    run(DataParams(path=str(source)), tmp_path / "out")
    rows = every_row(tmp_path / "out")
    assert rows["line"].tolist() == table.line
    assert rows["text"].iloc[1] == "second spans three lines"
    assert rows["text"].iloc[3] == 'fourth has "quotes" and a bare LF'
    assert rows["line"].dtype.kind == "i"


def test_line_in_jsonl_counts_blank_lines_and_crlf(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"text {i}", "label": i % 2}) for i in range(12)]
    lines.insert(2, "")
    source = tmp_path / "rows.jsonl"
    source.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    table = tables.read_source(source)
    assert table.format == "jsonl"
    assert table.line == [1, 2] + list(range(4, 14))
    assert table.source_row == list(range(12))
    run(DataParams(path=str(source)), tmp_path / "out")
    assert every_row(tmp_path / "out")["line"].tolist() == table.line
    assert read_labels(tmp_path / "out") == ["0", "1"]


def test_parquet_rows_are_numbered_from_one(tmp_path: Path) -> None:
    source = tmp_path / "rows.parquet"
    pd.DataFrame({"body": [f"text {i}" for i in range(12)], "stars": [i % 3 for i in range(12)],
                  "other": range(12)}).to_parquet(source)
    result = run(DataParams(path=str(source), label_column="stars"), tmp_path / "out", column="body")
    assert result.labels == ["0", "1", "2"]
    assert result.summary["format"] == "parquet"
    rows = every_row(tmp_path / "out")
    assert rows["line"].tolist() == list(range(1, 13))
    assert rows["source_row"].tolist() == list(range(12))


def test_builtin_corpus_lines_point_at_each_record() -> None:
    loaded = text_source.read(DataParams(), "text")
    lines = bz2.open(text_source.builtin_corpus_path(), "rt", encoding="utf-8", newline="").read().split("\n")
    data = loaded.frame
    assert loaded.format == "csv" and not loaded.malformed
    assert data["line"].is_monotonic_increasing and data["line"].iloc[0] == 2
    for _, row in data.iloc[[0, 1, 2500, len(data) - 1]].iterrows():
        assert lines[row["line"] - 1].startswith(f"{row['label']},")


# Malformed records ------------------------------------------------------------------------------------------------

def test_malformed_csv_lines_are_skipped_and_recorded(tmp_path: Path) -> None:
    rows = [f"{t},{label}" for t, label in reviews(20)]
    rows.insert(3, "too, many, fields,pos")  # line 5
    rows.insert(9, "just one field")          # line 11
    source = write_csv(tmp_path / "bad.csv", "text,label\n" + "\n".join(rows) + "\n")
    result = run(DataParams(path=str(source)), tmp_path / "out")
    summary = read_summary(tmp_path / "out")
    assert summary == result.summary
    assert summary["rows_read"] == 22 and summary["rows_kept"] == 20 and summary["malformed_count"] == 2
    assert [m["line"] for m in summary["malformed_lines"]] == [5, 11]
    assert "4 field(s) where the header has 2" in summary["malformed_lines"][0]["problem"]
    assert "double quotes" in summary["malformed_lines"][0]["problem"]
    assert "1 field(s)" in summary["malformed_lines"][1]["problem"]
    kept = every_row(tmp_path / "out")
    assert 3 not in kept["source_row"].tolist() and 9 not in kept["source_row"].tolist()
    assert kept["line"].iloc[3] == 6  # the record after the skipped one keeps its own line


def test_an_unclosed_quote_is_one_malformed_record_that_says_so(tmp_path: Path) -> None:
    rows = [f"{t},{label}" for t, label in reviews(20)]
    rows.insert(10, '"never closed,pos')
    source = write_csv(tmp_path / "bad.csv", "text,label\n" + "\n".join(rows) + "\n")
    table = tables.read_source(source)
    assert [m.line for m in table.malformed] == [12]
    assert "never closed" in table.malformed[0].problem


def test_malformed_jsonl_lines_are_skipped_and_recorded(tmp_path: Path) -> None:
    lines = [json.dumps({"text": t, "label": label}) for t, label in reviews(20)]
    lines[4] = '{"text": "cut off'
    lines[7] = '["a", "list"]'
    lines[9] = "42"
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = run(DataParams(path=str(source)), tmp_path / "out").summary
    assert summary["format"] == "jsonl"
    assert summary["malformed_lines"] == [
        {"line": 5, "problem": "not valid JSON (Unterminated string starting at, column 10)"},
        {"line": 8, "problem": "a JSON array, not an object"},
        {"line": 10, "problem": "a JSON number, not an object"},
    ]
    assert summary["rows_read"] == 20 and summary["rows_kept"] == 17


def test_summary_file_has_exactly_the_documented_keys_sorted(tmp_path: Path) -> None:
    lines = ["text,label"] + [f"film\x85{i} \u200bwas fine,{i % 2}" for i in range(10)] + ["x,y,z"]
    lines += [f"plain {i},{i % 2}" for i in range(10)]
    source = write_csv(tmp_path / "noisy.csv", "\n".join(lines) + "\n")
    run(DataParams(path=str(source)), tmp_path / "out")
    text = (tmp_path / "out" / SUMMARY_FILE).read_text(encoding="utf-8")
    summary = json.loads(text)
    assert list(summary) == sorted(summary) == ["format", "malformed_count", "malformed_lines", "modality", "noise",
                                                "rows_kept", "rows_read", "source"]
    assert summary["noise"] == {"characters_replaced": 20, "rows_changed": 10}
    assert summary["malformed_lines"] == [{"line": 12, "problem": "3 field(s) where the header has 2: an unquoted "
                                                                  "',' inside a text? put that text in double quotes"}]
    assert summary["source"] == str(source)
    assert read_split(tmp_path / "out", "train")["text"].str.contains("\x85|\u200b").sum() == 0


def test_only_the_first_hundred_malformed_lines_are_listed(tmp_path: Path) -> None:
    rows = [f"{t},{label}" for t, label in reviews(20)] + ["a,b,c"] * 150
    source = write_csv(tmp_path / "many.csv", "text,label\n" + "\n".join(rows) + "\n")
    summary = run(DataParams(path=str(source)), tmp_path / "out").summary
    assert summary["malformed_count"] == 150
    assert len(summary["malformed_lines"]) == 100 and summary["malformed_lines"][0]["line"] == 22


def test_noise_is_counted_on_the_rows_kept(tmp_path: Path) -> None:
    lines = ["text,label"] + [f"film {i}\x85,{i % 2}" for i in range(100)]
    source = write_csv(tmp_path / "noisy.csv", "\n".join(lines) + "\n")
    summary = run(DataParams(path=str(source), max_rows=50), tmp_path / "out").summary
    assert summary["rows_read"] == 100 and summary["rows_kept"] == 50
    assert summary["noise"] == {"rows_changed": 50, "characters_replaced": 50}


def test_builtin_corpus_noise_is_reported() -> None:
    loaded = text_source.read(DataParams(), "text")
    assert loaded.frame[prepare.NOISE].sum() >= 1  # the stray \x85 in the corpus
    assert not loaded.frame["text"].str.contains("\x85").any()


# Formats, delimiters, encodings --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "delimiter", "configured"),
    [("c.csv", ",", None), ("s.csv", ";", None), ("t.tsv", "\t", None), ("t.txt", "\t", None), ("p.csv", "|", None),
     ("forced.csv", ";", ";"), ("tab.csv", "\t", "\t")],
)
def test_delimiters_are_detected_or_configured(tmp_path: Path, name: str, delimiter: str,
                                               configured: str | None) -> None:
    rows = [f'"{t}, quoted {delimiter} too"{delimiter}{label}' for t, label in reviews(20)]
    source = write_csv(tmp_path / name, f"id{delimiter}text{delimiter}label\n" +
                       "".join(f"{i}{delimiter}{row}\n" for i, row in enumerate(rows)))
    result = run(DataParams(path=str(source), delimiter=configured), tmp_path / "out")
    assert result.labels == ["neg", "pos"] and result.summary["malformed_count"] == 0
    assert every_row(tmp_path / "out")["text"].iloc[0] == normalise(f"film 0 was bad, quoted {delimiter} too")


def test_a_wrong_configured_delimiter_names_the_right_one(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "s.csv", "text;label\n" + "".join(f"{t};{label}\n" for t, label in reviews(20)))
    with pytest.raises(StageError, match=r"found one field 'text;label' with data.delimiter ','; set data.delimiter: "
                                         r"';'"):
        run(DataParams(path=str(source), delimiter=","), tmp_path / "out")


@pytest.mark.parametrize("bom", ["", "\ufeff"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_bom_and_line_endings(tmp_path: Path, bom: str, newline: str) -> None:
    body = newline.join(["text,label"] + [f"{t},{label}" for t, label in reviews(20)]) + newline
    source = write_csv(tmp_path / "x.csv", bom + body)
    result = run(DataParams(path=str(source)), tmp_path / "out")
    rows = every_row(tmp_path / "out")
    assert result.summary["rows_read"] == 20 and rows["line"].tolist() == list(range(2, 22))
    assert not rows["text"].str.contains("\r").any()


@pytest.mark.parametrize(("values", "expected"), [([0, 1], ["0", "1"]), ([0.0, 1.0], ["0", "1"]),
                                                  (["0", "1"], ["0", "1"]), ([1, 2], ["1", "2"])])
def test_numeric_labels_become_strings_in_every_format(tmp_path: Path, values: list, expected: list[str]) -> None:
    texts = [f"text number {i}" for i in range(20)]
    labels = [values[i % 2] for i in range(20)]
    csv_source = write_csv(tmp_path / "n.csv", "text,label\n" + "".join(f"{t},{v}\n" for t, v in zip(texts, labels)))
    jsonl_source = tmp_path / "n.jsonl"
    jsonl_source.write_text("".join(json.dumps({"text": t, "label": v}) + "\n" for t, v in zip(texts, labels)))
    parquet_source = tmp_path / "n.parquet"
    pd.DataFrame({"text": texts, "label": labels}).to_parquet(parquet_source)
    for source in (jsonl_source, parquet_source):
        assert run(DataParams(path=str(source)), tmp_path / source.suffix).labels == expected
    if all(isinstance(v, int) for v in values):
        assert run(DataParams(path=str(csv_source)), tmp_path / "csv").labels == expected


def test_numeric_labels_in_params_yaml_are_read_as_strings() -> None:
    assert parse_params(yaml.safe_load("data: {labels: [0, 1, 2.0]}")).data.labels == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="data.labels"):
        parse_params(yaml.safe_load("data: {labels: [yes, no]}"))


@pytest.mark.parametrize(("key", "value"), [("delimiter", ",,"), ("delimiter", ""), ("encoding", "utf-9")])
def test_bad_reading_params_are_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"data.{key}"):
        parse_params({"data": {key: value}})


def test_other_encodings_need_data_encoding(tmp_path: Path) -> None:
    body = "text,label\n" + "".join(f"{t},{label}\n" for t, label in reviews(20)) + "caf\u00e9 cr\u00e8me,pos\n"
    source = write_csv(tmp_path / "latin.csv", body, encoding="cp1252")
    with pytest.raises(StageError) as error:
        run(DataParams(path=str(source)), tmp_path / "out")
    message = str(error.value)
    assert "is not valid utf-8 text: line 22, column 4 has the byte(s) 0xe9" in message
    assert "data.encoding" in message and str(source) in message
    result = run(DataParams(path=str(source), encoding="cp1252"), tmp_path / "out")
    assert "caf\u00e9 cr\u00e8me" in every_row(tmp_path / "out")["text"].tolist()
    assert result.summary["rows_read"] == 21

    wide = write_csv(tmp_path / "wide.csv", body, encoding="utf-16")
    with pytest.raises(StageError, match="UTF-16 text"):
        run(DataParams(path=str(wide)), tmp_path / "out")
    assert run(DataParams(path=str(wide), encoding="utf-16"), tmp_path / "out").summary["rows_read"] == 21


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zip"])
def test_compressed_sources_are_read(tmp_path: Path, suffix: str) -> None:
    plain = write_csv(tmp_path / "r.csv", "text,label\n" + "".join(f"{t},{label}\n" for t, label in reviews(20)))
    target = tmp_path / f"r.csv{suffix}"
    if suffix == ".zip":
        import zipfile

        with zipfile.ZipFile(target, "w") as archive:
            archive.write(plain, "r.csv")
    else:
        import lzma

        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
        with opener(target, "wb") as handle:
            handle.write(plain.read_bytes())
    result = run(DataParams(path=str(target)), tmp_path / "out")
    assert result.summary["rows_read"] == 20
    assert every_row(tmp_path / "out")["line"].tolist() == list(range(2, 22))


def test_a_hundred_thousand_rows(tmp_path: Path) -> None:
    n = 100_000
    labels = ("pos", "neg", "neutral")
    with (tmp_path / "big.csv").open("w", encoding="utf-8", newline="") as handle:
        handle.write("id,text,label\r\n")
        for i in range(n):
            handle.write(f'{i},"review {i}: the film, in a word, was {labels[i % 3]}",{labels[i % 3]}\r\n')
    result = run(DataParams(path=str(tmp_path / "big.csv")), tmp_path / "out")
    assert sum(result.counts.values()) == n
    assert result.summary["rows_read"] == n and result.summary["malformed_count"] == 0
    test = read_split(tmp_path / "out", "test")
    assert (test["line"] == test["source_row"] + 2).all()
    assert result.counts["test"] == pytest.approx(0.15 * n, abs=3)


# Sources that stop prepare -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "is empty"),
        ("blank.csv", b"\n\n  \n", "is empty"),
        ("bom.jsonl", b"\xef\xbb\xbf", "is empty"),
        ("header.csv", b"text,label\n", "no rows"),
        ("header.jsonl", b"\n\n", "is empty"),
        ("columns.csv", b"body,target\nhello,a\n", "set text.column / data.label_column"),
        ("case.csv", b"Text,label\nhello,a\n", "did you mean 'Text' for 'text'?"),
        ("keys.jsonl", b'{"body": "hello", "label": "a"}\n', r"missing \['text'\], found \['body', 'label'\]"),
        ("data.xlsx", b"text,label\n", "cannot tell the format"),
        ("gz.csv", gzip.compress(b"text,label\nhello,a\n", mtime=0), "gzip-compressed data, not CSV text; .*gz.csv.gz"),
        ("parquet.csv", b"PAR1\x00\x00", "Parquet data, not CSV text; rename it to parquet.parquet"),
        ("csv.parquet", b"text,label\nhello,a\n", "is not Parquet data .*'text,label'.*rename it to csv.csv"),
        ("page.jsonl", b"\n  <!DOCTYPE html><html></html>", "HTML web page"),
        ("page.csv", b"<html><body>login</body></html>", "HTML web page"),
        ("nul.csv", b"text,label\n\x00\x01\x02,a\n", "binary data"),
        ("array.json", b'[{"text": "a", "label": "b"}]', "JSON array, not JSON Lines"),
        ("lines.csv", b'{"text": "a", "label": "b"}\n', "looks like JSON Lines"),
        ("csv.jsonl", b"text,label\nhello,a\n", r"none of its 2 records could be read .*rename it to \.csv"),
        ("broken.csv.gz", b"not gzip at all", "could not be decompressed"),
        ("two.csv.zip", None, "ZIP archive of 2 files"),
        ("truncated.parquet", b"PAR1 and then nothing", "could not be read as Parquet"),
        ("colon.csv", b"text:label\nhello:a\n", "found one field 'text:label': none of"),
        ("le.csv", "text,label\nhello,a\n".encode("utf-16-le"), "UTF-16 text without a byte-order mark; .*utf-16-le"),
    ],
)
def test_bad_sources_say_what_to_fix(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    source = tmp_path / name
    if content is None:
        import zipfile

        with zipfile.ZipFile(source, "w") as archive:
            archive.writestr("a.csv", "text,label\n")
            archive.writestr("b.csv", "text,label\n")
    else:
        source.write_bytes(content)
    with pytest.raises(StageError, match=message) as error:
        run(DataParams(path=str(source)), tmp_path / "out")
    assert str(source) in str(error.value)
    assert "\n" not in str(error.value)  # one paragraph
    assert not (tmp_path / "out").exists()


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="does not exist"):
        text_source.read(DataParams(path=str(tmp_path / "nope.csv")), "text")
    with pytest.raises(StageError, match="is a folder"):
        text_source.read(DataParams(path=str(tmp_path)), "text")


def test_failed_run_keeps_previous_output(tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(30)))
    run(DataParams(path=str(good)), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert set(before) == {"train.jsonl", "val.jsonl", "test.jsonl", "labels.json", SUMMARY_FILE}
    bad = write_csv(tmp_path / "bad.csv", "other\nx\n")
    with pytest.raises(StageError):
        run(DataParams(path=str(bad)), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_read_split_without_line_and_read_summary_without_summary(tmp_path: Path) -> None:
    write_split(tmp_path, "train", frame([("a text", "pos"), ("b text", "neg")]))
    assert list(read_split(tmp_path, "train").columns) == ["text", "label", "source_row"]
    assert read_summary(tmp_path) is None


def test_builtin_corpus_loads() -> None:
    loaded = text_source.read(DataParams(), "text")
    data = loaded.frame
    assert loaded.source.startswith("builtin:")
    assert set(data["label"]) == {"fresh", "rotten", "plot"}
    assert len(data) > 5000 and loaded.rows_read == len(data)
    assert not data["text"].str.contains("\x85").any()


def test_a_source_outside_the_watched_folder_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inside = tmp_path / "raw" / "mine.csv"
    with caplog.at_level("WARNING"):
        prepare.warn_if_unwatched(DataParams(path=str(inside)), tmp_path / "raw")
        assert not caplog.records
        prepare.warn_if_unwatched(DataParams(path=str(tmp_path / "elsewhere.csv")), tmp_path / "raw")
    assert "will not notice" in caplog.text


# The command line: a message, never a traceback ------------------------------------------------------------------

def run_cli(folder: Path, data: dict) -> subprocess.CompletedProcess:
    (folder / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "components.prepare"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_command_line_stops_bad_files_with_a_message_and_keeps_the_previous_output(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    write_csv(raw / "good.csv", "text,label\n" + "".join(f"{t},{label}\n" for t, label in reviews(30)))
    first = run_cli(tmp_path, {"path": "data/raw/good.csv"})
    assert first.returncode == 0, first.stderr
    prepared = tmp_path / "data" / "prepared"
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}

    cases = {"gzip_named.csv": "gzip-compressed", "latin1.csv": "not valid utf-8 text: line 8",
             "csv_named.parquet": "is not Parquet data", "html_page.jsonl": "HTML web page",
             "missing_text_column.csv": "missing ['text']", "header_only.csv": "has a header but no rows"}
    for name, words in cases.items():
        (raw / name).write_bytes((BAD / name).read_bytes())
        result = run_cli(tmp_path, {"path": f"data/raw/{name}"})
        assert result.returncode == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
        assert f"prepare stopped: data.path 'data/raw/{name}'" in result.stderr
        assert words in result.stderr, (name, result.stderr)
        assert {p.name: p.read_bytes() for p in prepared.iterdir()} == before


def test_the_command_line_reports_malformed_lines_and_succeeds(tmp_path: Path) -> None:
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "bad.jsonl").write_bytes((BAD / "invalid_lines.jsonl").read_bytes())
    result = run_cli(tmp_path, {"path": "data/raw/bad.jsonl"})
    assert result.returncode == 0, result.stderr
    assert "skipped 2 malformed record(s) (line 4, 9)" in result.stderr
    assert read_summary(tmp_path / "data" / "prepared")["malformed_count"] == 2


def hash_split(data: pd.DataFrame, val: float, test: float, seed: int) -> prepare.Splits:
    """prepare.hash_split keyed as text's rows are."""
    return prepare.hash_split(data, val, test, seed, TextModality().item_key(data).fillna(""))


def homes(splits: prepare.Splits) -> dict[int, str]:
    return {int(row): name for name, part in splits.items() for row in part["source_row"]}


def test_hash_split_never_moves_a_row_when_rows_are_added() -> None:
    rows = [(f"review number {i}", "a" if i % 3 else "b") for i in range(2000)]
    before = homes(hash_split(frame(rows[:1000]), 0.15, 0.15, seed=42))
    after = homes(hash_split(frame(rows), 0.15, 0.15, seed=42))
    assert {row: after[row] for row in before} == before
    shares = pd.Series(after).value_counts(normalize=True)
    assert 0.12 < shares["test"] < 0.18 and 0.12 < shares["val"] < 0.18
    assert homes(hash_split(frame(rows), 0.15, 0.15, seed=43)) != after  # the seed is part of the hash


def test_hash_split_keeps_duplicates_together_and_ignores_the_label() -> None:
    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(300)]
    rows += [("TEXT 3!", "b"), ("text   3", "a")]
    found = homes(hash_split(frame(rows), 0.2, 0.2, seed=1))
    assert found[300] == found[301] == found[3]


def test_prepare_with_hash_splits_keeps_old_test_rows_in_test_as_accepted_rows_arrive(tmp_path: Path) -> None:
    data = corpus(60)
    source = tmp_path / "data.csv"
    data[["text", "label"]].to_csv(source, index=False)
    params = DataParams(path=str(source), split="hash")
    run(params, tmp_path / "first")
    first_test = set(read_split(tmp_path / "first", "test")["text"])
    accepted = tmp_path / "accepted"
    accepted.mkdir()
    pd.DataFrame({"text": [f"an incoming review {i}" for i in range(50)],
                  "label": ["a", "b"] * 25}).to_parquet(accepted / "0001.parquet")
    run(params, tmp_path / "second", accepted)
    second = {name: set(read_split(tmp_path / "second", name)["text"]) for name in SPLITS}
    assert first_test and first_test <= second["test"]
    assert len(second["test"]) > len(first_test)  # some incoming rows landed in test too
    run(DataParams(path=str(source), split="random"), tmp_path / "random-first")
    run(DataParams(path=str(source), split="random"), tmp_path / "random-second", accepted)
    moved = (set(read_split(tmp_path / "random-first", "test")["text"])
             - set(read_split(tmp_path / "random-second", "test")["text"]))
    assert moved  # what random splits do instead: old test rows go to train or val


def write_rows(path: Path, rows: list[tuple[str, str]]) -> str:
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return str(path)


def test_val_and_test_files_are_the_splits_exactly(tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", [(f"a train review {i}", "ab"[i % 2]) for i in range(40)])
    val = write_rows(tmp_path / "val.csv", [(f"a val review {i}", "ab"[i % 2]) for i in range(6)])
    test = write_rows(tmp_path / "test.csv", [(f"a test review {i}", "ab"[i % 2]) for i in range(8)])
    result = run(DataParams(path=train, val_path=val, test_path=test), tmp_path / "both")
    assert result.counts == {"train": 40, "val": 6, "test": 8}
    got_test = read_split(tmp_path / "both", "test")
    assert got_test["text"].tolist() == [f"a test review {i}" for i in range(8)]
    assert got_test["line"].tolist() == list(range(2, 10))  # lines of test.csv
    assert sorted(every_row(tmp_path / "both")["source_row"]) == list(range(54))  # one number per row
    summary = read_summary(tmp_path / "both")
    assert summary["rows_read"] == 54 and "data.test_path" in summary["source"]

    only_test = run(DataParams(path=train, test_path=test, val_fraction=0.25), tmp_path / "test-only")
    assert only_test.counts == {"train": 30, "val": 10, "test": 8}  # val comes out of data.path
    assert set(read_split(tmp_path / "test-only", "test")["text"]) == set(got_test["text"])


def test_a_given_split_file_that_is_missing_is_named(tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", [(f"a review {i}", "ab"[i % 2]) for i in range(20)])
    with pytest.raises(StageError, match="data.test_path .*nope.csv.* does not exist; set data.test_path"):
        run(DataParams(path=train, test_path=str(tmp_path / "nope.csv")), tmp_path / "out")


def test_a_row_of_the_test_file_also_in_train_stops_validate_with_both_rows_named(tmp_path: Path) -> None:
    from components.config import ValidateParams
    from components.validate import ValidationFailed
    from components.validate import run as validate

    train_rows = [(f"a train review {i}", "ab"[i % 2]) for i in range(30)] + [("The Same Review!", "a")]
    train = write_rows(tmp_path / "train.csv", train_rows)
    test = write_rows(tmp_path / "test.csv", [("the same review", "a")] + [(f"a test review {i}", "ab"[i % 2])
                                                                         for i in range(6)])
    run(DataParams(path=train, test_path=test), tmp_path / "out")
    with pytest.raises(ValidationFailed) as caught:
        validate(ValidateParams(), TextModality(), tmp_path / "out", tmp_path / "validation.json")
    message = str(caught.value)
    assert "[leakage]" in message and "'The Same Review!'" in message and "test line 2" in message


def test_a_split_column_puts_each_row_where_it_says(tmp_path: Path) -> None:
    names = ["train"] * 20 + ["Dev"] * 4 + ["TEST"] * 6 + ["holdout"] * 2
    rows = pd.DataFrame({"text": [f"review {i}" for i in range(len(names))], "label": ["ab"[i % 2] for i in
                                                                                         range(len(names))],
                         "part": names})
    for path in (tmp_path / "data.csv", tmp_path / "data.jsonl", tmp_path / "data.parquet"):
        if path.suffix == ".csv":
            rows.to_csv(path, index=False)
        elif path.suffix == ".jsonl":
            rows.to_json(path, orient="records", lines=True)
        else:
            rows.to_parquet(path)
        params = DataParams(path=str(path), split_column="part", split_names={"holdout": "test"})
        result = run(params, tmp_path / path.suffix[1:])
        assert result.counts == {"train": 20, "val": 4, "test": 8}, path
        test = read_split(tmp_path / path.suffix[1:], "test")
        assert test["text"].tolist() == [f"review {i}" for i in range(24, 32)]
        assert "part" not in test.columns and "given_split" not in test.columns

    with pytest.raises(StageError, match=r"data.split_column 'part' holds 2 value\(s\) that are no split, \['holdout'\] "
                                         r"\(line 32, 33\); give every row train, val or test, or map"):
        run(DataParams(path=str(tmp_path / "data.csv"), split_column="part"), tmp_path / "unmapped")
    with pytest.raises(StageError, match=r"expected the columns \['text', 'label', 'fold'\].*data.split_column"):
        run(DataParams(path=str(tmp_path / "data.csv"), split_column="fold"), tmp_path / "missing")


def test_a_split_column_row_without_a_split_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("text,label,part\na fine film,a,train\na dull film,b,\nanother film,a,test\n")
    with pytest.raises(StageError, match=r"holds 1 value\(s\) that are no split, \[''\] \(line 3\)"):
        run(DataParams(path=str(path), split_column="part"), tmp_path / "out")


@pytest.mark.parametrize(("data", "message"), [
    ({"path": "x.csv", "split_column": "part", "test_path": "t.csv"}, "use one"),
    ({"split_column": "part"}, "which is builtin"),
    ({"path": "x.csv", "split_names": {"dev": "val"}}, "which is not set"),
    ({"path": "x.csv", "split_column": "part", "split_names": {"dev": "validation"}}, "data.split_names"),
])
def test_split_settings_that_contradict_each_other_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params({"data": data})
