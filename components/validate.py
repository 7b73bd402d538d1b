"""Stage `validate`: check the prepared splits against what good training data is, and stop the pipeline on errors.

Per split, a Great Expectations suite checks the columns and every row (text present, not blank, of sane length,
free of control characters and decoding damage; label present and known). Across rows, vectorised pandas checks
what one GX batch cannot: duplicates within a split, one text with two labels, one text in two splits, class counts
and imbalance. prepare's summary.json adds the source lines it could not read. Each check has a severity in
params.yaml (validate.severity): `error` stops the pipeline, `warning` is reported and the pipeline goes on, `off`
skips it. Outputs: the JSON report (stable keys, no timestamps) and a self-contained HTML page for people.
"""

from __future__ import annotations

import functools
import html
import io
import logging
import os
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from components.config import ImageParams, Severity, ValidateParams
from components.io import SPLITS, read_labels, read_split, read_summary, split_path, write_json
from components.stage import StageError, stage_main
from components.text import dedup_key

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.core.batch_definition import BatchDefinition

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("text", "label", "source_row")
# Image splits (data.modality image): prepare's record of each file; validate adds text (the content hash, which the
# duplicate and leakage checks compare) and the short and long side the size checks read.
IMAGE_COLUMNS = ("image", "label", "source_row", "file", "sha256", "width", "height", "channels", "problem")
FILE = "file"
IMAGE_DETAILS = ("problem", "width", "height", "channels")
LINE = "line"  # 1-based line of the row in the source file, written by prepare; older splits lack it
TEXT_SHOWN = 120  # characters of a text kept in the report
TEXT_IN_MESSAGE = 60  # shorter in the error message, where several examples share one line
SOURCE, CROSS_SPLIT = "source", "cross_split"
REPLACEMENT_CHARACTER = "\ufffd"

# Checks done outside GX, named in the style of GX's expectation types so the report reads as one list.
NO_MALFORMED = "expect_no_malformed_source_lines"
NO_EXACT_DUPLICATES = "expect_texts_to_be_unique"
NO_NORMALISED_DUPLICATES = "expect_normalised_texts_to_be_unique"
ONE_LABEL_PER_TEXT = "expect_one_label_per_normalised_text"
LEAKAGE = "expect_each_text_in_one_split"
PER_CLASS = "expect_min_train_rows_per_label"
TWO_LABELS = "expect_at_least_two_labels"
BALANCE = "expect_train_class_ratio_to_be_at_most"

RESULTS = ("fail", "warn", "pass", "skipped", "off")


@dataclass(frozen=True)
class Check:
    """One check on the source, one split, or across splits, in the report's shape.

    `name` is the check's key in validate.severity; `success` is None when the check did not run (off, or its
    input is missing).
    """

    name: str
    expectation: str
    column: str | None
    severity: Severity
    success: bool | None
    unexpected_count: int = 0
    element_count: int = 0
    unexpected_rows: tuple[dict[str, Any], ...] = ()
    unit: str = "rows"
    observed_value: Any = None
    error: str | None = None
    note: str | None = None

    @property
    def result(self) -> str:
        """fail (an error-severity check failed), warn, pass, skipped (not checkable) or off."""
        if self.severity == "off":
            return "off"
        if self.success is None:
            return "skipped"
        if self.success:
            return "pass"
        return "fail" if self.severity == "error" else "warn"

    def to_json(self) -> dict[str, Any]:
        """The report entry; optional keys appear only when they say something."""
        entry: dict[str, Any] = {
            "check": self.name,
            "expectation": self.expectation,
            "column": self.column,
            "severity": self.severity,
            "result": self.result,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "element_count": self.element_count,
            "unit": self.unit,
            "unexpected_rows": list(self.unexpected_rows),
        }
        if self.observed_value is not None:
            entry["observed_value"] = self.observed_value
        if self.error is not None:
            entry["error"] = self.error
        if self.note is not None:
            entry["note"] = self.note
        return entry

    def describe(self, scope: str, text_limit: int = TEXT_IN_MESSAGE) -> str:
        """One line for the message: the check's name, where, what, how many, and a few offending rows."""
        return describe(self.to_json(), scope, text_limit)


def _off(name: str, expectation: str, column: str | None) -> Check:
    return Check(name=name, expectation=expectation, column=column, severity="off", success=None)


@dataclass(frozen=True)
class ValidateResult:
    """The verdict: success, one line per failed error check and per warning, rows per split, and the report."""

    success: bool
    failures: list[str]
    warnings: list[str]
    counts: dict[str, int]
    report: dict[str, Any] = field(repr=False)


class ValidationFailed(StageError):
    """The prepared data failed at least one error check; `result` holds the full verdict for callers such as flows."""

    def __init__(self, message: str, result: ValidateResult) -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------------------------------------------
# How rows read in messages and reports


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


