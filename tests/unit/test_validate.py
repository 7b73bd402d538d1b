"""The validate stage on tiny splits: the real Great Expectations suite, no mocks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.checks import TEXT_SHOWN
from components.config import ConfigError, ValidateParams, ValidateSeverity, parse_params
from components.env import OFFLINE
from components.io import LABELS_FILE, SPLITS, SUMMARY_FILE, read_json, split_path, write_json, write_split
from components.modalities.text import TextModality
from components.modalities.text.normalise import dedup_key, dedup_keys
from components.modalities.text.settings import TextParams
from components.stage import StageError
from components.validate import ValidationFailed, main, run
from components.validation_report import render_markdown

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ValidateParams(min_per_class=2, max_failed_rows_shown=5)
TEXT = TextModality(TextParams(min_chars=1, max_chars=200))  # the text modality, with texts of 1 to 200 characters
LABELS = ["neg", "pos"]
EVERY_CHECK = set(ValidateSeverity.names())
IMAGE_ONLY = {"unreadable_image", "image_too_small", "image_too_large", "image_channels"}
AUDIO_ONLY = {"unreadable_audio", "audio_sample_rate", "audio_channels", "audio_too_short", "audio_too_long",
              "audio_silent", "audio_clipped"}

Row = tuple[int, "str | None", "str | None"]  # source_row, text, label

# Every text unique (also by dedup_key), two of each label in train: this passes every check.
CLEAN: dict[str, list[Row]] = {
    "train": [
        (0, "a gripping, well acted thriller", "pos"),
        (1, "warm and funny from start to finish", "pos"),
        (2, "a dull and lifeless sequel", "neg"),
        (3, "the plot makes no sense at all", "neg"),
    ],
    "val": [(4, "charming cast and a clever script", "pos"), (5, "two hours I will never get back", "neg")],
    "test": [(6, "the best film of the year", "pos"), (7, "badly edited and far too long", "neg")],
}


def line_of(source_row: int) -> int:
    """The fixture's source is a CSV with a header: record 0 is on line 2."""
    return source_row + 2


def summary(malformed: list[tuple[int, str]] = (), rows_changed: int = 0, characters: int = 0,
            malformed_count: int | None = None) -> dict:
    """A summary.json as prepare writes it."""
    rows = sum(len(r) for r in CLEAN.values())
    count = len(malformed) if malformed_count is None else malformed_count
    return {"source": "data/raw/reviews.csv", "format": "csv", "rows_read": rows + count, "rows_kept": rows,
            "malformed_count": count, "malformed_lines": [{"line": n, "problem": p} for n, p in malformed],
            "noise": {"rows_changed": rows_changed, "characters_replaced": characters}}


CLEAN_SOURCE = summary()
Prepare = Callable[..., Path]


@pytest.fixture
def prepared(tmp_path: Path) -> Prepare:
    """Write a prepared-data folder like the prepare stage does: CLEAN, with rows replaced, dropped or added."""

    def make(changes: dict[str, dict[int, Row | None]] | None = None, labels: list[str] = LABELS,
             source: dict | None = CLEAN_SOURCE, lines: bool = True) -> Path:
        folder = tmp_path / "prepared"
        folder.mkdir(exist_ok=True)
        for split in SPLITS:
            rows = list(CLEAN[split])
            for position, row in (changes or {}).get(split, {}).items():
                if position >= len(rows):
                    rows.append(row)
                else:
                    rows[position] = row
            rows = [row for row in rows if row is not None]
            frame = pd.DataFrame(rows, columns=["source_row", "text", "label"])[["text", "label", "source_row"]]
            if lines:
                frame["line"] = frame["source_row"].map(line_of)
            write_split(folder, split, frame)
        write_json(folder / LABELS_FILE, labels)
        (folder / SUMMARY_FILE).unlink(missing_ok=True)
        if source is not None:
            write_json(folder / SUMMARY_FILE, source)
        return folder

    return make


