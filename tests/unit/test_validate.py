"""The validate stage on tiny splits: the real Great Expectations suite, no mocks, one GX import for the file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import ValidateParams
from components.env import OFFLINE
from components.io import LABELS_FILE, SPLITS, read_json, write_json, write_split
from components.stage import StageError
from components.validate import TEXT_SHOWN, ValidationFailed, main, run

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ValidateParams(min_text_length=1, max_text_length=200, min_per_class=2, max_failed_rows_shown=5)
LABELS = ["neg", "pos"]

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

Prepare = Callable[..., Path]


@pytest.fixture
def prepared(tmp_path: Path) -> Prepare:
    """Write a prepared-data folder like the prepare stage does: CLEAN, with rows replaced or dropped per split."""

    def make(changes: dict[str, dict[int, Row | None]] | None = None, labels: list[str] = LABELS) -> Path:
        folder = tmp_path / "prepared"
        folder.mkdir(exist_ok=True)
        for split in SPLITS:
            rows = list(CLEAN[split])
            for position, row in (changes or {}).get(split, {}).items():
                rows[position] = row
            rows = [row for row in rows if row is not None]
            frame = pd.DataFrame(rows, columns=["source_row", "text", "label"])[["text", "label", "source_row"]]
            write_split(folder, split, frame)
        write_json(folder / LABELS_FILE, labels)
        return folder

    return make


def _fail(folder: Path, report: Path) -> str:
    """Run the stage on data that must fail; return its message."""
    with pytest.raises(ValidationFailed) as caught:
        run(PARAMS, folder, report)
    assert isinstance(caught.value, StageError)  # so stage_main prints it without a traceback
    return str(caught.value)


def test_clean_data_passes_and_the_report_is_stable(prepared: Prepare, tmp_path: Path) -> None:
    folder, report = prepared(), tmp_path / "reports" / "validation.json"
    result = run(PARAMS, folder, report)
    assert result.success and result.failures == []
    assert result.counts == {"train": 4, "val": 2, "test": 2}
    written = read_json(report)
    assert written["success"] is True
    assert {name: part["rows"] for name, part in written["splits"].items()} == result.counts
    checks = [c for part in written["splits"].values() for c in part["checks"]] + written["cross_split"]
    assert all(c["success"] and c["unexpected_count"] == 0 for c in checks)
    assert {c["check"] for c in written["splits"]["train"]["checks"]} >= {
        "expect_table_columns_to_match_set", "expect_column_values_to_not_be_null",
        "expect_column_value_lengths_to_be_between", "expect_column_values_to_be_in_set"}
    # Same data, same bytes: no timestamps or run ids, so `dvc diff` stays quiet.
    first = report.read_bytes()
    run(PARAMS, folder, report)
    assert report.read_bytes() == first
    # GX ran ephemeral: nothing of it appeared next to the data or the report.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "reports"]


@pytest.mark.parametrize(
    ("split", "position", "row", "expected"),
    [
        pytest.param("train", 1, (1, None, "pos"),
                     "train/expect_column_values_to_not_be_null on column text: 1 of 4 rows fail, e.g. source_row 1: "
                     "null", id="null-text"),
        pytest.param("train", 1, (1, "", "pos"),
                     "train/expect_column_value_lengths_to_be_between on column text: 1 of 4 rows fail, "
                     "e.g. source_row 1: '' (0 chars)", id="empty-text"),
        pytest.param("val", 0, (4, "   ", "pos"),
                     "val/expect_column_values_to_not_match_regex on column text: 1 of 2 rows fail, "
                     "e.g. source_row 4: '   '", id="blank-text"),
        pytest.param("test", 1, (7, "x" * 250, "neg"),
                     "test/expect_column_value_lengths_to_be_between on column text: 1 of 2 rows fail, "
                     "e.g. source_row 7: '" + "x" * 57 + "...' (250 chars)", id="long-text"),
        pytest.param("val", 1, (5, "two hours I will never get back", None),
                     "val/expect_column_values_to_not_be_null on column label: 1 of 2 rows fail, "
                     "e.g. source_row 5: label null", id="null-label"),
        pytest.param("test", 1, (7, "badly edited and far too long", "neutral"),
                     "test/expect_column_values_to_be_in_set on column label: 1 of 2 rows fail, "
                     "e.g. source_row 7: label 'neutral'", id="unknown-label"),
    ],
)
def test_a_bad_row_fails_and_the_message_names_check_count_and_row(
    prepared: Prepare, tmp_path: Path, split: str, position: int, row: Row, expected: str
) -> None:
    report = tmp_path / "validation.json"
    message = _fail(prepared({split: {position: row}}), report)
    assert expected in message
    assert message.count("\n  ") == 1, message  # exactly the one failed check is listed
    assert message.rstrip().endswith(f"the full report is in {report}")
    assert "data.path" in message
    # The report is written even on failure, with the offending row in the failing check.
    written = read_json(report)
    assert written["success"] is False
    failed = [c for c in written["splits"][split]["checks"] if not c["success"]]
    assert len(failed) == 1 and failed[0]["unexpected_count"] == 1
    assert failed[0]["unexpected_rows"][0]["source_row"] == row[0]


def test_texts_in_the_report_are_truncated(prepared: Prepare, tmp_path: Path) -> None:
    report = tmp_path / "validation.json"
    _fail(prepared({"train": {0: (0, "y" * 500, "pos")}}), report)
    (check,) = [c for c in read_json(report)["splits"]["train"]["checks"] if not c["success"]]
    example = check["unexpected_rows"][0]
    assert len(example["text"]) == TEXT_SHOWN and example["text"].endswith("...")
    assert example["length"] == 500


def test_examples_are_capped_and_the_count_is_complete(prepared: Prepare, tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"max_failed_rows_shown": 2})
    folder = prepared({"train": {i: (i, None, label) for i, (_, _, label) in enumerate(CLEAN["train"])}})
    with pytest.raises(ValidationFailed) as caught:
        run(params, folder, tmp_path / "validation.json")
    line = next(f for f in caught.value.result.failures if "not_be_null on column text" in f)
    assert line.startswith("train/") and "4 of 4 rows fail" in line
    assert "source_row 0" in line and "source_row 1" in line and "source_row 2" not in line


@pytest.mark.parametrize(
    "copy",
    [
        pytest.param("a gripping, well acted thriller", id="exact"),
        pytest.param("A GRIPPING; Well Acted Thriller!!", id="case-and-punctuation"),
        pytest.param("  a  gripping,\twell acted thriller. ", id="whitespace"),
    ],
)
def test_a_text_in_two_splits_fails(prepared: Prepare, tmp_path: Path, copy: str) -> None:
    message = _fail(prepared({"test": {1: (7, copy, "neg")}}), tmp_path / "validation.json")
    assert "cross_split/expect_each_text_in_one_split on column text: 2 of 8 rows fail" in message
    assert "train source_row 0" in message and "test source_row 7" in message


def test_a_class_with_too_few_train_rows_fails(prepared: Prepare, tmp_path: Path) -> None:
    message = _fail(prepared({"train": {3: None}}), tmp_path / "validation.json")
    assert ("cross_split/expect_min_train_rows_per_label on column label: 1 of 2 labels fail, "
            "e.g. label 'neg' has 1 train row(s) (source_row 2), needs 2") in message


def test_a_label_with_no_train_rows_fails(prepared: Prepare, tmp_path: Path) -> None:
    message = _fail(prepared(labels=["meh", "neg", "pos"]), tmp_path / "validation.json")
    assert "expect_min_train_rows_per_label on column label: 1 of 3 labels fail" in message
    assert "label 'meh' has 0 train row(s), needs 2" in message


def test_a_single_label_fails(prepared: Prepare, tmp_path: Path) -> None:
    only_pos = {split: {i: (r, t, "pos") for i, (r, t, _) in enumerate(rows)} for split, rows in CLEAN.items()}
    message = _fail(prepared(only_pos, labels=["pos"]), tmp_path / "validation.json")
    assert "cross_split/expect_at_least_two_labels on column label: labels.json lists 1 label(s) ['pos']" in message
    assert "\n  " in message and message.count("\n  ") == 1, message


def test_an_empty_split_fails(prepared: Prepare, tmp_path: Path) -> None:
    message = _fail(prepared({"val": {0: None, 1: None}}), tmp_path / "validation.json")
    assert "val/expect_table_row_count_to_be_between: the split has 0 rows" in message


def test_several_failures_are_all_listed(prepared: Prepare, tmp_path: Path) -> None:
    folder = prepared({"train": {1: (1, None, "pos")}, "test": {1: (7, "a dull and lifeless sequel", "meh")}})
    with pytest.raises(ValidationFailed) as caught:
        run(PARAMS, folder, tmp_path / "validation.json")
    failures = caught.value.result.failures
    assert [f.split(":")[0] for f in failures] == [
        "train/expect_column_values_to_not_be_null on column text",
        "test/expect_column_values_to_be_in_set on column label",
        "cross_split/expect_each_text_in_one_split on column text",
    ]


def test_missing_prepared_data_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="run the prepare stage first"):
        run(PARAMS, tmp_path / "nowhere", tmp_path / "validation.json")
    assert not (tmp_path / "validation.json").exists()


def test_main_prints_the_failures_without_a_traceback(
    prepared: Prepare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prepared({"val": {1: (5, "two hours I will never get back", None)}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"validate": PARAMS.model_dump(), "paths": {"prepared": "prepared", "validation": "reports/validation.json"}}))
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
    assert "validate stopped: the prepared data failed 1 check(s)" in err
    assert "val/expect_column_values_to_not_be_null on column label: 1 of 2 rows fail" in err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "reports" / "validation.json").read_text())["success"] is False


def test_importing_the_stage_does_not_import_great_expectations() -> None:
    code = "import sys, components.validate; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