def _position(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's line in the source file when the split has one, and its source_row (always, for the splits)."""
    where = {"source_row": _plain(row.get("source_row"))}
    line = _plain(row.get(LINE))
    if line is not None:
        where[LINE] = int(line)
    if _plain(row.get(FILE)) is not None:  # image rows: the file it came from
        where[FILE] = _plain(row.get(FILE))
    return where


def _row_example(frame: pd.DataFrame, index: Any, with_length: bool = False) -> dict[str, Any]:
    row = frame.loc[index]
    text = _plain(row.get("text"))
    example = {**_position(row), "text": _clip(text), "label": _plain(row.get("label"))}
    for key in IMAGE_DETAILS:  # image rows: why it is unusable, or its size and channels
        if _plain(row.get(key)) is not None:
            example[key] = _plain(row.get(key))
    if with_length and isinstance(text, str):
        # The text itself is clipped, so a too-long row needs its real length spelled out.
        example["length"] = len(text)
    return example


def _where(row: Mapping[str, Any]) -> str:
    """'line 12' (the source file's line) when known, else 'source_row 11' (the row's index among the records); an
    image row's file."""
    if row.get(FILE) is not None:
        return str(row[FILE])
    if row.get(LINE) is not None:
        return f"line {row[LINE]}"
    return f"source_row {row.get('source_row')}"


def _shown(text: Any, limit: int) -> str:
    return repr(_clip(text, limit)) if isinstance(text, str) else "null"


def _example(check: Mapping[str, Any], row: Mapping[str, Any], limit: int) -> str:
    """How one offending row reads: where it is in the source and what about it failed."""
    name = check["check"]
    if name == "malformed_lines":
        return f"line {row.get('line')}: {row.get('problem')}"
    if name == "min_per_class":
        rows = row.get("lines") or row.get("source_rows") or []
        kind = "line" if row.get("lines") else "source_row"
        found = f" ({kind} {', '.join(map(str, rows))})" if rows else ""
        return f"label {row['label']!r} has {row['train_rows']} train row(s){found}, needs {row['min_rows']}"
    if name == "imbalance":
        return (f"label {row['label']!r} has {row['train_rows']} train row(s), {row['ratio']:g} times fewer than "
                f"{row['largest_label']!r} ({row['largest_rows']})")
    prefix = f"{row['split']} " if "split" in row else ""
    if row.get("problem") is not None:
        return f"{prefix}{_where(row)}: {row['problem']}"
    if name in ("image_too_small", "image_too_large", "image_channels"):
        width, height, channels = (int(row[key]) for key in ("width", "height", "channels"))
        return f"{prefix}{_where(row)}: {width}x{height} pixels, {channels} channel(s)"
    shown = _shown(row.get("text"), limit)
    if "first" in row:
        first = row["first"]
        again = "" if first.get("text") == row.get("text") else f" {_shown(first.get('text'), limit)}"
        return f"{prefix}{_where(row)} {shown} repeats {_where(first)}{again}"
    if name == "conflicting_labels":
        return f"{prefix}{_where(row)}: {shown} labelled {row.get('label')!r}"
    if check.get("column") == "label":
        label = row.get("label")
        return f"{prefix}{_where(row)}: label {'null' if label is None else repr(label)} ({shown})"
    if "length" in row:
        shown += f" ({row['length']} chars)"
    return f"{prefix}{_where(row)}: {shown}"


def describe(check: Mapping[str, Any], scope: str, text_limit: int = TEXT_IN_MESSAGE) -> str:
    """One line for a report entry: [name] scope/expectation on column ...: how many fail, e.g. the first rows."""
    where = f"[{check['check']}] {scope}/{check['expectation']}" + (
        f" on column {check['column']}" if check.get("column") else "")
    if check.get("error") is not None:
        return f"{where}: could not be checked: {check['error']}"
    if check["result"] == "off":
        return f"{where}: off (validate.severity.{check['check']})"
    if check["result"] == "skipped":
        return f"{where}: not checked: {check.get('note')}"
    observed = check.get("observed_value")
    name = check["check"]
    if name == "single_class":
        return f"{where}: labels.json lists {len(observed)} label(s) {observed}; a classifier needs at least 2"
    if name == "missing_columns":
        missing = [c for c in REQUIRED_COLUMNS if c not in (observed or [])]
        if missing:
            return f"{where}: missing the column(s) {missing}, found {observed}; rerun prepare"
    if name == "empty_split":
        return (f"{where}: the split has {observed} rows; add data or change data.val_fraction / "
                "data.test_fraction so every split gets some")
    if name == "imbalance" and observed:
        head = (f"largest/smallest train class {observed['ratio']:g} "
                f"(validate.max_imbalance_ratio {observed['max_ratio']:g})")
    elif name == "malformed_lines":
        head = (f"{check['unexpected_count']} of {check['element_count']} {check['unit']} of "
                f"{observed or 'the source'} were malformed and skipped by prepare")
    else:
        head = f"{check['unexpected_count']} of {check['element_count']} {check['unit']} fail"
    examples = "; ".join(_example(check, row, text_limit) for row in check["unexpected_rows"])
    return f"{where}: {head}, e.g. {examples}" if examples else f"{where}: {head}"


# ---------------------------------------------------------------------------------------------------------------
# The Great Expectations suite: one batch per split


@functools.cache
def _character_class(kind: str) -> str:
    """A regex character class of every control/format character, or every whitespace character, as Python sees it.

    Written so that both Python's `re` (object columns) and RE2 (pandas' pyarrow strings) read it the same way:
    ASCII as \\xNN escapes, everything else as literal characters, as ranges.
    """
    if kind == "control":
        wanted = lambda c: unicodedata.category(c) in ("Cc", "Cf")  # noqa: E731 - what normalise() replaces
    else:
        wanted = str.isspace
    ranges: list[list[int]] = []
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF or not wanted(chr(code)):
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])

    def literal(code: int) -> str:
        return f"\\x{code:02x}" if code < 0x80 else chr(code)

    return "[" + "".join(literal(a) if a == b else f"{literal(a)}-{literal(b)}" for a, b in ranges) + "]"