def _fail(folder: Path, report: Path, params: ValidateParams = PARAMS) -> str:
    """Run the stage on data that must fail; return its message."""
    with pytest.raises(ValidationFailed) as caught:
        run(params, TEXT, folder, report)
    assert isinstance(caught.value, StageError)  # so stage_main prints it without a traceback
    return str(caught.value)


def _checks(report: dict) -> list[tuple[str, dict]]:
    return ([("source", c) for c in report["source"]["checks"]]
            + [(name, c) for name in SPLITS for c in report["splits"][name]["checks"]]
            + [("cross_split", c) for c in report["cross_split"]])


def _severity(**levels: str) -> ValidateParams:
    return PARAMS.model_copy(update={"severity": PARAMS.severity.model_copy(update=levels)})


def test_clean_data_passes_and_the_report_is_stable(prepared: Prepare, tmp_path: Path) -> None:
    folder, report = prepared(), tmp_path / "reports" / "validation.json"
    html = report.with_suffix(".html")
    result = run(PARAMS, TEXT, folder, report, html)
    assert result.success and result.failures == [] and result.warnings == []
    assert result.counts == {"train": 4, "val": 2, "test": 2}
    written = read_json(report)
    assert written["success"] is True
    assert {name: part["rows"] for name, part in written["splits"].items()} == result.counts
    checks = _checks(written)
    assert all(c["result"] == "pass" and c["success"] is True and c["unexpected_count"] == 0 for _, c in checks)
    # Every check of validate.severity ran, with its severity beside it.
    assert {c["check"] for _, c in checks} == EVERY_CHECK - IMAGE_ONLY - AUDIO_ONLY  # text data
    assert all(c["severity"] == getattr(PARAMS.severity, c["check"]) for _, c in checks)
    assert {c["expectation"] for c in written["splits"]["train"]["checks"]} >= {
        "expect_table_columns_to_match_set", "expect_column_values_to_not_be_null",
        "expect_column_value_lengths_to_be_between", "expect_column_values_to_be_in_set"}
    # Same data, same bytes: no timestamps or run ids, so `dvc diff` stays quiet.
    first, first_html = report.read_bytes(), html.read_bytes()
    run(PARAMS, TEXT, folder, report, html)
    assert report.read_bytes() == first and html.read_bytes() == first_html
    # GX ran ephemeral: nothing of it appeared next to the data or the report.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "reports"]
    assert sorted(p.name for p in report.parent.iterdir()) == ["validation.html", "validation.json"]


