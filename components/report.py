"""The evaluation report a person reads (reports/evaluation.md): headline figures with intervals beside the
baseline's, per class, the confusion matrix, calibration, the champion comparison, the gate and the most confident
mistakes. It reads the results evaluate computed (components/metrics.py) and computes nothing of its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPORT_TEXT_CHARS = 160


def render_report(
    metrics: dict[str, Any],
    verdict: dict[str, Any],
    mistakes: list[dict[str, Any]],
    confusion_matrix: list[list[int]],
    labels: list[str],
) -> str:
    """A markdown evaluation report for a person: figures, tables, calibration, champion, gate and mistakes.

    Args:
        metrics: {"test_rows", "model": {... "intervals", "ece"}, "baseline": {...}, "champion": None or
            {"tag", "accuracy", "macro", "difference", "mcnemar"}}; any key may be missing.
        verdict: {"passed", "decision", "reason", "checks": [{"condition", "value", "threshold", "passed",
            "message"}], "failures"}; any key may be missing.
        mistakes: output of most_confident_mistakes.
        confusion_matrix: output of confusion, rows true, columns predicted, in `labels` order.
        labels: every label, in report order.

    Returns:
        The report as markdown text, ending with a newline.
    """
    model = metrics.get("model") or {}
    baseline = metrics.get("baseline") or {}
    lines = ["# Tuneline evaluation report", ""]
    test_rows = metrics.get("test_rows")
    lines += [f"Test rows: {test_rows if test_rows is not None else 'unknown'}.", ""]
    lines += _headline_section(model, baseline, metrics.get("baseline_name") or "TF-IDF baseline")
    lines += _per_class_section(model, baseline, labels)
    lines += _confusion_section(confusion_matrix, labels)
    lines += _calibration_section(model)
    lines += _champion_section(metrics.get("champion"), model)
    lines += _verdict_section(verdict)
    lines += _mistakes_section(mistakes)
    return "\n".join(lines).rstrip("\n") + "\n"


def _headline_section(model: dict[str, Any], baseline: dict[str, Any], name: str = "TF-IDF baseline") -> list[str]:
    """Accuracy and macro P/R/F1 with intervals, and weighted F1, next to the baseline's."""
    intervals = model.get("intervals") or {}
    rows = [
        ("accuracy", model.get("accuracy"), intervals.get("accuracy"), baseline.get("accuracy")),
        *(
            (
                f"macro {name}",
                (model.get("macro") or {}).get(name),
                intervals.get(f"macro_{name}"),
                (baseline.get("macro") or {}).get(name),
            )
            for name in ("precision", "recall", "f1")
        ),
        ("weighted f1", (model.get("weighted") or {}).get("f1"), None, (baseline.get("weighted") or {}).get("f1")),
    ]
    lines = [
        f"## Model against the {name}",
        "",
        "| metric | model | 95% interval | baseline | model - baseline |",
        "|---|---:|---|---:|---:|",
    ]
    for name, value, interval, base in rows:
        delta = _signed(value - base) if value is not None and base is not None else "-"
        lines.append(f"| {name} | {_number(value)} | {_interval(interval)} | {_number(base)} | {delta} |")
    return [*lines, ""]


