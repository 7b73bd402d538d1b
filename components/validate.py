"""Stage `validate`: check the prepared splits with Great Expectations and stop the pipeline on bad data."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from components.config import ValidateParams
from components.io import SPLITS, read_labels, read_split, write_json
from components.stage import StageError, stage_main
from components.text import dedup_key

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.core.batch_definition import BatchDefinition

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("text", "label", "source_row")
TEXT_SHOWN = 120  # characters of a text kept in the report
TEXT_IN_MESSAGE = 60  # shorter in the error message, where several examples share one line
CROSS_SPLIT = "cross_split"

# The names of the checks done in pandas, in the style of GX's expectation types so the report reads as one list.
LEAKAGE = "expect_each_text_in_one_split"
PER_CLASS = "expect_min_train_rows_per_label"
TWO_LABELS = "expect_at_least_two_labels"


@dataclass(frozen=True)
class Check:
    """One check on one split (or across splits), in the report's shape."""

    check: str
    column: str | None
    success: bool
    unexpected_count: int = 0
    element_count: int = 0
    unexpected_rows: tuple[dict[str, Any], ...] = ()
    unit: str = "rows"
    observed_value: Any = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The report entry; optional keys appear only when they say something."""
        entry: dict[str, Any] = {
            "check": self.check,
            "column": self.column,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "element_count": self.element_count,
            "unexpected_rows": list(self.unexpected_rows),
        }
        if self.observed_value is not None:
            entry["observed_value"] = self.observed_value
        if self.error is not None:
            entry["error"] = self.error
        return entry

    def describe(self, scope: str) -> str:
        """One line for the error message: where, what, how many, and a few offending rows."""
        where = f"{scope}/{self.check}" + (f" on column {self.column}" if self.column else "")
        if self.error is not None:
            return f"{where}: could not be checked: {self.error}"
        if self.check == TWO_LABELS:
            return (f"{where}: labels.json lists {len(self.observed_value)} label(s) {self.observed_value}; "
                    "a classifier needs at least 2")
        if self.check == "expect_table_columns_to_match_set":
            missing = [c for c in REQUIRED_COLUMNS if c not in (self.observed_value or [])]
            return f"{where}: missing the column(s) {missing}, found {self.observed_value}; rerun prepare"
        if self.check == "expect_table_row_count_to_be_between":
            return (f"{where}: the split has {self.observed_value} rows; add data or change data.val_fraction / "
                    "data.test_fraction so every split gets some")
        examples = ", ".join(_example(self.check, self.column, row) for row in self.unexpected_rows)
        line = f"{where}: {self.unexpected_count} of {self.element_count} {self.unit} fail"
        return f"{line}, e.g. {examples}" if examples else line


@dataclass(frozen=True)
class ValidateResult:
    """The verdict: success, one line per failed check, rows per split, and the report written to disk."""

    success: bool
    failures: list[str]
    counts: dict[str, int]
    report: dict[str, Any] = field(repr=False)


class ValidationFailed(StageError):
    """The prepared data failed at least one check; `result` holds the full verdict for callers such as flows."""

    def __init__(self, message: str, result: ValidateResult) -> None:
        super().__init__(message)
        self.result = result


def _clip(text: Any, limit: int = TEXT_SHOWN) -> str | None:
    if not isinstance(text, str):
        return None
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: NaN and pandas' missing markers become null, numpy numbers become Python ones."""
    if isinstance(value, (list, tuple, dict)):
        return value
    if value is None or pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _row_example(frame: pd.DataFrame, index: Any, with_length: bool = False) -> dict[str, Any]:
    row = frame.loc[index]
    text = _plain(row.get("text"))
    example = {"source_row": _plain(row.get("source_row")), "text": _clip(text), "label": _plain(row.get("label"))}
    if with_length and isinstance(text, str):
        # The text itself is clipped, so a too-long row needs its real length spelled out.
        example["length"] = len(text)
    return example


def _example(check: str, column: str | None, row: Mapping[str, Any]) -> str:
    """How one offending row reads in the message: its source_row and the value that failed."""
    if "train_rows" in row:
        rows = row.get("source_rows") or []
        found = f" (source_row {', '.join(map(str, rows))})" if rows else ""
        return f"label {row['label']!r} has {row['train_rows']} train row(s){found}, needs {row['min_rows']}"
    prefix = f"{row['split']} " if "split" in row else ""
    text = row.get("text")
    shown = repr(_clip(text, TEXT_IN_MESSAGE)) if text is not None else "null"
    if column == "label":
        label = row.get("label")
        return f"{prefix}source_row {row['source_row']}: label {'null' if label is None else repr(label)} ({shown})"
    if "length" in row:
        shown += f" ({row['length']} chars)"
    return f"{prefix}source_row {row['source_row']}: {shown}"


