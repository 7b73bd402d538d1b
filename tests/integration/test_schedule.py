"""Scheduled retraining through a real Prefect server: `tuneline schedule` serves the deployment, the tests trigger
runs through the Prefect API (run_deployment), not the clock. Then a recorded run is rebuilt in a fresh clone from
the DVC remote, and prefect.yaml's work-pool deployment is registered as a user would.

One project for the module, with its own BentoML store, DVC remote and webhook; the tests run in file order, each
starting from where the previous one left the project.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import dvc, make_project, set_params, sh

DEPLOYMENT = "tuneline-scheduled/tuneline-retrain"
NEW_ROWS = 30


class Hooks(http.server.BaseHTTPRequestHandler):
    """A webhook on 127.0.0.1 that keeps every JSON body POSTed to it."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", 0))
        Hooks.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/tuneline"
    server.shutdown()


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory, project_root: Path, prefect_harness,
              webhook: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh project served by `tuneline schedule` against the session's Prefect server; its path and env."""
    from prefect.settings import PREFECT_API_URL

    work = tmp_path_factory.mktemp("scheduled")
    project = make_project(work / "project", project_root)
    shutil.copy2(project_root / "prefect.yaml", project / "prefect.yaml")
    # a dozen optimiser steps: this module trains twice (the scheduled run, and its rebuild in a clone)
    # and a search of two trials (the default recipe and one more) before each retraining
    set_params(project, {"train": {"max_steps": 12}, "tune": {"trials": 2, "heartbeat_s": 1},
                         "schedule": {"remote": str(work / "dvc-remote"), "notify_webhook": webhook,
                                      "io_retry_delay_s": 0.5, "tune": True}})
    assert sh(project, "git", "add", "-A").returncode == 0
    assert sh(project, "git", "commit", "-q", "-m", "scheduled runs to a remote").returncode == 0
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "BENTOML_HOME": str(work / "bentoml"),
                        "TUNELINE_MONITOR_DIR": str(project / "monitoring")}  # where its server would log
    log_path = work / "schedule.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "tuneline"), "--root", str(project),
                                    "schedule"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_deployment(process, log_path)
        yield project, env
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def split_texts(project: Path) -> set[str]:
    """The texts of the project's prepared test split."""
    path = project / "data" / "prepared" / "test.jsonl"
    return {json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def wait_for_deployment(process: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tuneline schedule exited with {process.returncode}:\n{log_path.read_text()}")
        with get_client(sync_client=True) as client:
            try:
                deployment = client.read_deployment_by_name(DEPLOYMENT)
            except Exception:  # noqa: BLE001 - not registered yet
                deployment = None
        if deployment is not None:
            assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 3 * * *"
            assert deployment.global_concurrency_limit.limit == 1  # one run at a time; the next waits
            assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
            return
        time.sleep(1)
    pytest.fail(f"the deployment was not registered within {timeout_s} s:\n{log_path.read_text()}")


def trigger(parameters: dict | None = None) -> object:
    """Start a run of the deployment through the Prefect API and wait for its end; the flow run."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(DEPLOYMENT, parameters=parameters or {}, timeout=900, poll_interval=2)
    assert flow_run.state is not None and flow_run.state.is_final(), flow_run.state
    return flow_run


def latest_record(project: Path) -> dict:
    records = sorted((project / "runs").glob("*.json"), key=lambda path: path.stat().st_mtime)
    assert records, "no run record was written"
    return json.loads(records[-1].read_text())


def champion(project: Path, env: dict[str, str]) -> str | None:
    registry = Path(env["BENTOML_HOME"]) / "tuneline" / "tuneline-text.json"
    return json.loads(registry.read_text())["champion"] if registry.is_file() else None


def new_labelled_rows(project_root: Path, count: int) -> str:
    """`count` corpus rows made into texts the data set does not hold yet, as CSV."""
    import pandas as pd

    from components.modalities.text.source import BUILTIN_LABEL, BUILTIN_TEXT, builtin_corpus_path

    corpus = pd.read_csv(builtin_corpus_path()).sample(n=count, random_state=5)
    frame = pd.DataFrame({"text": [f"{text} (a new review, number {i})" for i, text in
                                   enumerate(corpus[BUILTIN_TEXT])], "label": corpus[BUILTIN_LABEL].tolist()})
    return frame.to_csv(index=False)


def snapshot(project: Path, env: dict[str, str]) -> dict:
    """What a run that takes nothing must not change: dvc.lock, the accepted rows, the champion, git's HEAD."""
    return {"lock": (project / "dvc.lock").read_bytes(),
            "accepted": (project / "data/raw/accepted.dvc").read_bytes(),
            "champion": champion(project, env),
            "head": sh(project, "git", "rev-parse", "HEAD").stdout,
            "models": sorted(p.name for p in (Path(env["BENTOML_HOME"]) / "models" / "tuneline-text").iterdir())}


def test_a_scheduled_run_takes_new_rows_retrains_promotes_pushes_and_records(scheduled, project_root: Path) -> None:
    project, env = scheduled
    # the splits before any row arrives (data.split hash, params.yaml's default): every test row must stay in test
    prepared = dvc(project, "repro", "prepare", env=env)
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-2000:]
    earlier_test = split_texts(project)
    incoming = project / "data" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "batch-1.csv.part").write_text(new_labelled_rows(project_root, NEW_ROWS))
    (incoming / "batch-1.csv.part").rename(incoming / "batch-1.csv")

    flow_run = trigger()

    assert flow_run.state.is_completed(), flow_run.state
    record = latest_record(project)
    assert record["flow_run_id"] == str(flow_run.id)
    assert record["outcome"] == "retrained" and "train" in record["stages_run"]
    assert [item["new_rows"] for item in record["incoming"]["taken"]] == [NEW_ROWS]
    assert not list(incoming.glob("*.csv")), "the taken file is still waiting"
    now_test = split_texts(project)
    assert earlier_test and earlier_test <= now_test and len(now_test) > len(earlier_test)  # it only grew
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert "1 accepted file(s)" in summary["source"] and f"({NEW_ROWS} rows)" in summary["source"]
    # a new promoted champion: this run's model
    assert record["verdict"]["decision"] == "promote"
    assert record["model_tag"] and record["champion"] == record["model_tag"] == champion(project, env)
    # the record: data version (accepted rows and prepared splits), params, metrics, code revision
    assert set(record["data_version"]) == {"data/raw/accepted", "data/prepared", "data/augmented"}
    # the search ran on the new data before training; its best params were trained if they beat the default
    tuned = record["tune"]
    assert tuned["study"].startswith("tuneline-text-") and tuned["trials"]["COMPLETE"] + tuned["trials"]["PRUNED"] == 2
    assert tuned["applied"] == (not tuned["best"]["default"] and tuned["best"]["val_macro_f1"] >
                                tuned["baseline"]["val_macro_f1"])
    trained = tuned["best"]["params"] if tuned["applied"] else {}
    assert record["params"]["train"]["learning_rate"] == trained.get("train.learning_rate", 1.0e-4)
    test_metrics = json.loads((project / "metrics/test.json").read_text())["model"]
    assert record["metrics"]["macro"] == test_metrics["macro"]
    assert record["code_revision"] != "unknown" and not record["code_revision"].endswith("+dirty")
    # committed and tagged, with everything the reproduction needs
    tagged = sh(project, "git", "show", "--name-only", "--format=%s", record["git_tag"]).stdout
    for path in ("dvc.lock", "data/raw/accepted.dvc", "metrics/test.json", ".dvc/config"):
        assert path in tagged, tagged
    assert sh(project, "git", "status", "--porcelain", "--untracked-files=no").stdout == ""
    # pushed: the remote holds every versioned output, and the workspace matches dvc.lock
    assert record["remote"] == str(project.parent / "dvc-remote")
    cloud = dvc(project, "status", "--cloud", env=env)
    assert cloud.returncode == 0 and "in sync" in cloud.stdout, cloud.stdout + cloud.stderr
    local = dvc(project, "status", env=env)
    assert "up to date" in local.stdout, local.stdout


