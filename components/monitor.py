"""Watching the served model: what the service answered, compared with what the champion was trained and tested on.

The service logs each sampled request's rows through BentoML's monitoring API (`bentoml.monitor`, its default
exporter: JSON lines under `monitor.dir`/tuneline_predictions/data/, one file per worker, rotated daily): time, the
model's tag, the predicted label and its probability, the modality's input signals (for text: its length in
characters and the share of its tokens the tokenizer does not know), and the text itself only with
`monitor.log_text` (off by default: served texts are the users' data).

`tuneline monitor` (and a step of every scheduled run) reads the rows of the last `monitor.window_hours` served by the
champion and tests each signal against a reference: the predicted label shares and the confidence against the
champion's own predictions on the test split (what it does on data like its training data), the input signals
against the train and test splits. Numbers get scipy's two-sample Kolmogorov-Smirnov test, the label shares a
chi-square test of homogeneity. A signal drifts when its p-value is below `monitor.alpha` split over the signals
(Bonferroni) and its effect is at least `monitor.min_effect` (the KS statistic; the total variation distance of the
shares), so a large window does not call a negligible shift drift. The verdict goes to `monitor.verdict` (JSON) and
`monitor.report` (HTML).
"""

from __future__ import annotations

import datetime
import html
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import MonitorParams, Params
from components.stage import StageError

log = logging.getLogger(__name__)

MONITOR_NAME = "tuneline_predictions"  # BentoML's monitor name: rows land in <monitor.dir>/<this>/data/
LABEL, PROBABILITY, MODEL = "label", "probability", "model"


# ---------------------------------------------------------------------------------------------------------------
# Logging (in the service)


def log_served(model_tag: str, items: Sequence[Any], labels: Sequence[str], probabilities: Sequence[float],
               signals: Mapping[str, Sequence[float]], texts: Sequence[str] | None = None) -> None:
    """One row per served item through BentoML's monitoring API (inside a request: its id and trace go along)."""
    import bentoml

    with bentoml.monitor(MONITOR_NAME) as monitor:
        monitor.log_batch([model_tag] * len(items), MODEL, "feature", "categorical")
        for name, values in signals.items():
            monitor.log_batch([float(v) for v in values], name, "feature", "numerical")
        if texts is not None:
            monitor.log_batch(list(texts), "text", "feature", "categorical")  # BentoML has no text type
        monitor.log_batch(list(labels), LABEL, "prediction", "categorical")
        monitor.log_batch([float(p) for p in probabilities], PROBABILITY, "prediction", "numerical")


# ---------------------------------------------------------------------------------------------------------------
# Reading what was served


def served_rows(folder: str | Path, since: datetime.datetime | None = None, model: str | None = None) -> pd.DataFrame:
    """The logged rows under `folder` (every worker's file, rotated ones included), oldest first.

    Args:
        folder: monitor.dir, as the service was started with it.
        since: only rows logged at or after this time (naive local time, as BentoML stamps them); None = all.
        model: only rows of this model tag; None = every model's.
    """
    files = sorted((Path(folder) / MONITOR_NAME / "data").glob("data.*.log*"))
    rows = []
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s line %d is not JSON (a row cut by a crash?); skipped", path, number)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], format="ISO8601")
    if since is not None:
        frame = frame[frame["timestamp"] >= pd.Timestamp(since)]
    if model is not None and MODEL in frame:
        frame = frame[frame[MODEL] == model]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# The tests


