"""The scheduled run: take new labelled files, retrain through DVC when something changed, push, commit, record.

One run of `tuneline-scheduled` (served on schedule.cron by `make schedule`, or on a work pool by prefect.yaml):

1. take_incoming: every complete file in paths.incoming is validated alone (components/ingest.py); the new rows of
   a good one go to paths.accepted and `dvc add` versions them; a bad one goes to paths.quarantine with its report,
   and a notification says so. Nothing else changes for a bad file.
2. watch_served: `tuneline monitor` on the champion's served rows of monitor.window_hours (components/monitor.py);
   its verdict goes into the record, and a drift verdict is a notification. Monitoring never fails the run.
3. If DVC reports nothing stale (no new rows, same params and code), the run ends here: no stage runs.
4. Otherwise the pipeline flow runs the stale stages (prepare ... package); the gate decides, package promotes.
   With schedule.tune, a search on the new data (components/tune.py, schedule.tune_timeout_s) runs after augment
   and its best params go into params.yaml when they beat the default recipe and the baseline on val.
5. push: `dvc push` of every versioned output to the DVC remote (schedule.remote; a local folder by default).
6. The run record (paths.runs/<run>.json: data version, params, metrics, verdict, model tag, champion, code
   revision, incoming files, the drift verdict) is written, and with schedule.commit it is committed with dvc.lock,
   the accepted rows' .dvc file and the metrics, and tagged `tuneline-run-<UTC time>`: `git checkout TAG && dvc
   pull && dvc repro` rebuilds that model.

I/O tasks retry with exponential backoff (schedule.io_retries, io_retry_delay_s); training never does. A failed run
notifies through schedule.notify_log and schedule.notify_webhook. The deployment runs one run at a time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from components.config import Params, load_params
from components.io import read_json
from flows.pipeline import StageFailed, pipeline

log = logging.getLogger(__name__)

FLOW_NAME = "tuneline-scheduled"
REMOTE_NAME = "tuneline"
TAG_PREFIX = "tuneline-run-"
LOCK_FILE = "dvc.lock"


# ---------------------------------------------------------------------------------------------------------------
# Notifications


def notify(params: Params, event: dict[str, Any]) -> None:
    """Send `event` (JSON) to the configured channels: a line in schedule.notify_log, a POST to notify_webhook.

    A channel that fails is logged and skipped: a notification never fails the run it reports on.
    """
    event = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **event}
    if params.schedule.notify_log:
        path = Path(params.schedule.notify_log)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(event, sort_keys=True) + "\n")
        except OSError as exc:
            log.error("could not write the notification to %s: %s", path, exc)
    if params.schedule.notify_webhook:
        import httpx

        try:
            httpx.post(params.schedule.notify_webhook, json=event, timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            log.error("could not POST the notification to %s: %s", params.schedule.notify_webhook, exc)


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_failure/on_crashed hook: tell the configured channels that a scheduled run failed, and why."""
    root = Path(flow_run.parameters.get("root", ".")).resolve()
    try:
        with contextlib.chdir(root):
            params = load_params()
            notify(params, {"event": "run_failed", "flow_run": flow_run.name, "flow_run_id": str(flow_run.id),
                            "state": state.name, "message": state.message or "", "project": str(root)})
    except Exception as exc:  # noqa: BLE001 - a hook that raises would hide the run's own failure
        log.error("the failure notification could not be sent: %s", exc)


# ---------------------------------------------------------------------------------------------------------------
# Tasks


@task
def take_incoming(params: Params) -> dict[str, Any]:
    """Validate and take the incoming files (components/ingest.py); what was taken and what was quarantined."""
    from components import ingest

    return ingest.ingest(params).to_json()


@task
def track_accepted(params: Params) -> None:
    """`dvc add` the accepted rows' folder, so this version of it is in the DVC cache and its .dvc file."""
    from components import ingest

    ingest.track(params.paths.accepted)


def untracked_rows(params: Params) -> bool:
    """Whether paths.accepted holds rows its .dvc file does not record yet (a new folder, or a file not added)."""
    from dvc.repo import Repo

    accepted = Path(params.paths.accepted)
    if not accepted.is_dir():
        return False
    if not Path(f"{accepted}.dvc").is_file():
        return True
    with Repo(".") as repo:
        return bool(repo.status(targets=[f"{accepted}.dvc"]))