def build_suite(context: Any, params: ValidateParams, labels: list[str]) -> ExpectationSuite:
    """The expectations every split must meet (those not switched off), each tagged with its check name in meta."""
    import great_expectations as gx

    E = gx.expectations
    severity = params.severity
    suite = context.suites.add(gx.ExpectationSuite(name="prepared_split"))

    def add(name: str, expectation: type, **kwargs: Any) -> None:
        if getattr(severity, name) != "off":
            # meta carries the check's name through GX, so each result maps back to its severity.
            suite.add_expectation(expectation(**kwargs, meta={"check": name}))

    # Every later stage reads these columns; source_row (and line) is how a failure points back at the user's file.
    add("missing_columns", E.ExpectTableColumnsToMatchSet, column_set=list(REQUIRED_COLUMNS), exact_match=False)
    # A split that rounds to zero rows (tiny data, large fractions) leaves nothing to train, stop early on, or test.
    add("empty_split", E.ExpectTableRowCountToBeBetween, min_value=1)
    # A missing text cannot be tokenised; the row's label would teach nothing.
    add("null_text", E.ExpectColumnValuesToNotBeNull, column="text")
    # An empty or whitespace-only text holds no words (a text of only control characters ends up so after prepare).
    add("blank_text", E.ExpectColumnValuesToNotMatchRegex, column="text", regex=f"^{_character_class('space')}*$")
    # Too short to mean anything, or a runaway text (a whole file pasted into one cell).
    add("text_length", E.ExpectColumnValueLengthsToBeBetween, column="text", min_value=params.min_text_length,
        max_value=params.max_text_length)
    # prepare turns control and format characters (\x85, zero-width spaces, BOMs, tabs) into spaces: guard that.
    add("control_characters", E.ExpectColumnValuesToNotMatchRegex, column="text", regex=_character_class("control"))
    # U+FFFD is what a decoder leaves where the bytes were not valid UTF-8: the text is damaged, not just odd.
    add("invalid_utf8", E.ExpectColumnValuesToNotMatchRegex, column="text", regex=REPLACEMENT_CHARACTER)
    # An unlabelled row cannot be trained on or scored.
    add("null_label", E.ExpectColumnValuesToNotBeNull, column="label")
    # A typo or stray class ("Fresh", "fersh") that the model's label list would silently not know.
    add("unknown_label", E.ExpectColumnValuesToBeInSet, column="label", value_set=list(labels))
    return suite


def build_image_suite(context: Any, params: ValidateParams, limits: ImageParams,
                      labels: list[str]) -> ExpectationSuite:
    """The expectations every image split must meet (those not switched off), tagged with their check names."""
    import great_expectations as gx

    E = gx.expectations  # noqa: N806 - GX's own short name
    suite = context.suites.add(gx.ExpectationSuite(name="prepared_image_split"))

    def add(name: str, expectation: type, **kwargs: Any) -> None:
        if getattr(params.severity, name) != "off":
            suite.add_expectation(expectation(**kwargs, meta={"check": name}))

    add("missing_columns", E.ExpectTableColumnsToMatchSet, column_set=list(IMAGE_COLUMNS), exact_match=False)
    add("empty_split", E.ExpectTableRowCountToBeBetween, min_value=1)
    # prepare decoded every byte of every file; its problem says why one could not be used (not an image, a format
    # outside the list, truncated or corrupt, too many pixels or bytes)
    add("unreadable_image", E.ExpectColumnValuesToBeNull, column="problem")
    # a thumbnail or a sliver teaches nothing; a poster-sized scan costs memory for nothing (image.min/max_side)
    add("image_too_small", E.ExpectColumnValuesToBeBetween, column="short_side", min_value=limits.min_side)
    add("image_too_large", E.ExpectColumnValuesToBeBetween, column="long_side", max_value=limits.max_side)
    # grey (1), RGB (3) or RGBA (4) by default: a two-channel or CMYK file is a surprise worth stopping on
    add("image_channels", E.ExpectColumnValuesToBeInSet, column="channels", value_set=list(limits.channels))
    add("null_label", E.ExpectColumnValuesToNotBeNull, column="label")
    add("unknown_label", E.ExpectColumnValuesToBeInSet, column="label", value_set=list(labels))
    return suite


IMAGE_SUITE_CHECKS = ("missing_columns", "empty_split", "unreadable_image", "image_too_small", "image_too_large",
                      "image_channels", "null_label", "unknown_label")
SUITE_CHECKS = ("missing_columns", "empty_split", "null_text", "blank_text", "text_length", "control_characters",
                "invalid_utf8", "null_label", "unknown_label")
SUITE_EXPECTATIONS = {
    "missing_columns": ("expect_table_columns_to_match_set", None),
    "empty_split": ("expect_table_row_count_to_be_between", None),
    "null_text": ("expect_column_values_to_not_be_null", "text"),
    "blank_text": ("expect_column_values_to_not_match_regex", "text"),
    "text_length": ("expect_column_value_lengths_to_be_between", "text"),
    "control_characters": ("expect_column_values_to_not_match_regex", "text"),
    "invalid_utf8": ("expect_column_values_to_not_match_regex", "text"),
    "null_label": ("expect_column_values_to_not_be_null", "label"),
    "unknown_label": ("expect_column_values_to_be_in_set", "label"),
    "unreadable_image": ("expect_column_values_to_be_null", "problem"),
    "image_too_small": ("expect_column_values_to_be_between", "short_side"),
    "image_too_large": ("expect_column_values_to_be_between", "long_side"),
    "image_channels": ("expect_column_values_to_be_in_set", "channels"),
}


def _error_message(exception_info: Mapping[str, Any]) -> str | None:
    # GX gives one flat record, or one record per metric it tried; either way keep the distinct messages.
    records = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = sorted({str(r.get("exception_message")) for r in records if r.get("raised_exception")})
    return "; ".join(messages) or None


