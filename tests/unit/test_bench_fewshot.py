"""bench.fewshot --record: a benchmark of hours on 2 cores resumes from its record instead of training again, and a
record it did not write is refused with the line named."""

import dataclasses
import json
from pathlib import Path

import pytest

from bench import fewshot

TRUTH = ["fresh", "rotten", "fresh", "rotten"]


def outcome(size: int | None, draw: int, theirs: list[str], theirs_f1: float = 1.0) -> fewshot.Outcome:
    """Tuneline right on every row; SetFit's predictions and macro-F1 as given."""
    return fewshot.Outcome("binary", size, draw, TRUTH, TRUTH, theirs, 1.0, theirs_f1, 0.5, 1.0, 2.0, 3.0, "abc1234")


def write(record: Path, *outcomes: fewshot.Outcome) -> None:
    record.write_text("".join(json.dumps(dataclasses.asdict(o)) + "\n" for o in outcomes), encoding="utf-8")


def test_a_run_whose_outcomes_are_all_recorded_reuses_them_and_trains_nothing(tmp_path: Path) -> None:
    record = tmp_path / "fewshot.jsonl"
    wanted = outcome(8, 1, ["fresh", "fresh", "fresh", "rotten"], theirs_f1=0.7333)
    write(record, outcome(8, 0, TRUTH), wanted, outcome(None, 1, TRUTH))
    # draw 1 at 8 per class only: no corpus is prepared and no model trained (that would take minutes and need SetFit)
    got = fewshot.measure(["binary"], (8,), draws=1, quick=False, first_draw=1, record=record)
    assert got == [wanted]
    row = fewshot.table(got).splitlines()[-1]
    assert row.startswith("| binary | 8 | 1.0000 | 0.7333 | +0.2667 [") and "| 1/1 |" in row


def test_an_outcome_recorded_before_commits_were_kept_still_reads(tmp_path: Path) -> None:
    record = tmp_path / "fewshot.jsonl"
    row = dataclasses.asdict(outcome(16, 2, TRUTH))
    del row["commit"]
    record.write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert fewshot.recorded(record)[("binary", 16, 2)].commit == ""


def test_a_line_the_benchmark_did_not_write_is_refused_with_its_number(tmp_path: Path) -> None:
    record = tmp_path / "fewshot.jsonl"
    write(record, outcome(8, 0, TRUTH))
    with record.open("a", encoding="utf-8") as out:
        out.write('{"task": "binary", "size": 8}\n')
    with pytest.raises(SystemExit, match=r"fewshot.jsonl:2 is not an outcome .*remove the line"):
        fewshot.recorded(record)


def test_a_missing_record_is_an_empty_one(tmp_path: Path) -> None:
    assert fewshot.recorded(tmp_path / "none-yet.jsonl") == {}
    assert fewshot.recorded(None) == {}