@pytest.mark.parametrize(
    ("split", "position", "row", "expected"),
    [
        pytest.param("train", 1, (1, None, "pos"),
                     ["[null_text] train/expect_column_values_to_not_be_null on column text: 1 of 4 rows fail, "
                      "e.g. line 3: null"], id="null-text"),
        pytest.param("train", 1, (1, "", "pos"),
                     ["[blank_text] train/expect_column_values_to_not_match_regex on column text: 1 of 4 rows fail, "
                      "e.g. line 3: ''",
                      "[text_length] train/expect_column_value_lengths_to_be_between on column text: 1 of 4 rows "
                      "fail, e.g. line 3: '' (0 chars)"], id="empty-text"),
        pytest.param("val", 0, (4, "   ", "pos"),
                     ["[blank_text] val/expect_column_values_to_not_match_regex on column text: 1 of 2 rows fail, "
                      "e.g. line 6: '   '"], id="blank-text"),
        pytest.param("test", 1, (7, "x" * 250, "neg"),
                     ["[text_length] test/expect_column_value_lengths_to_be_between on column text: 1 of 2 rows "
                      "fail, e.g. line 9: '" + "x" * 57 + "...' (250 chars)"], id="long-text"),
        pytest.param("train", 2, (2, "a dull\x85 and lifeless sequel", "neg"),
                     ["[control_characters] train/expect_column_values_to_not_match_regex on column text: 1 of 4 "
                      "rows fail, e.g. line 4: 'a dull\\x85 and lifeless sequel'"], id="control-character"),
        pytest.param("train", 2, (2, "a dull\u200b and lifeless sequel", "neg"),
                     ["[control_characters] train/expect_column_values_to_not_match_regex on column text: 1 of 4 "
                      "rows fail, e.g. line 4:"], id="zero-width-space"),
        pytest.param("val", 0, (4, "charming cast and a cl\ufffdver script", "pos"),
                     ["[invalid_utf8] val/expect_column_values_to_not_match_regex on column text: 1 of 2 rows fail, "
                      "e.g. line 6: 'charming cast and a cl\ufffdver script'"], id="replacement-character"),
        pytest.param("val", 1, (5, "two hours I will never get back", None),
                     ["[null_label] val/expect_column_values_to_not_be_null on column label: 1 of 2 rows fail, "
                      "e.g. line 7: label null"], id="null-label"),
        pytest.param("test", 1, (7, "badly edited and far too long", "neutral"),
                     ["[unknown_label] test/expect_column_values_to_be_in_set on column label: 1 of 2 rows fail, "
                      "e.g. line 9: label 'neutral'"], id="unknown-label"),
    ],
)
def test_a_bad_row_fails_and_the_message_names_check_count_and_line(
    prepared: Prepare, tmp_path: Path, split: str, position: int, row: Row, expected: list[str]
) -> None:
    report = tmp_path / "validation.json"
    message = _fail(prepared({split: {position: row}}), report)
    for line in expected:
        assert line in message, message
    assert message.count("\n  ") == len(expected), message  # exactly the failed checks are listed
    assert "data.path" in message and "validate.severity.<check>" in message
    html = report.with_suffix(".html")
    assert message.rstrip().endswith(f"The full report: {report} (to read in a browser: {html}).")
    # The report is written even on failure, with the offending row (its line and source_row) in each failed check.
    written = read_json(report)
    assert written["success"] is False
    failed = [c for c in written["splits"][split]["checks"] if c["result"] == "fail"]
    assert len(failed) == len(expected) and all(c["unexpected_count"] == 1 for c in failed)
    assert all(c["unexpected_rows"][0]["source_row"] == row[0] for c in failed)
    assert all(c["unexpected_rows"][0]["line"] == line_of(row[0]) for c in failed)


def test_without_a_line_column_rows_are_named_by_source_row(prepared: Prepare, tmp_path: Path) -> None:
    message = _fail(prepared({"train": {1: (1, None, "pos")}}, lines=False), tmp_path / "validation.json")
    assert "1 of 4 rows fail, e.g. source_row 1: null" in message
    assert "line" not in read_json(tmp_path / "validation.json")["splits"]["train"]["checks"][2]["unexpected_rows"][0]


def test_texts_in_the_report_are_truncated(prepared: Prepare, tmp_path: Path) -> None:
    report = tmp_path / "validation.json"
    _fail(prepared({"train": {0: (0, "y" * 500, "pos")}}), report)
    (check,) = [c for c in read_json(report)["splits"]["train"]["checks"] if c["result"] == "fail"]
    example = check["unexpected_rows"][0]
    assert len(example["text"]) == TEXT_SHOWN and example["text"].endswith("...")
    assert example["length"] == 500


def test_examples_are_capped_and_the_count_is_complete(prepared: Prepare, tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"max_failed_rows_shown": 2})
    folder = prepared({"train": {i: (i, None, label) for i, (_, _, label) in enumerate(CLEAN["train"])}})
    with pytest.raises(ValidationFailed) as caught:
        run(params, TEXT, folder, tmp_path / "validation.json")
    line = next(f for f in caught.value.result.failures if "not_be_null on column text" in f)
    assert line.startswith("[null_text] train/") and "4 of 4 rows fail" in line
    assert "line 2: null" in line and "line 3: null" in line and "line 4" not in line