def stale_stages() -> list[str]:
    """The pipeline stages `dvc status` reports as changed (empty: a run would do nothing)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return sorted(repo.status())


def configure_remote(url: str | None) -> str | None:
    """Make `url` the default DVC remote (named tuneline) and return it; None keeps what is configured (or none).

    A relative folder is taken from the project root and stored as an absolute path, so a clone elsewhere on this
    machine pulls from the same place.
    """
    from dvc.repo import Repo

    with Repo(".") as repo:
        if url is None:
            default = repo.config.get("core", {}).get("remote")
            return repo.config["remote"][default]["url"] if default else None
        if "://" not in url:
            url = str(Path(url).resolve())
            Path(url).mkdir(parents=True, exist_ok=True)
        with repo.config.edit() as config:
            config["remote"].setdefault(REMOTE_NAME, {})["url"] = url
            config["core"]["remote"] = REMOTE_NAME
    return url


@task
def push(params: Params) -> str | None:
    """`dvc push` every versioned output (data, accepted rows, model) to the remote; the remote's URL, or None."""
    from dvc.repo import Repo

    url = configure_remote(params.schedule.remote)
    if url is None:
        get_run_logger().warning("no DVC remote (schedule.remote is null and none is configured): nothing pushed")
        return None
    with Repo(".") as repo:
        pushed = repo.push()
    get_run_logger().info("dvc push: %s file(s) to %s", pushed, url)
    return url


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, timeout=120)


def record_paths(params: Params) -> list[str]:
    """What a run commits: dvc.lock, the DVC config, the accepted rows' .dvc file, params, the packaged model's record,
    metrics, reports and run records (the outputs DVC does not cache), so a clone at the run's tag is complete."""
    accepted = Path(params.paths.accepted)
    candidates = [LOCK_FILE, ".dvc/config", ".dvc/.gitignore", f"{accepted}.dvc", str(accepted.parent / ".gitignore"),
                  "params.yaml", params.paths.packaged, str(Path(params.paths.metrics).parent),
                  str(Path(params.paths.validation).parent), params.paths.runs]
    return [path for path in dict.fromkeys(candidates) if Path(path).exists()]


@task
def watch_served(params: Params, root: Path) -> dict[str, Any] | None:
    """The drift verdict on the champion's served rows of the window (None before any champion); an error that stops
    the comparison (no prepared splits, say) is recorded, not raised: watching never fails the run."""
    import os

    from components import monitor, registry
    from components.stage import StageError

    if registry.champion(params.package.model_name) is None:
        return None
    try:
        verdict = monitor.run(monitor.with_log_dir(params, os.environ.get("TUNELINE_MONITOR_DIR")), root)
    except StageError as exc:
        get_run_logger().warning("served traffic not checked: %s", exc)
        return {"error": str(exc)}
    return {**{key: verdict.get(key) for key in ("model", "drift", "enough_rows", "served_rows", "drifted",
                                                  "reason")},
            "report": params.monitor.report, "verdict": params.monitor.verdict}


@task
def commit(params: Params, message: str, tag: str) -> str | None:
    """Commit the run's records (record_paths) and tag the commit; the commit's hash, or None outside git."""
    if _git("rev-parse", "--git-dir").returncode != 0:
        get_run_logger().warning("not a git repository: the run is recorded in %s but not committed",
                                 params.paths.runs)
        return None
    paths = record_paths(params)
    for args in (("add", "--", *paths), ("commit", "--quiet", "--no-verify", "-m", message, "--", *paths),
                 ("tag", tag)):
        result = _git(*args)
        if result.returncode != 0 and not (args[0] == "commit" and "nothing" in result.stdout + result.stderr):
            raise RuntimeError(f"git {' '.join(args[:2])} failed: {(result.stderr or result.stdout).strip()}")
    return _git("rev-parse", "HEAD").stdout.strip()


@task
def tune_before_training(root: Path, study: str, timeout_s: float) -> dict[str, Any]:
    """schedule.tune: an Optuna study of its own on this run's prepared and augmented data (components/tune.py),
    within `timeout_s`; the best trial's params go into params.yaml when they beat both the default recipe (the
    study's trial 0) and the baseline on val. The pipeline then trains, evaluates and gates them as usual, and the
    run's commit holds the params that made its model."""
    from components import tune
    from components.config import PARAMS_FILE

    summary = tune.run(load_params(), timeout_s=timeout_s, study_name=study)
    best, baseline = summary["best"], summary["baseline"]
    outcome = tune.outcome(summary)
    applied = outcome == "apply"
    if applied:
        tune.apply(root / PARAMS_FILE, best["params"])
    get_run_logger().info("search %s: %s; %s", study, summary["trials"],
                          f"applied {best['params']}" if applied else f"params.yaml stays (best: {outcome})")
    return {"study": study, "trials": summary["trials"], "best": best, "baseline": baseline, "applied": applied}