def _per_class_section(model: dict[str, Any], baseline: dict[str, Any], labels: list[str]) -> list[str]:
    """Per-class precision, recall, F1 and support, with the baseline's F1 for contrast."""
    per_class = model.get("per_class") or {}
    base_per_class = baseline.get("per_class") or {}
    lines = [
        "## Per class",
        "",
        "| label | precision | recall | F1 | support | baseline F1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        row = per_class.get(label) or {}
        base_f1 = (base_per_class.get(label) or {}).get("f1")
        lines.append(
            f"| {_cell(label)} | {_number(row.get('precision'))} | {_number(row.get('recall'))} | "
            f"{_number(row.get('f1'))} | {row.get('support', '-')} | {_number(base_f1)} |"
        )
    return [*lines, ""]


def _confusion_section(matrix: list[list[int]], labels: list[str]) -> list[str]:
    """The confusion matrix as a table, true labels down the side and predicted labels across."""
    lines = ["## Confusion matrix (rows: true label, columns: predicted label)", ""]
    if not matrix:
        return [*lines, "No confusion matrix recorded.", ""]
    lines.append("| true \\ predicted | " + " | ".join(_cell(label) for label in labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for label, row in zip(labels, matrix, strict=False):
        lines.append(f"| {_cell(label)} | " + " | ".join(str(count) for count in row) + " |")
    return [*lines, ""]


def _calibration_section(model: dict[str, Any]) -> list[str]:
    """The expected calibration error of the probabilities served, and before the temperature when one was fitted."""
    ece = model.get("ece")
    text = "not computed" if ece is None else _number(ece)
    lines = ["## Calibration", "", f"Expected calibration error (top-label confidence, equal-width bins): {text}."]
    if model.get("temperature") not in (None, 1.0) and model.get("ece_uncalibrated") is not None:
        lines.append(f"The probabilities are temperature-scaled (T = {float(model['temperature']):.4f}, fitted on the "
                     f"val split); before that the error was {_number(model['ece_uncalibrated'])}.")
    return [*lines, ""]


def _champion_section(champion: dict[str, Any] | None, model: dict[str, Any]) -> list[str]:
    """The candidate against the current champion: figures, paired bootstrap difference and McNemar."""
    lines = ["## Against the current champion", ""]
    if not champion:
        return [*lines, "No champion to compare against.", ""]
    lines += [
        f"Champion: `{champion.get('tag', 'unknown')}`.",
        "",
        "| metric | candidate | champion |",
        "|---|---:|---:|",
        f"| accuracy | {_number(model.get('accuracy'))} | {_number(champion.get('accuracy'))} |",
        f"| macro f1 | {_number((model.get('macro') or {}).get('f1'))} | "
        f"{_number((champion.get('macro') or {}).get('f1'))} |",
        "",
    ]
    difference = champion.get("difference")
    if difference:
        share = difference.get("confidence", 0.95)
        lines.append(
            f"Macro F1 difference (candidate - champion): {_signed(difference.get('difference'))}, "
            f"{share:.0%} paired bootstrap interval [{_signed(difference.get('low'))}, "
            f"{_signed(difference.get('high'))}] over {difference.get('n', '?')} rows."
        )
        lines.append("")
    test = champion.get("mcnemar")
    if test:
        lines.append(
            f"McNemar: only the candidate is right on {test.get('candidate_only_right', '?')} rows, only the "
            f"champion on {test.get('champion_only_right', '?')}; exact p = {_p_value(test.get('p_value'))}."
        )
    return [*lines, ""]


def _verdict_section(verdict: dict[str, Any]) -> list[str]:
    """The gate's overall verdict and every check, pass or FAIL, with its message."""
    checks = verdict.get("checks") or verdict.get("failures") or []
    passed = verdict.get("passed", bool(checks) and all(check.get("passed", False) for check in checks))
    headline = f"**Gate: {'passed' if passed else 'FAILED'}**"
    if verdict.get("decision"):
        headline += f"; decision: **{verdict['decision']}**"
    if verdict.get("reason"):
        headline += f" ({verdict['reason']})"
    lines = ["## Gate verdict", "", headline + ".", ""]
    if not checks:
        return [*lines, "No gate checks recorded.", ""]
    for check in checks:
        mark = "pass" if check.get("passed", False) else "FAIL"
        condition = check.get("condition", "unnamed check")
        message = check.get("message")
        lines.append(f"- {mark}: {condition}: {message}" if message else f"- {mark}: {condition}")
    return [*lines, ""]


def _mistakes_section(mistakes: list[dict[str, Any]]) -> list[str]:
    """The most confident wrong predictions, each item (a text, an image's file) shortened and escaped for a cell."""
    lines = ["## Most confident mistakes", ""]
    if not mistakes:
        return [*lines, "No mistakes on the test split.", ""]
    lines += ["| probability | true | predicted | item |", "|---:|---|---|---|"]
    for mistake in mistakes:
        lines.append(
            f"| {_number(mistake.get('probability'))} | {_cell(str(mistake.get('label', '')))} | "
            f"{_cell(str(mistake.get('predicted', '')))} | {_cell(_shorten(str(mistake.get('item', ''))))} |"
        )
    return [*lines, ""]


def _shorten(text: str, limit: int = REPORT_TEXT_CHARS) -> str:
    """Cut text to at most `limit` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: str) -> str:
    """Escape text for a markdown table cell: a bare | would split the cell and a newline would end the row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("|", "\\|").replace("\n", "<br>")


def _number(value: Any) -> str:
    """A figure with four decimals, or '-' when it is missing."""
    return "-" if value is None else f"{float(value):.4f}"


def _signed(value: Any) -> str:
    """A figure with an explicit sign, or '-' when it is missing."""
    return "-" if value is None else f"{float(value):+.4f}"


def _interval(interval: Sequence[float] | None) -> str:
    """[low, high] with four decimals, or '-' when it is missing."""
    if not interval or len(interval) != 2:
        return "-"
    return f"[{float(interval[0]):.4f}, {float(interval[1]):.4f}]"


def _p_value(value: Any) -> str:
    """A p-value readable at any size: four decimals, or scientific notation below 0.0001."""
    if value is None:
        return "-"
    return f"{float(value):.4f}" if float(value) >= 1e-4 else f"{float(value):.2e}"