@pytest.mark.parametrize(
    "copy",
    [
        pytest.param("a gripping, well acted thriller", id="exact"),
        pytest.param("A GRIPPING; Well Acted Thriller!!", id="case-and-punctuation"),
        pytest.param("  a  gripping,\twell acted thriller. ", id="whitespace"),
    ],
)
def test_a_text_in_two_splits_fails(prepared: Prepare, tmp_path: Path, copy: str) -> None:
    params = _severity(control_characters="off")  # the tab is not what this test is about
    message = _fail(prepared({"test": {1: (7, copy, "neg")}}), tmp_path / "validation.json", params)
    assert "[leakage] cross_split/expect_each_text_in_one_split on column text: 2 of 8 rows fail" in message
    assert "train line 2: 'a gripping, well acted thriller'" in message and "test line 9" in message
    # A warning rides along: the same text with two labels (pos in train, neg in test).
    assert "(and 1 warning(s), in the report)" in message


def test_a_class_with_too_few_train_rows_fails(prepared: Prepare, tmp_path: Path) -> None:
    message = _fail(prepared({"train": {3: None}}), tmp_path / "validation.json")
    assert ("[min_per_class] cross_split/expect_min_train_rows_per_label on column label: 1 of 2 labels fail, "
            "e.g. label 'neg' has 1 train row(s) (line 4), needs 2") in message


def test_a_label_with_no_train_rows_fails(prepared: Prepare, tmp_path: Path) -> None:
    message = _fail(prepared(labels=["meh", "neg", "pos"]), tmp_path / "validation.json")
    assert "expect_min_train_rows_per_label on column label: 1 of 3 labels fail" in message
    assert "label 'meh' has 0 train row(s), needs 2" in message


def test_a_single_label_fails(prepared: Prepare, tmp_path: Path) -> None:
    only_pos = {split: {i: (r, t, "pos") for i, (r, t, _) in enumerate(rows)} for split, rows in CLEAN.items()}
    message = _fail(prepared(only_pos, labels=["pos"]), tmp_path / "validation.json")
    assert ("[single_class] cross_split/expect_at_least_two_labels on column label: labels.json lists 1 label(s) "
            "['pos']") in message
    assert message.count("\n  ") == 1, message


def test_an_empty_split_fails(prepared: Prepare, tmp_path: Path) -> None:
    message = _fail(prepared({"val": {0: None, 1: None}}), tmp_path / "validation.json")
    assert "[empty_split] val/expect_table_row_count_to_be_between: the split has 0 rows" in message


def test_several_failures_are_all_listed_in_report_order(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {1: (1, None, "pos")}, "test": {1: (7, "a dull and lifeless sequel", "meh")}},
                      source=summary(malformed=[(12, "3 fields where the header has 2")]))
    with pytest.raises(ValidationFailed) as caught:
        run(PARAMS, TEXT, folder, tmp_path / "validation.json")
    failures = caught.value.result.failures
    assert [f.split(":")[0] for f in failures] == [
        "[malformed_lines] source/expect_no_malformed_source_lines",
        "[null_text] train/expect_column_values_to_not_be_null on column text",
        "[unknown_label] test/expect_column_values_to_be_in_set on column label",
        "[leakage] cross_split/expect_each_text_in_one_split on column text",
    ]
    # The same text labelled neg in train and meh in test is also a conflict: a warning, listed apart.
    assert [w.split(":")[0] for w in caught.value.result.warnings] == [
        "[conflicting_labels] cross_split/expect_one_label_per_normalised_text on column label"]


# --- severities ---------------------------------------------------------------------------------------------------