def _numbers(values: Any) -> np.ndarray:
    array = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def numeric_drift(served: Any, reference: Any) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test; the effect is the KS statistic (the largest gap between the two CDFs)."""
    from scipy.stats import ks_2samp

    served, reference = _numbers(served), _numbers(reference)
    result = ks_2samp(served, reference)
    return {"test": "Kolmogorov-Smirnov", "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "effect": float(result.statistic), "served": _summary(served), "reference": _summary(reference)}


def _summary(values: np.ndarray) -> dict[str, float]:
    quartiles = np.percentile(values, [25, 50, 75]) if len(values) else [float("nan")] * 3
    return {"rows": int(len(values)), "mean": round(float(np.mean(values)), 6) if len(values) else float("nan"),
            "p25": round(float(quartiles[0]), 6), "median": round(float(quartiles[1]), 6),
            "p75": round(float(quartiles[2]), 6)}


def share_drift(served: Sequence[str], reference: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Chi-square test of homogeneity of the label counts; the effect is the total variation distance of the shares
    (half the sum of the absolute share differences: 0 = the same shares, 1 = no label in common)."""
    from scipy.stats import chi2_contingency

    names = list(dict.fromkeys([*labels, *served, *reference]))
    counts = np.array([[list(served).count(n) for n in names], [list(reference).count(n) for n in names]])
    used = counts.sum(axis=0) > 0
    counts = counts[:, used]
    names = [n for n, keep in zip(names, used, strict=True) if keep]
    shares = counts / counts.sum(axis=1, keepdims=True)
    if counts.shape[1] < 2:  # one label everywhere: nothing to test, and nothing moved
        statistic, p_value = 0.0, 1.0
    else:
        statistic, p_value = (float(v) for v in chi2_contingency(counts)[:2])
    return {"test": "chi-square", "statistic": statistic, "p_value": p_value,
            "effect": round(float(np.abs(shares[0] - shares[1]).sum() / 2), 6),
            "served": {n: round(float(s), 6) for n, s in zip(names, shares[0], strict=True)},
            "reference": {n: round(float(s), 6) for n, s in zip(names, shares[1], strict=True)}}


def compare(served: pd.DataFrame, reference_outputs: pd.DataFrame, reference_inputs: pd.DataFrame,
            labels: Sequence[str], settings: MonitorParams) -> dict[str, Any]:
    """Each signal's test and whether it drifted; the verdict is drift when any signal did.

    Args:
        served: the window of logged rows (label, probability and the input signals).
        reference_outputs: the champion's predictions on the test split (label, probability).
        reference_inputs: the input signals of the train and test splits.
        labels: the model's labels.
        settings: the monitor block (alpha, min_effect, min_rows).
    """
    signals: dict[str, dict[str, Any]] = {}
    if len(served) < settings.min_rows:
        return {"drift": False, "enough_rows": False, "served_rows": int(len(served)), "signals": signals,
                "reason": f"{len(served)} served rows in the window, fewer than monitor.min_rows "
                          f"{settings.min_rows}: too few to test; widen monitor.window_hours or wait for traffic"}
    signals["predicted label shares"] = share_drift(served[LABEL].astype(str).tolist(),
                                                    reference_outputs[LABEL].astype(str).tolist(), labels)
    signals["confidence"] = numeric_drift(served[PROBABILITY], reference_outputs[PROBABILITY])
    for name in reference_inputs.columns:
        if name in served:
            signals[name] = numeric_drift(served[name], reference_inputs[name])
    alpha = settings.alpha / len(signals)
    for result in signals.values():
        result["drift"] = bool(result["p_value"] < alpha and result["effect"] >= settings.min_effect)
    drifted = [name for name, result in signals.items() if result["drift"]]
    reason = (f"drift in {', '.join(drifted)}" if drifted else "no signal drifted") + (
        f" (p < {alpha:.2g} = monitor.alpha {settings.alpha} over {len(signals)} signals, and effect >= "
        f"monitor.min_effect {settings.min_effect})")
    return {"drift": bool(drifted), "enough_rows": True, "served_rows": int(len(served)), "signals": signals,
            "drifted": drifted, "reason": reason}


# ---------------------------------------------------------------------------------------------------------------
# The reference and the run