def _check_from_gx(result: Any, frame: pd.DataFrame, severity: Severity) -> Check:
    config = result.expectation_config
    details = result.result or {}
    error = _error_message(result.exception_info or {})
    with_length = config.type == "expect_column_value_lengths_to_be_between"
    examples = tuple(_row_example(frame, i, with_length) for i in details.get("partial_unexpected_index_list") or [])
    observed = details.get("observed_value")
    return Check(
        name=config.meta["check"],
        expectation=config.type,
        column=config.kwargs.get("column"),
        severity=severity,
        success=bool(result.success),
        unexpected_count=int(details.get("unexpected_count") or 0),
        element_count=int(details.get("element_count") or len(frame)),
        unexpected_rows=examples,
        observed_value=None if observed is None else _plain(observed),
        error=error,
    )


def _validate_split(batch_definition: BatchDefinition, suite: ExpectationSuite, frame: pd.DataFrame,
                    params: ValidateParams, names: tuple[str, ...] = SUITE_CHECKS) -> list[Check]:
    """Run the suite on one split; the checks come back in `names` order, off ones included."""
    # SUMMARY with a capped partial list: counts are complete, and only the first few offending rows are collected.
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": params.max_failed_rows_shown})
    by_name = {r.expectation_config.meta["check"]: r for r in result.results}
    checks = []
    for name in names:
        severity = getattr(params.severity, name)
        if name in by_name:
            checks.append(_check_from_gx(by_name[name], frame, severity))
        else:
            checks.append(_off(name, *SUITE_EXPECTATIONS[name]))
    return checks


def _quiet_gx_logging() -> None:
    """Keep GX's INFO chatter (hundreds of "Skipping registering function ..." lines) out of the stage's log."""
    # Only when nobody chose a level for GX, so an entry point that wants GX's INFO lines still gets them.
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def check_splits(frames: Mapping[str, pd.DataFrame], labels: list[str], params: ValidateParams,
                 limits: ImageParams | None = None) -> dict[str, list[Check]]:
    """Validate each split against one Great Expectations suite, in an ephemeral (in-memory) context.

    Args:
        frames: split name to a frame with columns text, label, source_row (and line), indexed 0..n-1; for images
            also IMAGE_COLUMNS, short_side and long_side.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.
        limits: the image block, for image splits (the image suite instead of the text one); None for text.

    Returns:
        For each split, its checks in SUITE_CHECKS (IMAGE_SUITE_CHECKS) order (switched-off ones reported as off).
    """
    names = SUITE_CHECKS if limits is None else IMAGE_SUITE_CHECKS
    if all(getattr(params.severity, name) == "off" for name in names):
        return {name: [_off(check, *SUITE_EXPECTATIONS[check]) for check in names] for name in frames}
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
    suite = build_suite(context, params, labels) if limits is None else build_image_suite(context, params, limits,
                                                                                           labels)
    return {name: _validate_split(batch_definition, suite, frame, params, names) for name, frame in frames.items()}


# ---------------------------------------------------------------------------------------------------------------
# Checks across rows and splits, vectorised in pandas

_ASCII_PRINTABLE = r"[\x20-\x7e]*"
_ASCII_PUNCTUATION = r"[\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]+"  # exactly string.punctuation


def dedup_keys(texts: pd.Series) -> pd.Series:
    """components.text.dedup_key of every text (null stays null), without a Python call per row where possible.

    For printable-ASCII texts (most English data) the key is computed with vectorised string operations that give
    exactly dedup_key's result: lower-case, drop string.punctuation, collapse spaces, strip. Any other text goes
    through dedup_key itself, so Unicode case, NFC and whitespace rules stay those of components.text.
    """
    texts = texts.astype("str")
    simple = texts.str.fullmatch(_ASCII_PRINTABLE).fillna(False).astype(bool)
    fast = texts[simple].str.lower().str.replace(_ASCII_PUNCTUATION, "", regex=True)
    spaced = fast.str.contains("  ", regex=False).fillna(False).astype(bool)
    fast[spaced] = fast[spaced].str.replace(" {2,}", " ", regex=True)
    keys = pd.Series(pd.NA, index=texts.index, dtype="str")
    keys[simple] = fast.str.strip(" ")
    other = ~simple & texts.notna()
    if other.any():
        keys[other] = texts[other].map(dedup_key)
    return keys