def test_a_bad_file_is_quarantined_with_its_report_and_nothing_else_changes(scheduled, webhook: str) -> None:
    project, env = scheduled
    before = snapshot(project, env)
    Hooks.received.clear()
    (project / "data/incoming/bad.csv").write_text('text,label\n"a fine text",fresh\n"",rotten\n"odd",awful\n')

    flow_run = trigger()

    assert flow_run.state.is_completed(), flow_run.state
    record = latest_record(project)
    assert record["outcome"] == "no change" and record["stages_run"] == []
    [item] = record["incoming"]["quarantined"]
    assert item["file"] == "bad.csv" and "unknown_label" in item["reason"] and "null_text" in item["reason"]
    moved, report = Path(project / item["moved_to"]), json.loads((project / item["report"]).read_text())
    assert moved.read_text().startswith("text,label") and not (project / "data/incoming/bad.csv").exists()
    assert report["validation"]["success"] is False and "awful" in json.dumps(report["validation"])
    assert snapshot(project, env) == before
    assert [event["event"] for event in Hooks.received] == ["quarantined"]
    assert Hooks.received[0]["file"] == "bad.csv"
    notes = (project / "logs/notifications.jsonl").read_text().splitlines()
    assert json.loads(notes[-1])["event"] == "quarantined"