# ---------------------------------------------------------------------------------------------------------------
# The record


def data_version(params: Params) -> dict[str, str]:
    """The DVC hashes of the data behind this run: the accepted rows (their .dvc file) and the prepared splits."""
    import yaml

    from components.package import data_version as lock_versions

    found = lock_versions(LOCK_FILE, [params.paths.prepared, params.paths.augmented])
    dvc_file = Path(f"{params.paths.accepted}.dvc")
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs", [])
        if outs and outs[0].get("md5"):
            found[params.paths.accepted] = outs[0]["md5"]
    return dict(sorted(found.items()))


def _read(path: str) -> Any:
    """A stage's JSON output, or None when the stage has not written it (it failed or never ran)."""
    return read_json(path) if Path(path).is_file() else None


def failure_message(params: Params, failure: StageFailed) -> str:
    """What a failed pipeline run tells the notification channels: the gate's reason when it refused the candidate."""
    verdict = _read(params.paths.verdict)
    if failure.stage == "package" and verdict and verdict.get("decision") == "refuse":
        return (f"the gate refused the candidate ({verdict.get('reason', '')}); nothing was packaged and the "
                f"champion stays; the checks are in {params.paths.verdict}")
    return str(failure)


def build_record(params: Params, run: dict[str, Any], intake: dict[str, Any], result: dict[str, Any] | None,
                 failure: str | None, watched: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run record: what came in, what ran, the data version, params, metrics, verdict, model and code, and the
    drift verdict on the served traffic."""
    from components import registry

    metrics = _read(params.paths.metrics)
    verdict = _read(params.paths.verdict)
    packaged = _read(params.paths.packaged)
    ran = [name for name, did in (result or {}).get("ran", {}).items() if did]
    model = metrics["model"] if metrics else None
    return {
        **run,
        "outcome": ("failed" if failure else "retrained" if "train" in ran else "updated" if ran else "no change"),
        "failure": failure,
        "incoming": intake,
        "stages_run": ran,
        "data_version": data_version(params),
        "params": params.model_dump(mode="json", by_alias=True),
        "metrics": {"accuracy": model["accuracy"], "macro": model["macro"],
                    "baseline_macro_f1": metrics["baseline"]["macro"]["f1"],
                    "test_rows": metrics["test_rows"]} if model else None,
        "verdict": {"decision": verdict.get("decision"), "passed": verdict.get("passed"),
                    "reason": verdict.get("reason")} if verdict else None,
        "model_tag": packaged["tag"] if packaged else None,
        "champion": registry.champion(params.package.model_name),
        "monitor": watched,
    }


def write_record(params: Params, record: dict[str, Any]) -> Path:
    """Write the record as paths.runs/<started>-<flow run name>.json and publish it as a Prefect artifact."""
    from components.io import write_json

    path = Path(params.paths.runs) / f"{record['started'].replace(':', '')}-{record['flow_run']}.json"
    write_json(path, record)
    lines = [f"# Tuneline scheduled run {record['flow_run']}: {record['outcome']}", ""]
    lines += [f"- {key}: `{record.get(key)}`" for key in ("started", "duration_s", "stages_run", "data_version",
                                                           "model_tag", "champion", "code_revision", "git_tag")]
    if record["verdict"]:
        lines.append(f"- verdict: **{record['verdict']['decision']}**: {record['verdict']['reason']}")
    if record["metrics"]:
        lines.append(f"- test macro-F1: {record['metrics']['macro']['f1']:.4f} "
                     f"(baseline {record['metrics']['baseline_macro_f1']:.4f})")
    if record.get("tune") and record["tune"]["best"]:
        best = record["tune"]["best"]
        lines.append(f"- search {record['tune']['study']}: best val macro-F1 {best['val_macro_f1']:.4f} "
                     f"({'the default recipe' if best['default'] else best['params']}), "
                     f"{'applied' if record['tune']['applied'] else 'not applied'}")
    if record.get("monitor") and "drift" in record["monitor"]:
        lines.append(f"- served traffic: **{'DRIFT' if record['monitor']['drift'] else 'no drift'}**: "
                     f"{record['monitor']['reason']} (report `{record['monitor']['report']}`)")
    for item in record["incoming"]["taken"]:
        lines.append(f"- took `{item['file']}`: {item['rows']} rows, {item['new_rows']} new")
    for item in record["incoming"]["quarantined"]:
        lines.append(f"- QUARANTINED `{item['file']}`: {item['reason']} (report `{item['report']}`)")
    create_markdown_artifact(key="tuneline-run", markdown="\n".join(lines),
                             description="Tuneline scheduled run: data, verdict, model, reproduction")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The flow


def search_first(params: Params, root: Path, stamp: str) -> dict[str, Any]:
    """The stages up to augment, then the search (tune_before_training); a search that cannot run fails the run."""
    from components.stage import StageError
    from flows.pipeline import reproduce_stage, stage_order

    stages = stage_order(root)
    for stage in stages[:stages.index("augment") + 1]:
        reproduce_stage(str(root), stage)
    try:
        return tune_before_training(root, f"{params.package.model_name}-{stamp}", params.schedule.tune_timeout_s)
    except StageError as exc:
        raise StageFailed(f"schedule.tune: the search could not run: {exc}", "tune") from None


@flow(name=FLOW_NAME, log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def scheduled_run(root: str = ".") -> dict[str, Any]:
    """Take incoming files, retrain if anything changed, push, commit and record; see the module docstring.

    Args:
        root: the project root (dvc.yaml, params.yaml, the git repository).

    Returns:
        The run record (also written to paths.runs and published as the `tuneline-run` artifact).
    """
    from prefect.runtime import flow_run

    from components.package import code_revision

    logger = get_run_logger()
    root_path = Path(root).resolve()
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    with contextlib.chdir(root_path):  # DVC and the stages resolve paths against the project root
        params = load_params()
        io_options = {"retries": params.schedule.io_retries,
                      "retry_delay_seconds": exponential_backoff(backoff_factor=params.schedule.io_retry_delay_s)}
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        run = {"flow_run": flow_run.get_name() or "local", "flow_run_id": flow_run.get_id(),
               "started": started.isoformat(timespec="seconds"), "code_revision": code_revision(root_path),
               "git_tag": None, "commit": None, "remote": None}

        intake = take_incoming.with_options(**io_options)(params)
        if intake["new_rows"] or untracked_rows(params):
            track_accepted.with_options(**io_options)(params)
        for item in intake["quarantined"]:
            notify(params, {"event": "quarantined", "file": item["file"], "reason": item["reason"],
                            "moved_to": item["moved_to"], "report": item["report"], "project": str(root_path)})
        watched = watch_served(params, root_path)
        if watched and watched.get("drift"):
            notify(params, {"event": "drift", "model": watched["model"], "reason": watched["reason"],
                            "report": watched["report"], "project": str(root_path)})
        stale = stale_stages()
        result, failure, tuned = None, None, None
        if stale:
            logger.info("stale in DVC: %s; running the pipeline", stale)
            try:
                if params.schedule.tune:
                    tuned = search_first(params, root_path, stamp)
                    params = load_params()  # with the applied params, for the record
                result = pipeline(root=str(root_path))
            except StageFailed as exc:
                failure = failure_message(params, exc)
        else:
            logger.info("nothing changed (no new rows, same params and code): no stage runs")

        if stale:
            run["remote"] = push.with_options(**io_options)(params)
        run["duration_s"] = round(time.monotonic() - clock, 1)
        record = build_record(params, run, intake, result, failure, watched) | {"tune": tuned}
        if stale and params.schedule.commit:
            record["git_tag"] = f"{TAG_PREFIX}{stamp}"
        path = write_record(params, record)
        if stale and params.schedule.commit:
            message = (f"Scheduled run {record['flow_run']}: {record['outcome']}, decision "
                       f"{(record['verdict'] or {}).get('decision', '-')}, model {record['model_tag'] or '-'}\n\n"
                       f"Data version {record['data_version']}; new rows {intake['new_rows']}; "
                       f"record {path}.")
            record["commit"] = commit.with_options(**io_options)(params, message, record["git_tag"])
        logger.info("run record: %s (%s)", path, record["outcome"])
        if failure:
            raise StageFailed(failure)
    return record


def serve_deployment(root: str | Path, params: Params) -> None:
    """Serve the scheduled deployment from this process until interrupted (SIGTERM or Ctrl-C pause its schedule).

    Needs a Prefect API (PREFECT_API_URL); `tuneline schedule` starts a local server when none is set.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    scheduled_run.serve(
        name=params.schedule.deployment,
        schedules=[Cron(params.schedule.cron, timezone=params.schedule.timezone)],
        parameters={"root": str(Path(root).resolve())},
        # one run at a time: a run the clock starts while one is going waits for it
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description="Tuneline: take data/incoming, retrain through DVC if anything changed, gate, push, record.",
        tags=["tuneline"],
    )
