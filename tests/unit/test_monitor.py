"""The drift tests and the reading of BentoML's monitoring logs (components/monitor.py)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import MonitorParams
from components.monitor import MONITOR_NAME, compare, numeric_drift, served_rows, share_drift

LABELS = ["fresh", "plot", "rotten"]


def frames(rng: np.random.Generator, rows: int, length_mean: float, shares: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"label": rng.choice(LABELS, size=rows, p=shares),
                         "probability": rng.uniform(0.5, 1.0, rows),
                         "length": rng.normal(length_mean, 20, rows)})


def test_the_same_distribution_does_not_drift_and_a_shifted_one_does() -> None:
    rng = np.random.default_rng(0)
    reference = frames(rng, 2_000, 120, [0.4, 0.2, 0.4])
    settings = MonitorParams(min_rows=100)
    same = compare(frames(rng, 400, 120, [0.4, 0.2, 0.4]), reference, reference[["length"]], LABELS, settings)
    assert same["drift"] is False and same["enough_rows"] is True
    assert set(same["signals"]) == {"predicted label shares", "confidence", "length"}

    shifted = compare(frames(rng, 400, 60, [0.1, 0.8, 0.1]), reference, reference[["length"]], LABELS, settings)
    assert shifted["drift"] is True and set(shifted["drifted"]) == {"predicted label shares", "length"}
    assert shifted["signals"]["predicted label shares"]["served"]["plot"] > 0.7


def test_a_significant_but_tiny_shift_is_not_drift() -> None:
    """With enough rows a KS test finds any shift; min_effect keeps a negligible one from being called drift."""
    rng = np.random.default_rng(1)
    reference = rng.normal(100, 20, 200_000)
    served = rng.normal(101.5, 20, 200_000)
    result = numeric_drift(served, reference)
    assert result["p_value"] < 1e-6 and result["effect"] < 0.05
    table = pd.DataFrame({"label": ["fresh"] * len(served), "probability": 0.9, "length": served})
    ref = pd.DataFrame({"label": ["fresh"] * len(reference), "probability": 0.9, "length": reference})
    verdict = compare(table, ref, ref[["length"]], LABELS, MonitorParams(min_effect=0.1))
    assert verdict["drift"] is False and verdict["signals"]["length"]["drift"] is False


def test_label_shares_with_one_label_everywhere_do_not_drift() -> None:
    result = share_drift(["fresh"] * 50, ["fresh"] * 80, LABELS)
    assert result["p_value"] == 1.0 and result["effect"] == 0.0


def test_too_few_rows_give_no_verdict() -> None:
    rng = np.random.default_rng(2)
    reference = frames(rng, 500, 120, [0.4, 0.2, 0.4])
    verdict = compare(reference.head(10), reference, reference[["length"]], LABELS, MonitorParams(min_rows=100))
    assert verdict["drift"] is False and verdict["enough_rows"] is False and "monitor.min_rows" in verdict["reason"]


def test_served_rows_reads_every_worker_and_rotated_file_skips_a_cut_line_and_filters(tmp_path: Path) -> None:
    data = tmp_path / MONITOR_NAME / "data"
    data.mkdir(parents=True)
    now = datetime.datetime.now()

    def row(hours_ago: float, model: str) -> str:
        return json.dumps({"timestamp": (now - datetime.timedelta(hours=hours_ago)).isoformat(), "model": model,
                           "label": "fresh", "probability": 0.9, "length": 10.0, "request_id": "1"})

    (data / "data.0.log").write_text(row(1, "m:a") + "\n" + row(2, "m:b") + "\n" + '{"timestamp": "2026-')
    (data / "data.1.log").write_text(row(0.5, "m:a") + "\n")
    (data / "data.0.log.2026-12-01").write_text(row(72, "m:a") + "\n")
    every = served_rows(tmp_path)
    assert len(every) == 4 and every["timestamp"].is_monotonic_increasing
    recent = served_rows(tmp_path, since=now - datetime.timedelta(hours=24), model="m:a")
    assert len(recent) == 2 and set(recent["model"]) == {"m:a"}
    assert served_rows(tmp_path / "nowhere").empty
