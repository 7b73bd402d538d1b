"""Stage `validate`: check the prepared splits against what good training data is, and stop the pipeline on errors.

Per split, a Great Expectations suite checks the columns and every row: the checks every modality shares (columns
present, the split not empty, label present and known) and those its modality adds (a text present, not blank, of
sane length, free of control characters and decoding damage; an image readable, of sane size and channels). Across
rows, vectorised pandas checks what one GX batch cannot (components/checks.py): duplicates within a split, one item
with two labels, one item in two splits, class counts and imbalance. prepare's summary.json adds the source lines it
could not read. Each check has a severity in params.yaml (validate.severity): `error` stops the pipeline, `warning`
is reported and the pipeline goes on, `off` skips it. Outputs: the JSON report (stable keys, no timestamps) and a
self-contained HTML page for people (components/validation_report.py).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from components import modalities
from components.checks import (
    CROSS_SPLIT,
    LINE,
    RESULTS,
    SOURCE,
    Check,
    check_across_splits,
    check_source,
    off,
    plain,
    row_example,
)
from components.config import Severity, ValidateParams
from components.io import SPLITS, read_labels, read_split, read_summary, split_path, write_json, write_text
from components.modalities import Expectation, Modality
from components.stage import StageError, stage_main
from components.validation_report import describe, noise_sentence, render_html, render_markdown

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.core.batch_definition import BatchDefinition

__all__ = ["ValidateResult", "ValidationFailed", "render_markdown", "run", "validate"]

log = logging.getLogger(__name__)


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
# The Great Expectations suite: one batch per split


def expectations(modality: Modality, labels: list[str]) -> list[Expectation]:
    """Every split's expectations, in report order: columns and rows, the modality's own, then the labels."""
    return [
        # Every later stage reads these columns; source_row (and line) is how a failure points back at the file.
        Expectation("missing_columns", "expect_table_columns_to_match_set",
                    {"column_set": list(modality.columns), "exact_match": False}),
        # A split that rounds to zero rows (tiny data, large fractions) leaves nothing to train, stop early on, or
        # test.
        Expectation("empty_split", "expect_table_row_count_to_be_between", {"min_value": 1}),
        *modality.expectations(labels),
        # An unlabelled row cannot be trained on or scored.
        Expectation("null_label", "expect_column_values_to_not_be_null", {"column": "label"}),
        # A typo or stray class ("Fresh", "fersh") that the model's label list would silently not know.
        Expectation("unknown_label", "expect_column_values_to_be_in_set", {"column": "label",
                                                                           "value_set": list(labels)}),
    ]


def build_suite(context: Any, params: ValidateParams, wanted: list[Expectation]) -> ExpectationSuite:
    """The suite of the expectations not switched off, each tagged with its check name in meta."""
    import great_expectations as gx

    suite = context.suites.add(gx.ExpectationSuite(name="prepared_split"))
    for expectation in wanted:
        if getattr(params.severity, expectation.check) != "off":
            # GX's class for a snake-case type: expect_column_values_to_be_null -> ExpectColumnValuesToBeNull.
            kind = getattr(gx.expectations, "".join(part.capitalize() for part in expectation.type.split("_")))
            # meta carries the check's name through GX, so each result maps back to its severity.
            suite.add_expectation(kind(**expectation.kwargs, meta={"check": expectation.check}))
    return suite


def _error_message(exception_info: Mapping[str, Any]) -> str | None:
    # GX gives one flat record, or one record per metric it tried; either way keep the distinct messages.
    records = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = sorted({str(r.get("exception_message")) for r in records if r.get("raised_exception")})
    return "; ".join(messages) or None


def _check_from_gx(result: Any, frame: pd.DataFrame, severity: Severity, modality: Modality,
                   expected: Expectation) -> Check:
    config = result.expectation_config
    details = result.result or {}
    error = _error_message(result.exception_info or {})
    with_length = config.type == "expect_column_value_lengths_to_be_between"
    own = expected.check in modality.checks
    examples = tuple(row_example(frame, i, modality, with_length, own)
                     for i in details.get("partial_unexpected_index_list") or [])
    observed = details.get("observed_value")
    return Check(
        name=expected.check,
        expectation=config.type,
        column=config.kwargs.get("column"),
        severity=severity,
        success=bool(result.success),
        unexpected_count=int(details.get("unexpected_count") or 0),
        element_count=int(details.get("element_count") or len(frame)),
        unexpected_rows=examples,
        observed_value=None if observed is None else plain(observed),
        error=error,
        expected_columns=tuple(expected.kwargs["column_set"]) if "column_set" in expected.kwargs else None,
    )


def _validate_split(batch_definition: BatchDefinition, suite: ExpectationSuite, frame: pd.DataFrame,
                    params: ValidateParams, wanted: list[Expectation], modality: Modality) -> list[Check]:
    """Run the suite on one split; the checks come back in `wanted` order, off ones included."""
    # SUMMARY with a capped partial list: counts are complete, and only the first few offending rows are collected.
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": params.max_failed_rows_shown})
    by_name = {r.expectation_config.meta["check"]: r for r in result.results}
    return [_check_from_gx(by_name[e.check], frame, getattr(params.severity, e.check), modality, e)
            if e.check in by_name else off(e.check, e.type, e.column) for e in wanted]


def _quiet_gx_logging() -> None:
    """Keep GX's INFO chatter (hundreds of "Skipping registering function ..." lines) out of the stage's log."""
    # Only when nobody chose a level for GX, so an entry point that wants GX's INFO lines still gets them.
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def check_splits(frames: Mapping[str, pd.DataFrame], labels: list[str], params: ValidateParams,
                 modality: Modality) -> dict[str, list[Check]]:
    """Validate each split against one Great Expectations suite, in an ephemeral (in-memory) context.

    Args:
        frames: split name to a frame with the modality's columns (and those its validation_frame adds), indexed
            0..n-1.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.
        modality: what the splits hold; it adds expectations of its own.

    Returns:
        For each split, its checks in `expectations` order (switched-off ones reported as off).
    """
    wanted = expectations(modality, labels)
    if all(getattr(params.severity, e.check) == "off" for e in wanted):
        return {name: [off(e.check, e.type, e.column) for e in wanted] for name in frames}
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
    suite = build_suite(context, params, wanted)
    return {name: _validate_split(batch_definition, suite, frame, params, wanted, modality)
            for name, frame in frames.items()}


# ---------------------------------------------------------------------------------------------------------------
# The verdict and the report


def _source_block(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    noise = summary.get("noise") or {}
    return {
        "file": summary.get("source"),
        **({"split_files": summary["split_files"]} if summary.get("split_files") else {}),
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


def validate(frames: Mapping[str, pd.DataFrame], labels: list[str], params: ValidateParams, modality: Modality,
             summary: Mapping[str, Any] | None = None) -> ValidateResult:
    """Run every check on the splits and assemble the report; raises nothing, the caller decides what fails.

    Args:
        frames: split name to a frame with columns label, source_row, line when prepare wrote it, and the
            modality's.
        labels: the allowed labels (labels.json).
        params: the validate block of params.yaml.
        modality: what the splits hold (prepare's summary.json says which).
        summary: prepare's summary.json, or None when the prepared data has none.

    Returns:
        The verdict, one message line per failed error check and per warning, rows per split, and the report.
    """
    frames = {name: modality.validation_frame(_in_source_order(frame)) for name, frame in frames.items()}
    source = check_source(summary, params)
    gx_checks = check_splits(frames, labels, params, modality)
    duplicates, across = check_across_splits(frames, labels, params, modality)
    per_split = {name: gx_checks[name] + duplicates[name] for name in frames}
    scoped = [(SOURCE, source)] + [(name, c) for name, checks in per_split.items() for c in checks] + [
        (CROSS_SPLIT, c) for c in across]
    failures = [describe(check.to_json(), scope, column=modality.column) for scope, check in scoped
                if check.result == "fail"]
    warnings = [describe(check.to_json(), scope, column=modality.column) for scope, check in scoped
                if check.result == "warn"]
    results = {result: sum(check.result == result for _, check in scoped) for result in RESULTS}
    report = {
        "success": not failures,
        "modality": modality.name,
        "column": modality.column,
        "results": results,
        "max_failed_rows_shown": params.max_failed_rows_shown,
        "source": {"summary": _source_block(summary), "checks": [source.to_json()]},
        "splits": {name: {"rows": len(frames[name]), "checks": [c.to_json() for c in checks]}
                   for name, checks in per_split.items()},
        CROSS_SPLIT: [c.to_json() for c in across],
    }
    counts = {name: len(frame) for name, frame in frames.items()}
    return ValidateResult(success=not failures, failures=failures, warnings=warnings, counts=counts, report=report)


# ---------------------------------------------------------------------------------------------------------------
# The stage


def _read_split_replacing(folder: Path, split: str) -> pd.DataFrame:
    """read_split, except that bytes which are not UTF-8 become U+FFFD, so invalid_utf8 can point at their rows."""
    try:
        return read_split(folder, split)
    except UnicodeDecodeError:
        content = split_path(folder, split).read_bytes().decode("utf-8", errors="replace")
        frame = pd.read_json(io.StringIO(content), orient="records", lines=True, dtype={"text": str, "label": str})
        return frame if not frame.empty else pd.DataFrame(columns=["label", "source_row", LINE])


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
    summary = result.report["source"]["summary"] or {}
    source, split_files = summary.get("file"), summary.get("split_files")
    file = f"the source file {source!r} (data.path in params.yaml)" if source else \
        "the source file named by data.path in params.yaml"
    if split_files:  # data.val_path / data.test_path: each row lies in its split's file
        file = "the file of each row's split (" + ", ".join(
            f"{name}: {path!r}, {'data.path' if name == 'train' else f'data.{name}_path'}"
            for name, path in split_files.items()) + ")"
    numbering = "line N is its Nth line, counted from 1" if with_lines else \
        "source_row N is its Nth record, counted from 0"
    return (f"To fix: correct or remove those rows in {file} ({numbering}) and rerun (dvc repro); or change the "
            "thresholds in the validate block of params.yaml; or, to let a check through, set "
            f"validate.severity.<check> to warning. The full report: {report_path} (to read in a browser: "
            f"{html_path}).")


def run(params: ValidateParams, modality: Modality, prepared_dir: str | Path, report_path: str | Path,
        html_path: str | Path | None = None) -> ValidateResult:
    """Validate the prepared splits, write the JSON and HTML reports, and stop the pipeline if an error check failed.

    The reports are written whether or not the data passes, with stable keys and no timestamps. Warnings are
    logged and do not stop the stage.

    Args:
        params: the validate block of params.yaml.
        modality: what the prepared data holds, with its block of params.yaml (components.modalities.for_prepared).
        prepared_dir: the folder the prepare stage wrote (paths.prepared).
        report_path: where the JSON report goes (paths.validation).
        html_path: where the HTML report goes (paths.validation_html); beside the JSON report when not given.

    Returns:
        The verdict (always a success: a failure raises).

    Raises:
        ValidationFailed: an error-severity check failed; the message lists each with counts and offending rows.
        StageError: the prepared data is missing or unreadable.
    """
    report_path = Path(report_path)
    html_path = Path(html_path) if html_path is not None else report_path.with_suffix(".html")
    frames, labels, summary = _read(Path(prepared_dir))
    result = validate(frames, labels, params, modality, summary)
    write_json(report_path, result.report)
    write_text(html_path, render_html(result.report))
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


def main() -> None:
    stage_main("validate", lambda p: run(p.validate_params, modalities.for_prepared(p.paths.prepared, p),
                                         p.paths.prepared, p.paths.validation, p.paths.validation_html))


if __name__ == "__main__":
    main()