def test_a_run_with_nothing_new_trains_nothing(scheduled) -> None:
    project, env = scheduled
    before = snapshot(project, env)

    flow_run = trigger()

    assert flow_run.state.is_completed(), flow_run.state
    record = latest_record(project)
    assert record["outcome"] == "no change" and record["stages_run"] == [] and record["git_tag"] is None
    assert snapshot(project, env) == before
    print(f"no-change scheduled run: {record['duration_s']} s inside the flow, "
          f"{(flow_run.end_time - flow_run.start_time).total_seconds():.1f} s from start to end")


def test_a_run_records_the_drift_of_the_served_traffic_and_notifies(scheduled, webhook: str) -> None:
    """Rows as the service logs them (test_monitor_served.py has a real server write them): texts far longer than any the
    champion was trained or tested on. The run records the drift verdict and notifies; nothing else changes."""
    import datetime

    project, env = scheduled
    before = snapshot(project, env)
    log = project / "monitoring/tuneline_predictions/data/data.0.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now().isoformat()
    log.write_text("".join(json.dumps({"model": before["champion"], "length": 3000.0 + i, "unknown_tokens": 0.0,
                                       "label": "plot", "probability": 0.99, "timestamp": now,
                                       "request_id": str(i), "trace_id": "0"}) + "\n" for i in range(150)))
    Hooks.received.clear()
    try:
        flow_run = trigger()
    finally:
        log.unlink()  # the runs after this one see no traffic
    assert flow_run.state.is_completed(), flow_run.state
    record = latest_record(project)
    assert record["outcome"] == "no change" and record["monitor"]["drift"] is True, record["monitor"]
    assert record["monitor"]["model"] == before["champion"] and record["monitor"]["served_rows"] == 150
    assert "length" in record["monitor"]["drifted"]
    assert [event["event"] for event in Hooks.received] == ["drift"]
    assert json.loads((project / "metrics/monitor.json").read_text())["drift"] is True
    assert snapshot(project, env) == before


