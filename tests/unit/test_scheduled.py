"""flows/scheduled.py's plain helpers: notifications, the failure message, what a run commits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import parse_params
from components.io import write_json
from flows.pipeline import StageFailed
from flows.scheduled import failure_message, notify, record_paths


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_notify_appends_a_json_line_and_survives_a_dead_webhook(project: Path, free_port: int) -> None:
    params = parse_params({"schedule": {"notify_log": "logs/notes.jsonl",
                                        "notify_webhook": f"http://127.0.0.1:{free_port}/hook"}})
    notify(params, {"event": "quarantined", "file": "a.csv"})
    notify(params, {"event": "run_failed"})

    lines = [json.loads(line) for line in Path("logs/notes.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines] == ["quarantined", "run_failed"]
    assert lines[0]["file"] == "a.csv" and lines[0]["time"].endswith("+00:00")


def test_a_refusal_is_reported_with_the_gates_reason(project: Path) -> None:
    params = parse_params({})
    words = "stage 'package' failed (failed to run: python -m components.package, exited with 1)"
    package = StageFailed(words, "package")
    assert failure_message(params, package) == words  # no verdict yet: the stage's own words
    write_json(params.paths.verdict, {"decision": "refuse", "passed": False, "reason": "macro f1 below 0.5"})
    message = failure_message(params, package)
    assert "refused" in message and "macro f1 below 0.5" in message and "champion stays" in message
    assert failure_message(params, StageFailed("stage 'train' failed", "train")) == "stage 'train' failed"


def test_a_run_commits_only_what_exists_of_its_records(project: Path) -> None:
    params = parse_params({})
    for path in ("dvc.lock", "params.yaml", "data/raw/accepted.dvc", "metrics/test.json", "runs/r.json"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("x")
    assert record_paths(params) == ["dvc.lock", "data/raw/accepted.dvc", "params.yaml", "metrics", "runs"]