def test_a_warning_passes_with_the_warning_reported_and_as_an_error_it_fails(
    prepared: Prepare, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = prepared({"train": {4: (8, "warm and funny from start to finish", "pos")}})
    report = tmp_path / "validation.json"
    result = run(PARAMS, TEXT, folder, report)  # exact_duplicates is a warning by default
    assert result.success and result.failures == []
    assert result.warnings == ["[exact_duplicates] train/expect_texts_to_be_unique on column text: 1 of 5 rows "
                               "fail, e.g. line 10 'warm and funny from start to finish' repeats line 3"]
    assert "validation warning (the pipeline goes on): [exact_duplicates]" in caplog.text
    written = read_json(report)
    assert written["success"] is True and written["results"]["warn"] == 1
    (check,) = [c for c in written["splits"]["train"]["checks"] if c["check"] == "exact_duplicates"]
    assert (check["severity"], check["result"], check["success"]) == ("warning", "warn", False)
    assert check["unexpected_rows"][0]["first"]["line"] == 3

    message = _fail(folder, report, _severity(exact_duplicates="error"))
    assert "failed 1 error check(s):\n  [exact_duplicates] train/" in message
    assert read_json(report)["splits"]["train"]["checks"][-2]["result"] == "fail"


def test_an_error_check_set_to_warning_lets_the_data_through(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {1: (1, None, "pos")}})
    result = run(_severity(null_text="warning"), TEXT, folder, tmp_path / "validation.json")
    assert result.success and len(result.warnings) == 1 and result.warnings[0].startswith("[null_text] train/")


def test_a_check_set_to_off_is_not_run_and_reported_as_off(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {1: (1, None, "pos")}})
    report = tmp_path / "validation.json"
    result = run(_severity(null_text="off", leakage="off"), TEXT, folder, report)
    assert result.success and result.warnings == []
    entries = [c for _, c in _checks(read_json(report)) if c["check"] in ("null_text", "leakage")]
    assert len(entries) == 4 and all(c["result"] == "off" and c["success"] is None for c in entries)


def test_severities_are_typed_and_unknown_checks_are_named() -> None:
    with pytest.raises(ConfigError, match=r"validate\.severity: .*unknown check\(s\) \['nul_text'\]"):
        parse_params({"validate": {"severity": {"nul_text": "error"}}})
    with pytest.raises(ConfigError, match=r"validate\.severity\.imbalance: Input should be 'error', 'warning' or "
                                          r"'off' \(got 'fatal'\)"):
        parse_params({"validate": {"severity": {"imbalance": "fatal"}}})
    # YAML reads an unquoted `off` as false; one key changed keeps the other defaults.
    params = parse_params(yaml.safe_load("validate: {severity: {imbalance: off}}")).validate_params
    assert params.severity.imbalance == "off" and params.severity.null_text == "error"
    defaults = ValidateParams().severity
    assert {k for k, v in defaults.model_dump().items() if v == "warning"} == {
        "imbalance", "exact_duplicates", "normalised_duplicates", "conflicting_labels"}
    documented = [set(yaml.safe_load((ROOT / name).read_text())["validate"]["severity"])
                  for name in ("params.yaml", "images/params.yaml", "audio/params.yaml")]  # each its own checks
    assert documented[0] | documented[1] | documented[2] == EVERY_CHECK
    assert documented[1] == IMAGE_ONLY and documented[2] == AUDIO_ONLY


# --- the row checks done in pandas ----------------------------------------------------------------------------------

def test_normalised_duplicates_are_a_warning_naming_both_lines(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {4: (8, "Warm and FUNNY -- from start to finish!", "pos")}})
    result = run(PARAMS, TEXT, folder, tmp_path / "validation.json")
    assert result.success
    assert result.warnings == [
        "[normalised_duplicates] train/expect_normalised_texts_to_be_unique on column text: 1 of 5 rows fail, "
        "e.g. line 10 'Warm and FUNNY -- from start to finish!' repeats line 3 'warm and funny from start to finish'"]


def test_conflicting_labels_are_a_warning_listing_each_labelled_line(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {4: (8, "A dull and lifeless sequel.", "pos")}})
    result = run(PARAMS, TEXT, folder, tmp_path / "validation.json")
    assert result.success
    (conflict,) = [w for w in result.warnings if w.startswith("[conflicting_labels]")]
    assert ("cross_split/expect_one_label_per_normalised_text on column label: 2 of 9 rows fail, e.g. "
            "train line 4: 'a dull and lifeless sequel' labelled 'neg'; "
            "train line 10: 'A dull and lifeless sequel.' labelled 'pos'") in conflict
    assert any(w.startswith("[normalised_duplicates]") for w in result.warnings)