def _all_rows(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every split's rows in one frame, with the split's name and order, and integer ids for text, key and label."""
    columns = [*REQUIRED_COLUMNS, LINE, FILE]
    parts = [frame.reindex(columns=columns).assign(split=name, order=order)
             for order, (name, frame) in enumerate(frames.items())]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*columns, "split", "order"])
    rows["text"] = rows["text"].astype("str")
    keys = dedup_keys(rows["text"])
    # Null and blank texts have their own checks; an empty key (a text of only punctuation) says nothing here.
    blank = rows["text"].str.fullmatch(f"{_character_class('space')}*").fillna(False).astype(bool)
    rows["text_id"] = pd.factorize(rows["text"].mask(blank))[0]
    rows["key_id"] = pd.factorize(keys.where(keys != ""))[0]
    rows["label_id"] = pd.factorize(rows["label"])[0]
    return rows


def _examples(rows: pd.DataFrame, shown: int, with_split: bool) -> tuple[dict[str, Any], ...]:
    out = []
    for row in rows.head(shown).to_dict("records"):
        example = {**({"split": row["split"]} if with_split else {}), **_position(row),
                   "text": _clip(_plain(row["text"])), "label": _plain(row["label"])}
        out.append(example)
    return tuple(out)


def _duplicates(rows: pd.DataFrame, split: str, params: ValidateParams) -> list[Check]:
    """Exact and normalised repeats of an earlier text within one split (rows in source order)."""
    mine = rows[rows["split"] == split]
    has_text = mine["text_id"] >= 0
    exact = has_text & mine.duplicated(["text_id"])
    normalised = (mine["key_id"] >= 0) & mine.duplicated(["key_id"]) & ~exact
    checks = []
    for name, expectation, mask, id_column in (
            ("exact_duplicates", NO_EXACT_DUPLICATES, exact, "text_id"),
            ("normalised_duplicates", NO_NORMALISED_DUPLICATES, normalised, "key_id")):
        severity = getattr(params.severity, name)
        if severity == "off":
            checks.append(_off(name, expectation, "text"))
            continue
        offending = mine[mask]
        examples = []
        for example, row in zip(_examples(offending, params.max_failed_rows_shown, False),
                                offending.head(params.max_failed_rows_shown).itertuples(), strict=True):
            first = mine[mine[id_column] == getattr(row, id_column)].iloc[0]
            examples.append({**example, "first": {**_position(first), "text": _clip(_plain(first["text"]))}})
        checks.append(Check(name=name, expectation=expectation, column="text", severity=severity,
                            success=not mask.any(), unexpected_count=int(mask.sum()),
                            element_count=int(has_text.sum()), unexpected_rows=tuple(examples)))
    return checks


def _shared_keys(rows: pd.DataFrame, other: str) -> tuple[pd.Series, pd.DataFrame]:
    """Per row, whether its key occurs with more than one value of `other` (label_id or order); the keyed rows."""
    keyed = rows[(rows["key_id"] >= 0) & (rows[other] >= 0)]
    pairs = keyed[["key_id", other]].drop_duplicates()
    shared = pairs.loc[pairs["key_id"].duplicated(), "key_id"].unique()
    return (rows["key_id"] >= 0) & rows["key_id"].isin(shared), keyed


def _leakage(rows: pd.DataFrame, params: ValidateParams) -> Check:
    """Rows whose text (by dedup_key) appears in more than one split: a test score on seen texts means nothing."""
    severity = params.severity.leakage
    if severity == "off":
        return _off("leakage", LEAKAGE, "text")
    mask, keyed = _shared_keys(rows, "order")
    leaked = rows[mask].sort_values(["key_id", "order", "source_row"], kind="stable")
    return Check(name="leakage", expectation=LEAKAGE, column="text", severity=severity, success=leaked.empty,
                 unexpected_count=len(leaked), element_count=len(keyed),
                 unexpected_rows=_examples(leaked, params.max_failed_rows_shown, True))


def _conflicting_labels(rows: pd.DataFrame, params: ValidateParams) -> Check:
    """Rows whose text (by dedup_key) also appears with another label: the model is taught both answers."""
    severity = params.severity.conflicting_labels
    if severity == "off":
        return _off("conflicting_labels", ONE_LABEL_PER_TEXT, "label")
    mask, keyed = _shared_keys(rows, "label_id")
    conflicting = rows[mask].sort_values(["key_id", "order", "source_row"], kind="stable")
    return Check(name="conflicting_labels", expectation=ONE_LABEL_PER_TEXT, column="label", severity=severity,
                 success=conflicting.empty, unexpected_count=len(conflicting), element_count=len(keyed),
                 unexpected_rows=_examples(conflicting, params.max_failed_rows_shown, True),
                 observed_value={"texts": int(conflicting["key_id"].nunique())} if len(conflicting) else None)


def _per_class(train: pd.DataFrame, labels: list[str], params: ValidateParams) -> Check:
    """Labels with fewer than `min_per_class` train rows: the model cannot learn a class it has (almost) never seen."""
    severity = params.severity.min_per_class
    if severity == "off":
        return _off("min_per_class", PER_CLASS, "label")
    shown, minimum = params.max_failed_rows_shown, params.min_per_class
    counts = train["label"].value_counts()
    short = []
    for label in labels:  # a loop over the labels, not the rows
        if int(counts.get(label, 0)) < minimum:
            members = train[train["label"] == label].head(shown)
            entry = {"label": label, "train_rows": int(counts.get(label, 0)), "min_rows": minimum,
                     "source_rows": [_plain(v) for v in members["source_row"]]}
            if members[LINE].notna().any():
                entry["lines"] = [_plain(v) for v in members[LINE]]
            short.append(entry)
    return Check(name="min_per_class", expectation=PER_CLASS, column="label", severity=severity, success=not short,
                 unexpected_count=len(short), element_count=len(labels), unexpected_rows=tuple(short[:shown]),
                 unit="labels")


def _imbalance(train: pd.DataFrame, labels: list[str], params: ValidateParams) -> Check:
    """Classes further apart than max_imbalance_ratio: a model may learn to ignore the small ones."""
    severity = params.severity.imbalance
    if severity == "off":
        return _off("imbalance", BALANCE, "label")
    counts = train["label"].value_counts()
    present = {label: int(counts[label]) for label in labels if counts.get(label, 0) > 0}
    if len(present) < 2:
        # Nothing to compare; an empty class is min_per_class's finding, a single one single_class's.
        return Check(name="imbalance", expectation=BALANCE, column="label", severity=severity, success=None,
                     element_count=len(labels), unit="labels", note="fewer than two labels have train rows")
    largest = max(present, key=lambda label: (present[label], label))
    smallest = min(present, key=lambda label: (present[label], label))
    limit = params.max_imbalance_ratio
    small = sorted((label for label, n in present.items() if present[largest] / n > limit),
                   key=lambda label: (present[label], label))
    offending = tuple({"label": label, "train_rows": present[label], "largest_label": largest,
                       "largest_rows": present[largest], "ratio": round(present[largest] / present[label], 2)}
                      for label in small[:params.max_failed_rows_shown])
    observed = {"ratio": round(present[largest] / present[smallest], 2), "max_ratio": limit,
                "largest": {"label": largest, "train_rows": present[largest]},
                "smallest": {"label": smallest, "train_rows": present[smallest]}}
    return Check(name="imbalance", expectation=BALANCE, column="label", severity=severity, success=not small,
                 unexpected_count=len(small), element_count=len(labels), unexpected_rows=offending, unit="labels",
                 observed_value=observed)


def check_across_splits(frames: Mapping[str, pd.DataFrame], labels: list[str],
                        params: ValidateParams) -> tuple[dict[str, list[Check]], list[Check]]:
    """The checks GX cannot express on one batch: duplicates, conflicting labels, leakage, class counts.

    Args:
        frames: split name to a frame with columns text, label, source_row (and line), in source order.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.

    Returns:
        Per split its duplicate checks, and the cross-split checks, each in a fixed order.
    """
    rows = _all_rows(frames)
    per_split = {name: _duplicates(rows, name, params) for name in frames}
    train = rows[rows["split"] == "train"]
    severity = params.severity.single_class
    # One class is not a classification problem: the model would be right by construction.
    single = _off("single_class", TWO_LABELS, "label") if severity == "off" else Check(
        name="single_class", expectation=TWO_LABELS, column="label", severity=severity, success=len(labels) >= 2,
        unexpected_count=int(len(labels) < 2), element_count=len(labels), unit="labels",
        observed_value=list(labels))
    across = [_leakage(rows, params), _conflicting_labels(rows, params), _per_class(train, labels, params), single,
              _imbalance(train, labels, params)]
    return per_split, across


def check_source(summary: Mapping[str, Any] | None, params: ValidateParams) -> Check:
    """Source records prepare could not read (summary.json): a row silently dropped is a row the user lost."""
    severity = params.severity.malformed_lines
    if severity == "off":
        return _off("malformed_lines", NO_MALFORMED, None)
    if summary is None:
        return Check(name="malformed_lines", expectation=NO_MALFORMED, column=None, severity=severity, success=None,
                     unit="records", note="the prepared data has no summary.json (written by prepare); rerun prepare")
    count = int(summary.get("malformed_count") or 0)
    listed = summary.get("malformed_lines") or []
    examples = tuple({"line": item.get("line"), "problem": item.get("problem")}
                     for item in listed[:params.max_failed_rows_shown])
    return Check(name="malformed_lines", expectation=NO_MALFORMED, column=None, severity=severity,
                 success=count == 0, unexpected_count=count, element_count=int(summary.get("rows_read") or 0),
                 unexpected_rows=examples, unit="records", observed_value=summary.get("source"))


# ---------------------------------------------------------------------------------------------------------------
# The verdict and the report


def _source_block(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    noise = summary.get("noise") or {}
    return {
        "file": summary.get("source"),
        "format": summary.get("format"),
        "rows_read": summary.get("rows_read"),
        "rows_kept": summary.get("rows_kept"),
        "malformed_count": summary.get("malformed_count"),
        # Characters that are only noise were normalised in prepare and are counted here.
        "noise": {"rows_changed": int(noise.get("rows_changed") or 0),
                  "characters_replaced": int(noise.get("characters_replaced") or 0)},
    }


def _in_source_order(frame: pd.DataFrame) -> pd.DataFrame:
    # Ordered by source_row, so the examples shown are the first offending rows of the user's file; a fresh
    # RangeIndex makes each GX index label name exactly one row.
    if "source_row" in frame:
        frame = frame.sort_values("source_row", kind="stable")
    return frame.reset_index(drop=True)


def image_frames(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Image splits as validate reads them: text is the content hash (the file's name when it has none), so the
    duplicate, conflict and leakage checks compare images byte for byte; short_side and long_side for the size
    checks."""
    out = {}
    for name, frame in frames.items():
        frame = frame.copy()
        hashes = frame["sha256"] if "sha256" in frame else pd.Series(None, index=frame.index, dtype=object)
        files = frame[FILE] if FILE in frame else frame["source_row"].astype(str)
        frame["text"] = hashes.where(hashes.notna(), "unreadable " + files.astype(str))
        sides = frame.reindex(columns=["width", "height"]).astype(float)
        frame["short_side"], frame["long_side"] = sides.min(axis=1), sides.max(axis=1)
        out[name] = frame
    return out


def validate(frames: Mapping[str, pd.DataFrame], labels: list[str], params: ValidateParams,
             summary: Mapping[str, Any] | None = None, limits: ImageParams | None = None) -> ValidateResult:
    """Run every check on the splits and assemble the report; raises nothing, the caller decides what fails.

    Args:
        frames: split name to a frame with columns text, label, source_row, and line when prepare wrote it.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.
        summary: prepare's summary.json, or None when the prepared data has none.
        limits: the image block when the splits hold images (prepare's summary says format "images"); None: text.

    Returns:
        The verdict, one message line per failed error check and per warning, rows per split, and the report.
    """
    if limits is not None:
        frames = image_frames(frames)
    frames = {name: _in_source_order(frame) for name, frame in frames.items()}
    source = check_source(summary, params)
    gx_checks = check_splits(frames, labels, params, limits)
    duplicates, across = check_across_splits(frames, labels, params)
    per_split = {name: gx_checks[name] + duplicates[name] for name in frames}
    scoped = [(SOURCE, source)] + [(name, c) for name, checks in per_split.items() for c in checks] + [
        (CROSS_SPLIT, c) for c in across]
    limit = params.max_failed_rows_shown
    failures = [check.describe(scope) for scope, check in scoped if check.result == "fail"]
    warnings = [check.describe(scope) for scope, check in scoped if check.result == "warn"]
    results = {result: sum(check.result == result for _, check in scoped) for result in RESULTS}
    report = {
        "success": not failures,
        "results": results,
        "max_failed_rows_shown": limit,
        "source": {"summary": _source_block(summary), "checks": [source.to_json()]},
        "splits": {name: {"rows": len(frames[name]), "checks": [c.to_json() for c in checks]}
                   for name, checks in per_split.items()},
        CROSS_SPLIT: [c.to_json() for c in across],
    }
    counts = {name: len(frame) for name, frame in frames.items()}
    return ValidateResult(success=not failures, failures=failures, warnings=warnings, counts=counts, report=report)


def _split_names(report: Mapping[str, Any]) -> list[str]:
    # The JSON file has sorted keys (test, train, val); people read splits in pipeline order.
    return sorted(report["splits"], key=lambda name: (SPLITS.index(name) if name in SPLITS else len(SPLITS), name))


def scoped_checks(report: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every check entry of a report with its scope: source, each split in pipeline order, then cross_split."""
    out = [(SOURCE, check) for check in report["source"]["checks"]]
    out += [(name, check) for name in _split_names(report) for check in report["splits"][name]["checks"]]
    return out + [(CROSS_SPLIT, check) for check in report[CROSS_SPLIT]]


def noise_sentence(report: Mapping[str, Any]) -> str | None:
    """What prepare normalised away, in words, or None when the report has no source summary."""
    summary = report["source"]["summary"]
    if summary is None:
        return None
    noise = summary["noise"]
    return (f"{noise['characters_replaced']} character(s) that are only noise (control or format characters such as "
            f"\\x85 or zero-width spaces) were normalised in prepare, in {noise['rows_changed']} row(s)")


_RESULT_WORDS = {"fail": "FAILED (error)", "warn": "warning", "pass": "passed", "skipped": "not checked",
                 "off": "off"}
_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top;text-align:left}th{background:#f3f3f3}
tr.fail td.result{background:#f8d0d0;font-weight:bold}tr.warn td.result{background:#fbeec0}
tr.pass td.result{background:#d8f0d8}tr.off td,tr.skipped td{color:#777}code{font-size:90%}
ul{margin:0;padding-left:1.2rem}.verdict-fail{color:#a00}.verdict-pass{color:#070}"""


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page of the report: every check, its severity, result, counts and example rows.

    Everything taken from the data is escaped; the page has no scripts, no external links and no timestamps, so
    the same report gives the same bytes.
    """
    e = functools.partial(html.escape, quote=True)
    passed = report["success"]
    results = report["results"]
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>Tuneline data validation: {'passed' if passed else 'FAILED'}</title>",
             f"<style>{_STYLE}</style>", "</head>", "<body>",
             f'<h1 class="verdict-{"pass" if passed else "fail"}">Data validation: '
             f"{'passed' if passed else 'FAILED'}</h1>",
             f"<p>{results['fail']} error(s), {results['warn']} warning(s), {results['pass']} passed, "
             f"{results['skipped']} not checked, {results['off']} off. A failed <b>error</b> check stops the "
             "pipeline; a <b>warning</b> is reported and the pipeline goes on. Severities are set in "
             "<code>validate.severity</code> in params.yaml.</p>"]
    summary = report["source"]["summary"]
    lines.append("<h2>Source</h2>")
    if summary is None:
        lines.append("<p>The prepared data has no summary.json: malformed source lines and noise were not counted."
                     "</p>")
    else:
        rows = [("file", summary["file"]), ("format", summary["format"]), ("records read", summary["rows_read"]),
                ("rows kept", summary["rows_kept"]), ("malformed records skipped", summary["malformed_count"]),
                ("rows cleaned of noise", summary["noise"]["rows_changed"]),
                ("noise characters replaced", summary["noise"]["characters_replaced"])]
        lines.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
                     + "</table>")
        lines.append(f"<p>{e(noise_sentence(report) or '')}.</p>")
    names = _split_names(report)
    lines.append("<h2>Rows per split</h2><table><tr>" + "".join(f"<th>{e(n)}</th>" for n in names)
                 + "</tr><tr>" + "".join(f"<td>{report['splits'][n]['rows']}</td>" for n in names)
                 + "</tr></table>")
    lines += ["<h2>Checks</h2>", "<table>", "<tr><th>scope</th><th>check</th><th>expectation</th><th>severity</th>"
              "<th>result</th><th>failing</th><th>examples</th></tr>"]
    for scope, check in scoped_checks(report):
        column = f" on <code>{e(check['column'])}</code>" if check.get("column") else ""
        examples = "".join(f"<li>{e(_example(check, row, TEXT_SHOWN))}</li>" for row in check["unexpected_rows"])
        lines.append(
            f'<tr class="{e(check["result"])}"><td>{e(scope)}</td><td><code>{e(check["check"])}</code></td>'
            f"<td><code>{e(check['expectation'])}</code>{column}</td><td>{e(check['severity'])}</td>"
            f'<td class="result">{e(_RESULT_WORDS[check["result"]])}</td><td>{e(_failing(check))}</td>'
            f"<td>{f'<ul>{examples}</ul>' if examples else ''}</td></tr>")
    lines += ["</table>", "</body>", "</html>", ""]
    return "\n".join(lines)


def _failing(check: Mapping[str, Any]) -> str:
    """The 'failing' cell of a report table: how many of how many, or why there is no count."""
    if check["result"] in ("off", "skipped"):
        return check.get("note") or ""
    if check.get("error") is not None:
        return f"could not be checked: {check['error']}"
    if check["check"] == "missing_columns":
        return f"columns found: {check.get('observed_value')}"
    if check["check"] == "empty_split":
        return f"{check.get('observed_value')} rows"
    return f"{check['unexpected_count']} of {check['element_count']} {check['unit']}"


def _markdown_cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Mapping[str, Any], examples_per_check: int = 3) -> str:
    """A short markdown summary of the report (for a Prefect artifact): verdict, source, and one row per check."""
    results = report["results"]
    lines = [f"# Data validation: {'passed' if report['success'] else 'FAILED'}", "",
             f"{results['fail']} error(s), {results['warn']} warning(s), {results['pass']} passed, "
             f"{results['skipped']} not checked, {results['off']} off. Rows per split: "
             + ", ".join(f"{name} {report['splits'][name]['rows']}" for name in _split_names(report)) + "."]
    summary = report["source"]["summary"]
    if summary is not None:
        lines += ["", _markdown_cell(f"Source {summary['file']} ({summary['format']}): {summary['rows_read']} "
                                     f"records read, {summary['rows_kept']} kept, {summary['malformed_count']} "
                                     f"malformed. {noise_sentence(report)}.")]
    lines += ["", "| scope | check | severity | result | failing |", "|---|---|---|---|---|"]
    noted = []
    for scope, check in scoped_checks(report):
        lines.append(f"| {scope} | `{check['check']}` | {check['severity']} | {_RESULT_WORDS[check['result']]} | "
                     f"{_markdown_cell(_failing(check))} |")
        if check["result"] in ("fail", "warn"):
            trimmed = {**check, "unexpected_rows": check["unexpected_rows"][:examples_per_check]}
            noted.append(f"- {_markdown_cell(describe(trimmed, scope))}")
    if noted:
        lines += ["", "## Errors and warnings", "", *noted]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# The stage


def _read_split_replacing(folder: Path, split: str) -> pd.DataFrame:
    """read_split, except that bytes which are not UTF-8 become U+FFFD, so invalid_utf8 can point at their rows."""
    try:
        return read_split(folder, split)
    except UnicodeDecodeError:
        content = split_path(folder, split).read_bytes().decode("utf-8", errors="replace")
        frame = pd.read_json(io.StringIO(content), orient="records", lines=True, dtype={"text": str, "label": str})
        return frame if not frame.empty else pd.DataFrame(columns=[*REQUIRED_COLUMNS, LINE])


def _read(prepared_dir: Path) -> tuple[dict[str, pd.DataFrame], list[str], dict[str, Any] | None]:
    """The three splits, labels.json and summary.json (None if absent), or a StageError that says to run prepare."""
    try:
        labels = read_labels(prepared_dir)
        frames = {name: _read_split_replacing(prepared_dir, name) for name in SPLITS}
        summary = read_summary(prepared_dir)
    except FileNotFoundError as exc:
        raise StageError(f"{exc.filename} not found; run the prepare stage first (dvc repro prepare)") from None
    except ValueError as exc:
        raise StageError(f"{prepared_dir} holds a file that is not valid JSON ({exc}); "
                         "rerun the prepare stage (dvc repro prepare)") from None
    return frames, labels, summary


def _fix(result: ValidateResult, with_lines: bool, report_path: Path, html_path: Path) -> str:
    """The paragraph after the failures: where to fix them, the other ways out, and where the full report is."""
    source = (result.report["source"]["summary"] or {}).get("file")
    file = f"the source file {source!r} (data.path in params.yaml)" if source else \
        "the source file named by data.path in params.yaml"
    numbering = "line N is its Nth line, counted from 1" if with_lines else \
        "source_row N is its Nth record, counted from 0"
    return (f"To fix: correct or remove those rows in {file} ({numbering}) and rerun (dvc repro); or change the "
            "thresholds in the validate block of params.yaml; or, to let a check through, set "
            f"validate.severity.<check> to warning. The full report: {report_path} (to read in a browser: "
            f"{html_path}).")


def run(params: ValidateParams, prepared_dir: str | Path, report_path: str | Path,
        html_path: str | Path | None = None, limits: ImageParams | None = None) -> ValidateResult:
    """Validate the prepared splits, write the JSON and HTML reports, and stop the pipeline if an error check failed.

    The reports are written whether or not the data passes, with stable keys and no timestamps. Warnings are
    logged and do not stop the stage.

    Args:
        params: the validate block of params.yaml.
        prepared_dir: the folder the prepare stage wrote (paths.prepared).
        report_path: where the JSON report goes (paths.validation).
        html_path: where the HTML report goes (paths.validation_html); beside the JSON report when not given.
        limits: the image block (image size and channel bounds), used when prepare wrote images.

    Returns:
        The verdict (always a success: a failure raises).

    Raises:
        ValidationFailed: an error-severity check failed; the message lists each with counts and offending rows.
        StageError: the prepared data is missing or unreadable.
    """
    report_path = Path(report_path)
    html_path = Path(html_path) if html_path is not None else report_path.with_suffix(".html")
    frames, labels, summary = _read(Path(prepared_dir))
    from components.images import holds_images

    images = holds_images(prepared_dir)
    result = validate(frames, labels, params, summary, (limits or ImageParams()) if images else None)
    write_json(report_path, result.report)
    _write_text(html_path, render_html(result.report))
    noise = noise_sentence(result.report)
    if noise:
        log.info("%s", noise)
    for warning in result.warnings:
        log.warning("validation warning (the pipeline goes on): %s", warning)
    if not result.success:
        lines = "\n  ".join(result.failures)
        warned = f" (and {len(result.warnings)} warning(s), in the report)" if result.warnings else ""
        raise ValidationFailed(
            f"the prepared data failed {len(result.failures)} error check(s){warned}:\n  {lines}\n"
            + _fix(result, any(LINE in frame for frame in frames.values()), report_path, html_path),
            result,
        )
    log.info("validated %s: %s rows per split, no error check failed, %d warning(s); report in %s and %s",
             prepared_dir, result.counts, len(result.warnings), report_path, html_path)
    return result


def _write_text(path: Path, text: str) -> None:
    """Write a text file atomically (a temp file beside it, then a rename), as io.write_json does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main() -> None:
    stage_main("validate", lambda p: run(p.validate_params, p.paths.prepared, p.paths.validation,
                                         p.paths.validation_html, p.image))


if __name__ == "__main__":
    main()