def test_a_failed_run_notifies_the_webhook(scheduled, tmp_path: Path) -> None:
    project, env = scheduled
    # a folder that is no DVC project, with params whose channels point at the test's webhook and a log file
    broken = tmp_path / "not-a-project"
    broken.mkdir()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["schedule"]["notify_log"] = str(tmp_path / "notes.jsonl")
    (broken / "params.yaml").write_text(yaml.safe_dump(params))
    Hooks.received.clear()

    flow_run = trigger({"root": str(broken)})

    assert flow_run.state.is_failed(), flow_run.state
    deadline = time.monotonic() + 60  # the hook runs after the run is marked failed, so it may lag behind the API
    while not Hooks.received and time.monotonic() < deadline:
        time.sleep(0.5)
    [event] = Hooks.received
    assert event["event"] == "run_failed" and event["flow_run_id"] == str(flow_run.id)
    assert json.loads((tmp_path / "notes.jsonl").read_text())["event"] == "run_failed"


def test_a_recorded_run_is_rebuilt_in_a_fresh_clone_with_identical_metrics(scheduled, tmp_path: Path) -> None:
    project, env = scheduled
    [record] = [json.loads(p.read_text()) for p in (project / "runs").glob("*.json")
                if json.loads(p.read_text())["outcome"] == "retrained"]
    clone = tmp_path / "clone"
    assert subprocess.run(["git", "clone", "-q", str(project), str(clone)], capture_output=True).returncode == 0
    assert sh(clone, "git", "checkout", "-q", record["git_tag"]).returncode == 0
    clone_env = env | {"BENTOML_HOME": str(tmp_path / "bentoml")}

    pulled = dvc(clone, "pull", env=clone_env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    status = dvc(clone, "status", env=clone_env)
    assert "up to date" in status.stdout, status.stdout  # every output of the run came back from the remote
    rebuilt = dvc(clone, "repro", "--force", env=clone_env)  # and rebuilding it from the pulled data gives ...
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]

    metrics = json.loads((clone / "metrics/test.json").read_text())
    assert metrics["model"]["macro"] == record["metrics"]["macro"]  # ... identical metrics
    assert metrics["model"]["accuracy"] == record["metrics"]["accuracy"]
    assert metrics["baseline"]["macro"]["f1"] == record["metrics"]["baseline_macro_f1"]
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert {out["path"]: out["md5"] for out in lock["stages"]["prepare"]["outs"]} == {
        "data/prepared": record["data_version"]["data/prepared"]}
    # the very same weights: the retrained model folder hashes as the recorded run's did
    recorded = yaml.safe_load(sh(project, "git", "show", f"{record['git_tag']}:dvc.lock").stdout)
    [model] = [out for out in recorded["stages"]["train"]["outs"] if out["path"] == "models/candidate"]
    assert [out["md5"] for out in lock["stages"]["train"]["outs"] if out["path"] == "models/candidate"] == [
        model["md5"]]


def test_prefect_yaml_deploys_the_same_deployment_to_a_process_work_pool(scheduled, project_root: Path) -> None:
    project, env = scheduled
    document = yaml.safe_load((project_root / "prefect.yaml").read_text())
    params = yaml.safe_load((project_root / "params.yaml").read_text())["schedule"]
    [deployment] = document["deployments"]
    assert deployment["name"] == params["deployment"]
    assert deployment["schedules"] == [{"cron": params["cron"], "timezone": params["timezone"]}]
    assert deployment["entrypoint"] == "flows/scheduled.py:scheduled_run"
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}

    prefect = str(Path(sys.executable).parent / "prefect")
    pool = sh(project, prefect, "work-pool", "create", "tuneline-process", "--type", "process", env=env)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deployed = sh(project, prefect, "--no-prompt", "deploy", "--name", "tuneline-retrain", env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        registered = client.read_deployment_by_name(DEPLOYMENT)
    assert registered.work_pool_name == "tuneline-process" and registered.global_concurrency_limit.limit == 1
    assert registered.schedules[0].schedule.cron == params["cron"]