def test_blank_texts_are_not_also_duplicates_or_conflicts(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {4: (8, "", "pos"), 5: (9, "", "neg")}})
    with pytest.raises(ValidationFailed) as caught:
        run(PARAMS, TEXT, folder, tmp_path / "validation.json")
    assert [f.split(" ")[0] for f in caught.value.result.failures] == ["[blank_text]", "[text_length]"]
    assert caught.value.result.warnings == []


def test_imbalance_is_a_warning_unless_configured(prepared: Prepare, tmp_path: Path) -> None:
    many_pos = {i: (100 + i, f"another fine and different review number {i}", "pos") for i in range(4, 22)}
    folder = prepared({"train": many_pos})  # 20 pos, 2 neg in train: 10x
    report = tmp_path / "validation.json"
    assert run(PARAMS, TEXT, folder, report).warnings == []  # 10 is not above the limit 10
    tighter = PARAMS.model_copy(update={"max_imbalance_ratio": 5.0})
    result = run(tighter, TEXT, folder, report)
    assert result.success
    assert result.warnings == [
        "[imbalance] cross_split/expect_train_class_ratio_to_be_at_most on column label: largest/smallest train class "
        "10 (validate.max_imbalance_ratio 5), e.g. label 'neg' has 2 train row(s), 10 times fewer than 'pos' (20)"]
    check = read_json(report)["cross_split"][-1]
    assert check["observed_value"]["largest"] == {"label": "pos", "train_rows": 20}
    message = _fail(folder, report, tighter.model_copy(update={"severity": _severity(imbalance="error").severity}))
    assert "failed 1 error check(s):\n  [imbalance]" in message


@pytest.mark.parametrize(
    "text",
    ["Plain ASCII, with punctuation!", "...", "", "a - b", "  Lead,  and trail!!  ", "MiXeD...CaSe -- x . y",
     # Not printable ASCII: dedup_key itself, through the fallback.
     "  spaced   out\ttext ", "Café CRÈME — “quoted” text", "ÀÉÎ ß İstanbul", "emoji 😀 and\u00a0nbsp",
     "zero\u200bwidth", "ＦＵＬＬ width", "x\x85y", "e\u0301 decomposed"],
)
def test_vectorised_dedup_keys_equal_dedup_key(text: str) -> None:
    keys = dedup_keys(pd.Series([text, None], dtype="str"))
    assert keys.iloc[0] == dedup_key(text)
    assert pd.isna(keys.iloc[1])


# --- source: malformed lines and noise from prepare's summary.json ---------------------------------------------------

def test_malformed_lines_fail_listing_the_first_lines(prepared: Prepare, tmp_path: Path) -> None:
    bad = [(4 + 3 * i, f"{3 + i} fields where the header has 2") for i in range(7)]
    message = _fail(prepared(source=summary(malformed=bad, malformed_count=9)), tmp_path / "validation.json")
    assert ("[malformed_lines] source/expect_no_malformed_source_lines: 9 of 17 records of data/raw/reviews.csv "
            "were malformed and skipped by prepare, e.g. line 4: 3 fields where the header has 2; "
            "line 7: 4 fields where the header has 2;") in message
    assert "line 16: 7 fields" in message and "line 19" not in message  # five shown
    assert "the source file 'data/raw/reviews.csv'" in message


def test_without_summary_json_malformed_lines_are_not_checked_and_the_data_passes(
    prepared: Prepare, tmp_path: Path
) -> None:
    report = tmp_path / "validation.json"
    result = run(PARAMS, TEXT, prepared(source=None), report)
    assert result.success
    written = read_json(report)
    assert written["source"]["summary"] is None
    (check,) = written["source"]["checks"]
    assert check["result"] == "skipped" and "no summary.json" in check["note"]