def build_suite(context: Any, params: ValidateParams, labels: list[str]) -> ExpectationSuite:
    """The expectations every split must meet, added to `context`'s suite store."""
    import great_expectations as gx

    E = gx.expectations
    suite = context.suites.add(gx.ExpectationSuite(name="prepared_split"))
    # Every later stage reads these columns; source_row is how a failure points back at the user's file.
    suite.add_expectation(E.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False))
    # A split that rounds to zero rows (tiny data, large fractions) leaves nothing to train, stop early on, or test.
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=1))
    # A missing text cannot be tokenised; the row's label would teach nothing.
    suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column="text"))
    # Empty or blank texts (normalised to "") and runaway texts (a whole file pasted into one cell).
    suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(
        column="text", min_value=params.min_text_length, max_value=params.max_text_length))
    # Whitespace-only texts pass the length check yet hold no words (prepare strips them; a hand-edited file may not).
    suite.add_expectation(E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s+$"))
    # An unlabelled row cannot be trained on or scored.
    suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column="label"))
    # A typo or stray class ("Fresh", "fersh") that the model's label list would silently not know.
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)))
    return suite


def _error_message(exception_info: Mapping[str, Any]) -> str | None:
    # GX gives one flat record, or one record per metric it tried; either way keep the distinct messages.
    records = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = sorted({str(r.get("exception_message")) for r in records if r.get("raised_exception")})
    return "; ".join(messages) or None


def _check_from_gx(result: Any, frame: pd.DataFrame) -> Check:
    config = result.expectation_config
    details = result.result or {}
    error = _error_message(result.exception_info or {})
    with_length = config.type == "expect_column_value_lengths_to_be_between"
    examples = tuple(_row_example(frame, i, with_length) for i in details.get("partial_unexpected_index_list") or [])
    observed = details.get("observed_value")
    return Check(
        check=config.type,
        column=config.kwargs.get("column"),
        success=bool(result.success),
        unexpected_count=int(details.get("unexpected_count") or 0),
        element_count=int(details.get("element_count") or len(frame)),
        unexpected_rows=examples,
        observed_value=None if observed is None else _plain(observed),
        error=error,
    )


def _validate_split(batch_definition: BatchDefinition, suite: ExpectationSuite, frame: pd.DataFrame,
                    shown: int) -> list[Check]:
    """Run the suite on one split; the checks come back in the suite's order, whatever order GX ran them in."""
    # GX reports offending rows by index label; a fresh RangeIndex makes each label name exactly one row.
    frame = frame.reset_index(drop=True)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": shown})
    by_id = {r.expectation_config.id: r for r in result.results}
    return [_check_from_gx(by_id[expectation.id], frame) for expectation in suite.expectations]


def _quiet_gx_logging() -> None:
    """Keep GX's INFO chatter (hundreds of "Skipping registering function ..." lines) out of the stage's log."""
    # Only when nobody chose a level for GX, so an entry point that wants GX's INFO lines still gets them.
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def check_splits(frames: Mapping[str, pd.DataFrame], labels: list[str],
                 params: ValidateParams) -> dict[str, list[Check]]:
    """Validate each split against one Great Expectations suite, in an ephemeral (in-memory) context.

    Args:
        frames: split name to a frame with columns text, label, source_row.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.

    Returns:
        For each split, its checks in the suite's order.
    """
    _quiet_gx_logging()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # That module pins its own logger to INFO at import, to announce a temporary docs-site path it deletes at once.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    # Ephemeral keeps every store (suites, results, data docs) in memory: nothing lands in the project or in ~.
    context = gx.get_context(mode="ephemeral")
    # GX draws a tqdm bar per validation; in a DVC or Prefect log that is noise (TQDM_DISABLE does not reach it).
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (context.data_sources.add_pandas("prepared")
                        .add_dataframe_asset("split")
                        .add_batch_definition_whole_dataframe("whole_split"))
    suite = build_suite(context, params, labels)
    return {name: _validate_split(batch_definition, suite, frame, params.max_failed_rows_shown)
            for name, frame in frames.items()}


def _leakage(frames: Mapping[str, pd.DataFrame], shown: int) -> Check:
    """Rows whose text (by dedup_key) appears in more than one split: a test score on seen texts means nothing."""
    parts = []
    for name, frame in frames.items():
        texts = frame["text"]
        # Null and blank texts have their own checks; an empty key says nothing about leakage.
        keys = texts.map(lambda t: dedup_key(t) if isinstance(t, str) else "")
        parts.append(pd.DataFrame({"split": name, "key": keys, "source_row": frame["source_row"], "text": texts,
                                   "order": SPLITS.index(name) if name in SPLITS else len(SPLITS)}))
    columns = ["split", "key", "source_row", "text", "order"]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    rows = rows[rows["key"] != ""]
    splits_per_key = rows.groupby("key")["split"].nunique()
    leaked = rows[rows["key"].map(splits_per_key) > 1].sort_values(["key", "order", "source_row"])
    examples = tuple({"split": r.split, "source_row": _plain(r.source_row), "text": _clip(_plain(r.text))}
                     for r in leaked.head(shown).itertuples())
    return Check(check=LEAKAGE, column="text", success=leaked.empty, unexpected_count=len(leaked),
                 element_count=len(rows), unexpected_rows=examples)


