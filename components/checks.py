"""The checks of validate that one Great Expectations batch cannot express, and the shape every check takes in the
report: duplicates within a split, one item with two labels, one item in two splits, class counts and imbalance
(vectorised in pandas over the modality's item keys), and the source records prepare could not read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from components.config import Severity, ValidateParams

if TYPE_CHECKING:
    from components.modalities import Modality

LINE = "line"  # 1-based line of the row in the source file, written by prepare; older splits lack it
FILE = "file"  # the file a row came from (images)
TEXT_SHOWN = 120  # characters of an item kept in the report
TEXT_IN_MESSAGE = 60  # shorter in the error message, where several examples share one line
SOURCE, CROSS_SPLIT = "source", "cross_split"

# Checks done outside GX, named in the style of GX's expectation types so the report reads as one list.
NO_MALFORMED = "expect_no_malformed_source_lines"
# ... and named after what the rows hold ({item}: text, image; {items}: texts, images)
NO_EXACT_DUPLICATES = "expect_{items}_to_be_unique"
NO_NORMALISED_DUPLICATES = "expect_normalised_{items}_to_be_unique"
ONE_LABEL_PER_ITEM = "expect_one_label_per_normalised_{item}"
LEAKAGE = "expect_each_{item}_in_one_split"
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
    expected_columns: tuple[str, ...] | None = None  # missing_columns: the columns the splits must have

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
        if self.expected_columns is not None:
            entry["expected_columns"] = list(self.expected_columns)
        return entry


def off(name: str, expectation: str, column: str | None) -> Check:
    """A check switched off in validate.severity."""
    return Check(name=name, expectation=expectation, column=column, severity="off", success=None)


def clip(text: Any, limit: int = TEXT_SHOWN) -> str | None:
    """An item as a report shows it: at most `limit` characters; None when it is not a string."""
    if not isinstance(text, str):
        return None
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain(value: Any) -> Any:
    """A JSON-safe scalar: NaN and pandas' missing markers become null, numpy numbers become Python ones."""
    if isinstance(value, (list, tuple, dict)):
        return value
    if value is None or pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def position(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's line in the source file when the split has one, and its source_row (always, for the splits)."""
    where = {"source_row": plain(row.get("source_row"))}
    line = plain(row.get(LINE))
    if line is not None:
        where[LINE] = int(line)
    if plain(row.get(FILE)) is not None:  # image rows: the file it came from
        where[FILE] = plain(row.get(FILE))
    return where


def row_example(frame: pd.DataFrame, index: Any, modality: Modality, with_length: bool = False,
                own_check: bool = False) -> dict[str, Any]:
    """A failing row as the report lists it: where it is, its item (clipped) and label, the modality's details
    (an image's problem or size), and for a check of the modality's own, how the row reads (`detail`)."""
    row = frame.loc[index]
    item = plain(row.get(modality.column))
    example = {**position(row), modality.column: clip(item), "label": plain(row.get("label"))}
    for key in modality.details:
        if plain(row.get(key)) is not None:
            example[key] = plain(row.get(key))
    if with_length and isinstance(item, str):
        # The item itself is clipped, so a too-long row needs its real length spelled out.
        example["length"] = len(item)
    detail = modality.detail({key: plain(value) for key, value in row.items()}) if own_check else None
    if detail is not None:
        example["detail"] = detail
    return example


def _all_rows(frames: Mapping[str, pd.DataFrame], modality: Modality) -> pd.DataFrame:
    """Every split's rows in one frame, with the split's name and order, and integer ids for the item (exact), its
    key (modality.item_key) and the label; -1 where a row has none."""
    parts = [frame.assign(split=name, order=order) for order, (name, frame) in enumerate(frames.items())]
    columns = [modality.column, "label", "source_row", LINE, FILE, "split", "order"]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    rows = rows.reindex(columns=list(dict.fromkeys([*columns, *rows.columns])))
    keys = modality.item_key(rows)
    # Null and blank items have their own checks; an empty key (a text of only punctuation) says nothing here.
    rows["item_id"] = pd.factorize(modality.identity(rows))[0]
    rows["key_id"] = pd.factorize(keys.where(keys != ""))[0]
    rows["label_id"] = pd.factorize(rows["label"])[0]
    return rows


def _examples(rows: pd.DataFrame, shown: int, with_split: bool, column: str) -> tuple[dict[str, Any], ...]:
    out = []
    for row in rows.head(shown).to_dict("records"):
        example = {**({"split": row["split"]} if with_split else {}), **position(row),
                   column: clip(plain(row[column])), "label": plain(row["label"])}
        out.append(example)
    return tuple(out)


def _duplicates(rows: pd.DataFrame, split: str, params: ValidateParams, column: str,
                names: Mapping[str, str]) -> list[Check]:
    """Exact and normalised repeats of an earlier item within one split (rows in source order)."""
    mine = rows[rows["split"] == split]
    has_item = mine["item_id"] >= 0
    exact = has_item & mine.duplicated(["item_id"])
    normalised = (mine["key_id"] >= 0) & mine.duplicated(["key_id"]) & ~exact
    checks = []
    for name, expectation, mask, id_column in (
            ("exact_duplicates", NO_EXACT_DUPLICATES.format(**names), exact, "item_id"),
            ("normalised_duplicates", NO_NORMALISED_DUPLICATES.format(**names), normalised, "key_id")):
        severity = getattr(params.severity, name)
        if severity == "off":
            checks.append(off(name, expectation, column))
            continue
        offending = mine[mask]
        examples = []
        for example, row in zip(_examples(offending, params.max_failed_rows_shown, False, column),
                                offending.head(params.max_failed_rows_shown).itertuples(), strict=True):
            first = mine[mine[id_column] == getattr(row, id_column)].iloc[0]
            examples.append({**example, "first": {**position(first), column: clip(plain(first[column]))}})
        checks.append(Check(name=name, expectation=expectation, column=column, severity=severity,
                            success=not mask.any(), unexpected_count=int(mask.sum()),
                            element_count=int(has_item.sum()), unexpected_rows=tuple(examples)))
    return checks


def _shared_keys(rows: pd.DataFrame, other: str) -> tuple[pd.Series, pd.DataFrame]:
    """Per row, whether its key occurs with more than one value of `other` (label_id or order); the keyed rows."""
    keyed = rows[(rows["key_id"] >= 0) & (rows[other] >= 0)]
    pairs = keyed[["key_id", other]].drop_duplicates()
    shared = pairs.loc[pairs["key_id"].duplicated(), "key_id"].unique()
    return (rows["key_id"] >= 0) & rows["key_id"].isin(shared), keyed


def _leakage(rows: pd.DataFrame, params: ValidateParams, column: str, names: Mapping[str, str]) -> Check:
    """Rows whose item (by its key) appears in more than one split: a test score on seen items means nothing."""
    expectation = LEAKAGE.format(**names)
    severity = params.severity.leakage
    if severity == "off":
        return off("leakage", expectation, column)
    mask, keyed = _shared_keys(rows, "order")
    leaked = rows[mask].sort_values(["key_id", "order", "source_row"], kind="stable")
    return Check(name="leakage", expectation=expectation, column=column, severity=severity, success=leaked.empty,
                 unexpected_count=len(leaked), element_count=len(keyed),
                 unexpected_rows=_examples(leaked, params.max_failed_rows_shown, True, column))


def _conflicting_labels(rows: pd.DataFrame, params: ValidateParams, column: str, names: Mapping[str, str]) -> Check:
    """Rows whose item (by its key) also appears with another label: the model is taught both answers."""
    expectation = ONE_LABEL_PER_ITEM.format(**names)
    severity = params.severity.conflicting_labels
    if severity == "off":
        return off("conflicting_labels", expectation, "label")
    mask, keyed = _shared_keys(rows, "label_id")
    conflicting = rows[mask].sort_values(["key_id", "order", "source_row"], kind="stable")
    return Check(name="conflicting_labels", expectation=expectation, column="label", severity=severity,
                 success=conflicting.empty, unexpected_count=len(conflicting), element_count=len(keyed),
                 unexpected_rows=_examples(conflicting, params.max_failed_rows_shown, True, column),
                 observed_value={names["items"]: int(conflicting["key_id"].nunique())} if len(conflicting) else None)


def _per_class(train: pd.DataFrame, labels: list[str], params: ValidateParams) -> Check:
    """Labels with fewer than `min_per_class` train rows: the model cannot learn a class it has (almost) never seen."""
    severity = params.severity.min_per_class
    if severity == "off":
        return off("min_per_class", PER_CLASS, "label")
    shown, minimum = params.max_failed_rows_shown, params.min_per_class
    counts = train["label"].value_counts()
    short = []
    for label in labels:  # a loop over the labels, not the rows
        if int(counts.get(label, 0)) < minimum:
            members = train[train["label"] == label].head(shown)
            entry = {"label": label, "train_rows": int(counts.get(label, 0)), "min_rows": minimum,
                     "source_rows": [plain(v) for v in members["source_row"]]}
            if members[LINE].notna().any():
                entry["lines"] = [plain(v) for v in members[LINE]]
            short.append(entry)
    return Check(name="min_per_class", expectation=PER_CLASS, column="label", severity=severity, success=not short,
                 unexpected_count=len(short), element_count=len(labels), unexpected_rows=tuple(short[:shown]),
                 unit="labels")


def _imbalance(train: pd.DataFrame, labels: list[str], params: ValidateParams) -> Check:
    """Classes further apart than max_imbalance_ratio: a model may learn to ignore the small ones."""
    severity = params.severity.imbalance
    if severity == "off":
        return off("imbalance", BALANCE, "label")
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


def check_across_splits(frames: Mapping[str, pd.DataFrame], labels: list[str], params: ValidateParams,
                        modality: Modality) -> tuple[dict[str, list[Check]], list[Check]]:
    """The checks GX cannot express on one batch: duplicates, conflicting labels, leakage, class counts.

    Args:
        frames: split name to a frame with columns label, source_row (and line) and the modality's, in source order.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.
        modality: what the rows hold; its item_key and identity say which rows are the same item.

    Returns:
        Per split its duplicate checks, and the cross-split checks, each in a fixed order.
    """
    rows = _all_rows(frames, modality)
    column, names = modality.column, {"item": modality.item, "items": modality.items}
    per_split = {name: _duplicates(rows, name, params, column, names) for name in frames}
    train = rows[rows["split"] == "train"]
    severity = params.severity.single_class
    # One class is not a classification problem: the model would be right by construction.
    single = off("single_class", TWO_LABELS, "label") if severity == "off" else Check(
        name="single_class", expectation=TWO_LABELS, column="label", severity=severity, success=len(labels) >= 2,
        unexpected_count=int(len(labels) < 2), element_count=len(labels), unit="labels",
        observed_value=list(labels))
    across = [_leakage(rows, params, column, names), _conflicting_labels(rows, params, column, names),
              _per_class(train, labels, params), single, _imbalance(train, labels, params)]
    return per_split, across


def check_source(summary: Mapping[str, Any] | None, params: ValidateParams) -> Check:
    """Source records prepare could not read (summary.json): a row silently dropped is a row the user lost."""
    severity = params.severity.malformed_lines
    if severity == "off":
        return off("malformed_lines", NO_MALFORMED, None)
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