def test_noise_counts_are_in_the_report_html_and_markdown(prepared: Prepare, tmp_path: Path) -> None:
    report = tmp_path / "validation.json"
    run(PARAMS, TEXT, prepared(source=summary(rows_changed=3, characters=7)), report)
    written = read_json(report)
    assert written["source"]["summary"] == {
        "file": "data/raw/reviews.csv", "format": "csv", "rows_read": 8, "rows_kept": 8, "malformed_count": 0,
        "noise": {"rows_changed": 3, "characters_replaced": 7}}
    sentence = "7 character(s) that are only noise"
    assert sentence in report.with_suffix(".html").read_text() and "in 3 row(s)" in render_markdown(written)
    assert sentence in render_markdown(written)


def test_invalid_utf8_bytes_in_a_split_are_reported_at_their_line(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared()
    path = split_path(folder, "val")
    path.write_bytes(path.read_bytes().replace(b"clever", b"cl\xe9ver"))
    message = _fail(folder, tmp_path / "validation.json")
    assert ("[invalid_utf8] val/expect_column_values_to_not_match_regex on column text: 1 of 2 rows fail, "
            "e.g. line 6: 'charming cast and a cl\ufffdver script'") in message


# --- the HTML report and the markdown summary ---------------------------------------------------------------------

def test_the_html_report_lists_every_check_with_its_result_and_escapes_text(prepared: Prepare, tmp_path: Path) -> None:
    evil = '<script>alert("x")</script> & <b>bold</b>'
    folder = prepared({"train": {1: (1, evil, "pos"), 4: (8, evil, "pos")}, "test": {1: (7, None, "neg")}})
    report, html_path = tmp_path / "out" / "validation.json", tmp_path / "out" / "page.html"
    with pytest.raises(ValidationFailed):
        run(PARAMS, TEXT, folder, report, html_path)
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Data validation: FAILED" in page
    assert "<script" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "http" not in page  # self-contained: nothing fetched from anywhere
    rows = re.findall(r'<tr class="(\w+)"><td>([\w_]+)</td><td><code>(\w+)</code></td>', page)
    expected = [(c["result"], scope, c["check"]) for scope, c in _checks(read_json(report))]
    assert rows == expected and len(rows) == 1 + 3 * 11 + 5
    assert ("fail", "test", "null_text") in rows and ("warn", "train", "exact_duplicates") in rows
    assert "line 10 " in page and "repeats line 3" in page  # examples name lines


def test_the_markdown_summary_escapes_table_cells(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {1: (1, "a | b <i>c</i>", "pos"), 4: (8, "a | b <i>c</i>", "pos")}})
    report = tmp_path / "validation.json"
    run(PARAMS, TEXT, folder, report)
    markdown = render_markdown(read_json(report))
    assert markdown.startswith("# Data validation: passed")
    assert "| train | `exact_duplicates` | warning | warning | 1 of 5 rows |" in markdown
    assert "a \\| b &lt;i&gt;c&lt;/i&gt;" in markdown and "<i>" not in markdown


# --- the stage ----------------------------------------------------------------------------------------------------

def test_missing_prepared_data_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="run the prepare stage first"):
        run(PARAMS, TEXT, tmp_path / "nowhere", tmp_path / "validation.json")
    assert not (tmp_path / "validation.json").exists()


def test_main_prints_the_failures_without_a_traceback(
    prepared: Prepare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prepared({"val": {1: (5, "two hours I will never get back", None)}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"validate": PARAMS.model_dump(), "paths": {"prepared": "prepared", "validation": "reports/validation.json",
                                                    "validation_html": "reports/validation.html"}}))
    # stage_main sets these with setdefault; setting them here first lets monkeypatch undo it after the test.
    for key, value in {**OFFLINE, "PREFECT_HOME": str(tmp_path / ".prefect"),
                       "BENTOML_HOME": str(tmp_path / ".bentoml")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["python -m components.validate"])
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "validate stopped: the prepared data failed 1 error check(s)" in err
    assert "[null_label] val/expect_column_values_to_not_be_null on column label: 1 of 2 rows fail, e.g. line 7" in err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "reports" / "validation.json").read_text())["success"] is False
    assert (tmp_path / "reports" / "validation.html").is_file()


def test_importing_the_stage_does_not_import_great_expectations() -> None:
    code = "import sys, components.validate; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