def _per_class(train: pd.DataFrame, labels: list[str], minimum: int, shown: int) -> Check:
    """Labels with fewer than `minimum` train rows: the model cannot learn a class it has (almost) never seen."""
    short = []
    for label in labels:
        members = train[train["label"] == label].sort_values("source_row")
        if len(members) < minimum:
            rows = [_plain(v) for v in members["source_row"].head(shown)]
            short.append({"label": label, "train_rows": len(members), "min_rows": minimum, "source_rows": rows})
    return Check(check=PER_CLASS, column="label", success=not short, unexpected_count=len(short),
                 element_count=len(labels), unexpected_rows=tuple(short[:shown]), unit="labels")


def check_across_splits(frames: Mapping[str, pd.DataFrame], labels: list[str],
                        params: ValidateParams) -> list[Check]:
    """The checks GX cannot express on one batch: leakage between splits and enough examples per class.

    Args:
        frames: split name to a frame with columns text, label, source_row (missing columns read as null).
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.

    Returns:
        The cross-split checks, in a fixed order.
    """
    frames = {name: frame.reindex(columns=list(REQUIRED_COLUMNS)) for name, frame in frames.items()}
    shown = params.max_failed_rows_shown
    train = frames.get("train", pd.DataFrame(columns=list(REQUIRED_COLUMNS)))
    return [
        _leakage(frames, shown),
        _per_class(train, labels, params.min_per_class, shown),
        # One class is not a classification problem: the model would be right by construction.
        Check(check=TWO_LABELS, column="label", success=len(labels) >= 2, unexpected_count=int(len(labels) < 2),
              element_count=len(labels), unit="labels", observed_value=list(labels)),
    ]


def validate(frames: Mapping[str, pd.DataFrame], labels: list[str], params: ValidateParams) -> ValidateResult:
    """Run every check on the splits and assemble the report; raises nothing, the caller decides what fails.

    Args:
        frames: split name to a frame with columns text, label, source_row.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.

    Returns:
        The verdict, one message line per failed check, rows per split, and the JSON report.
    """
    # Ordered by source_row, so the examples shown are the first offending rows of the user's file.
    frames = {name: (frame.sort_values("source_row", kind="stable") if "source_row" in frame else frame)
              .reset_index(drop=True) for name, frame in frames.items()}
    per_split = check_splits(frames, labels, params)
    across = check_across_splits(frames, labels, params)
    failures = [check.describe(name) for name, checks in per_split.items() for check in checks if not check.success]
    failures += [check.describe(CROSS_SPLIT) for check in across if not check.success]
    report = {
        "success": not failures,
        "splits": {name: {"rows": len(frames[name]), "checks": [c.to_json() for c in checks]}
                   for name, checks in per_split.items()},
        CROSS_SPLIT: [c.to_json() for c in across],
    }
    counts = {name: len(frame) for name, frame in frames.items()}
    return ValidateResult(success=not failures, failures=failures, counts=counts, report=report)


def _read(prepared_dir: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The three splits and labels.json, or a StageError that says to run prepare."""
    try:
        labels = read_labels(prepared_dir)
        frames = {name: read_split(prepared_dir, name) for name in SPLITS}
    except FileNotFoundError as exc:
        raise StageError(f"{exc.filename} not found; run the prepare stage first (dvc repro prepare)") from None
    except ValueError as exc:
        raise StageError(f"{prepared_dir} holds a file that is not valid JSON ({exc}); "
                         "rerun the prepare stage (dvc repro prepare)") from None
    return frames, labels


def run(params: ValidateParams, prepared_dir: str | Path, report_path: str | Path) -> ValidateResult:
    """Validate the prepared splits, write the report, and stop the pipeline if any check failed.

    Each split is checked with one Great Expectations suite (columns, non-null and in-range texts, known labels);
    leakage between splits and class counts are checked in pandas and reported in the same shape. The report is
    written whether or not the data passes, with stable keys and no timestamps.

    Args:
        params: the validate block of params.yaml.
        prepared_dir: the folder the prepare stage wrote (paths.prepared).
        report_path: where the JSON report goes (paths.validation).

    Returns:
        The verdict (always a success: a failure raises).

    Raises:
        ValidationFailed: a check failed; the message lists each failed check with counts and offending rows.
        StageError: the prepared data is missing or unreadable.
    """
    frames, labels = _read(Path(prepared_dir))
    result = validate(frames, labels, params)
    write_json(report_path, result.report)
    if not result.success:
        lines = "\n  ".join(result.failures)
        raise ValidationFailed(
            f"the prepared data failed {len(result.failures)} check(s):\n  {lines}\n"
            "Fix these rows in the source file named by data.path in params.yaml (source_row counts its data rows "
            "from 0), or the thresholds in the validate block, then rerun; "
            f"the full report is in {report_path}",
            result,
        )
    log.info("validated %s: %s rows per split, all checks passed; report in %s",
             prepared_dir, result.counts, report_path)
    return result


def main() -> None:
    stage_main("validate", lambda p: run(p.validate_params, p.paths.prepared, p.paths.validation))


if __name__ == "__main__":
    main()
