"""How validate's report reads: one line per check for the stage's message, a self-contained HTML page for people,
and a markdown summary for the Prefect artifact. Everything here reads the report (validation.json) alone."""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping
from typing import Any

from components.checks import CROSS_SPLIT, FILE, LINE, SOURCE, TEXT_IN_MESSAGE, TEXT_SHOWN, clip
from components.io import SPLITS


def _where(row: Mapping[str, Any]) -> str:
    """'line 12' (the source file's line) when known, else 'source_row 11' (the row's index among the records); an
    image row's file."""
    if row.get(FILE) is not None:
        return str(row[FILE])
    if row.get(LINE) is not None:
        return f"line {row[LINE]}"
    return f"source_row {row.get('source_row')}"


def _shown(text: Any, limit: int) -> str:
    return repr(clip(text, limit)) if isinstance(text, str) else "null"


def _example(check: Mapping[str, Any], row: Mapping[str, Any], limit: int, column: str) -> str:
    """How one offending row reads: where it is in the source and what about it failed (`column` holds its item)."""
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
    if row.get("detail") is not None:  # a check of the modality's own says how its rows read
        return f"{prefix}{_where(row)}: {row['detail']}"
    shown = _shown(row.get(column), limit)
    if "first" in row:
        first = row["first"]
        again = "" if first.get(column) == row.get(column) else f" {_shown(first.get(column), limit)}"
        return f"{prefix}{_where(row)} {shown} repeats {_where(first)}{again}"
    if name == "conflicting_labels":
        return f"{prefix}{_where(row)}: {shown} labelled {row.get('label')!r}"
    if check.get("column") == "label":
        label = row.get("label")
        return f"{prefix}{_where(row)}: label {'null' if label is None else repr(label)} ({shown})"
    if "length" in row:
        shown += f" ({row['length']} chars)"
    return f"{prefix}{_where(row)}: {shown}"


def describe(check: Mapping[str, Any], scope: str, text_limit: int = TEXT_IN_MESSAGE, column: str = "text") -> str:
    """One line for a report entry: [name] scope/expectation on column ...: how many fail, e.g. the first rows.

    `column` is the key under which the entry's rows hold their item (the report's "column").
    """
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
        missing = [c for c in check.get("expected_columns") or [] if c not in (observed or [])]
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
    examples = "; ".join(_example(check, row, text_limit, column) for row in check["unexpected_rows"])
    return f"{where}: {head}, e.g. {examples}" if examples else f"{where}: {head}"


def item_column(report: Mapping[str, Any]) -> str:
    """The key under which the report's rows hold their item (text, image); reports before modalities held texts."""
    return report.get("column") or "text"


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
    item = item_column(report)
    for scope, check in scoped_checks(report):
        column = f" on <code>{e(check['column'])}</code>" if check.get("column") else ""
        examples = "".join(f"<li>{e(_example(check, row, TEXT_SHOWN, item))}</li>" for row in check["unexpected_rows"])
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
            noted.append(f"- {_markdown_cell(describe(trimmed, scope, column=item_column(report)))}")
    if noted:
        lines += ["", "## Errors and warnings", "", *noted]
    return "\n".join(lines) + "\n"