def reference_frames(params: Params, predictor: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the predictor's label and probability on the test split, the input signals of the train and test splits)."""
    from components import modalities
    from components.io import read_split, split_path

    prepared = Path(params.paths.prepared)
    modality = modalities.for_prepared(prepared, params)
    splits = {}
    for split in ("train", "test"):
        path = split_path(prepared, split)
        if not path.is_file():
            raise StageError(f"{path} not found: `tuneline monitor` compares served rows with the prepared splits; "
                             "run the pipeline first (`make run`)")
        splits[split] = modality.inputs(read_split(prepared, split), prepared)
    probabilities = predictor.predict_proba(splits["test"], 64)
    outputs = pd.DataFrame({LABEL: [predictor.labels[i] for i in probabilities.argmax(axis=1)],
                            PROBABILITY: probabilities.max(axis=1)})
    inputs = pd.DataFrame(modality.signals(splits["train"] + splits["test"], predictor))
    return outputs, inputs


def run(params: Params, root: Path, model_tag: str | None = None, hours: float | None = None) -> dict[str, Any]:
    """Compare the champion's (or model_tag's) served rows of the window with its reference; write the verdict.

    Args:
        params: the project's params (paths relative to `root`).
        root: the project root; monitor.dir, the prepared splits and the outputs resolve against it.
        model_tag: the stored model whose rows are compared (default: the champion).
        hours: the window (default: monitor.window_hours; None there = every logged row).
    """
    import contextlib
    import os

    import bentoml

    from components import modalities, registry
    from components.io import write_json

    settings = params.monitor
    name = params.package.model_name
    tag = model_tag or registry.champion(name)
    if tag is None:
        raise StageError(f"no {name} champion to monitor; run the pipeline (`make run`) and serve it first")
    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise StageError(f"no model {tag!r} in the BentoML store at {os.environ.get('BENTOML_HOME')}; "
                         "`tuneline models` lists them") from None
    tag = str(stored.tag)
    hours = settings.window_hours if hours is None else hours
    now = datetime.datetime.now()
    since = now - datetime.timedelta(hours=hours) if hours is not None else None
    folder = root / settings.dir
    served = served_rows(folder, since, tag)
    outputs = inputs = pd.DataFrame()
    labels: list[str] = []
    if len(served) >= settings.min_rows:  # too few rows need no reference: compare says so without one
        predictor = modalities.for_model(stored.path, params).load_predictor(Path(stored.path))
        labels = predictor.labels
        with contextlib.chdir(root):  # params' paths are relative to the project root, as DVC runs the stages
            outputs, inputs = reference_frames(params, predictor)
    verdict = {"model": tag, "checked_at": now.isoformat(timespec="seconds"),
               "window": {"hours": hours, "since": since.isoformat(timespec="seconds") if since else None,
                          "log_dir": str(folder)},
               "reference": {"test_rows": int(len(outputs)), "train_and_test_rows": int(len(inputs))},
               **compare(served, outputs, inputs, labels, settings)}
    write_json(root / settings.verdict, verdict)
    write_report(root / settings.report, verdict)
    return verdict


def write_report(path: Path, verdict: Mapping[str, Any]) -> None:
    """A self-contained HTML page: the verdict, then each signal's test and its served and reference figures."""
    escape = html.escape
    rows = []
    for name, result in verdict["signals"].items():
        rows.append(
            f"<tr class={'drift' if result['drift'] else 'ok'}><td>{escape(name)}</td><td>{escape(result['test'])}</td>"
            f"<td>{result['statistic']:.4g}</td><td>{result['p_value']:.3g}</td><td>{result['effect']:.4f}</td>"
            f"<td>{'DRIFT' if result['drift'] else 'ok'}</td><td>{escape(json.dumps(result['served']))}</td>"
            f"<td>{escape(json.dumps(result['reference']))}</td></tr>")
    body = "\n".join(rows) or "<tr><td colspan=8>no test ran</td></tr>"
    window = verdict["window"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tuneline monitor: {escape(verdict['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}} tr.drift{{background:#fdd}}
.verdict{{font-size:20px;font-weight:bold}}</style></head><body>
<h1>Served traffic of {escape(verdict['model'])}</h1>
<p class="verdict">{'DRIFT' if verdict['drift'] else 'no drift'}: {escape(verdict['reason'])}</p>
<p>{verdict['served_rows']} served rows since {escape(str(window['since'] or 'the first logged row'))}
(from {escape(window['log_dir'])}), checked {escape(verdict['checked_at'])}; reference: the model's predictions on
{verdict['reference']['test_rows']} test rows, the inputs of {verdict['reference']['train_and_test_rows']} train and
test rows.</p>
<table><tr><th>signal</th><th>test</th><th>statistic</th><th>p-value</th><th>effect</th><th>verdict</th>
<th>served</th><th>reference</th></tr>
{body}
</table></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


def with_log_dir(params: Params, folder: str | None) -> Params:
    """params with monitor.dir replaced by `folder` (the TUNELINE_MONITOR_DIR a server was started with), if any."""
    if not folder:
        return params
    return params.model_copy(update={"monitor": params.monitor.model_copy(update={"dir": folder})})
