"""`tuneline tune` on the session's trained tiny project: real Optuna studies in a real SQLite database, each trial
the real train stage (head-only trials on the frozen-feature cache, so they take seconds), with the test split moved
out of reach while the search runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import dvc, set_params

pytestmark = pytest.mark.slow

# Head-only trials (the backbone frozen, its features cached): a trial is seconds. Three evaluations of val each.
FAST = {"model": {"freeze_backbone": True}, "train": {"epochs": 3, "recipe": "fixed", "method": "finetune"}}


def tune_params(project: Path, study: str, trials: int, space: dict | None = None, default: bool = False) -> None:
    import yaml

    set_params(project, FAST | {"tune": {"trials": trials, "study": study, "heartbeat_s": 1, "timeout_s": 600,
                                         "pruner": "median", "include_default": default}})
    params = yaml.safe_load((project / "params.yaml").read_text())
    # the whole space replaced, not merged key by key with the shipped one
    params["tune"]["space"] = space or {"train.learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def test_split_away(project: Path, reproduced) -> Iterator[None]:
    """The test split moved out of the project while the search runs: reading it would fail the search. The data is
    first brought back to the tiny params (an earlier module may have prepared a bad file), as `make tune` does."""
    set_params(project, {})
    augmented = dvc(project, "repro", "augment")
    assert augmented.returncode == 0, augmented.stdout[-3000:] + augmented.stderr[-3000:]
    split = project / "data/prepared/test.jsonl"
    hidden = project.parent / f"{project.name}-test.jsonl.hidden"
    split.rename(hidden)
    try:
        yield
    finally:
        hidden.rename(split)
        set_params(project, {})


def study_of(project: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{project}/.tuneline/tune.db")


def tune_command(project: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "tuneline"), "--root", str(project), "tune", *args]


def test_a_search_prunes_a_hopeless_trial_never_reads_test_and_applies_the_best(project: Path,
                                                                               test_split_away) -> None:
    import optuna

    tune_params(project, "search", 3, {"train.learning_rate": {"choices": [0.01, 0.003, 1.0e-7]}})
    study = optuna.create_study(study_name="search", storage=f"sqlite:///{project}/.tuneline/tune.db",
                                direction="maximize")
    for rate in (0.01, 0.003, 1.0e-7):  # in this order: two reference curves, then one that cannot learn
        study.enqueue_trial({"train.learning_rate": rate})
    done = subprocess.run(tune_command(project, "--apply"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    trials = {t.params["train.learning_rate"]: t for t in study_of(project, "search").get_trials()}
    assert trials[0.01].state.name == trials[0.003].state.name == "COMPLETE"
    assert len(trials[0.01].user_attrs["curve"]) == 3  # one val evaluation per epoch
    hopeless = trials[1.0e-7]
    assert hopeless.state.name == "PRUNED" and len(hopeless.user_attrs["curve"]) == 1  # stopped at its first
    summary = json.loads((project / "metrics/tune.json").read_text())
    assert summary["trials"]["COMPLETE"] == 2 and summary["trials"]["PRUNED"] == 1
    best = max((trials[0.01], trials[0.003]), key=lambda t: t.value)
    assert summary["best"]["params"] == best.params and summary["best"]["val_macro_f1"] == round(best.value, 6)
    table = (project / "reports/tune.md").read_text()
    assert "| pruned |" in table and "the test split was not read" in table
    assert (project / "reports/tune_trials.csv").read_text().count("\n") == 4  # header and three trials
    applied = (project / "params.yaml").read_text()
    assert f"learning_rate: {best.params['train.learning_rate']}" in applied
    assert "best: trial" in done.stdout and "written into" in done.stdout


def test_two_workers_on_one_storage_split_the_trials(project: Path, test_split_away) -> None:
    tune_params(project, "shared", 4, default=True)
    workers = [subprocess.Popen(tune_command(project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    trials = study_of(project, "shared").get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    # Optuna's MaxTrialsCallback lets each worker finish the trial it had started: at most one extra per worker
    assert 4 <= len(finished) <= 5 and not [t for t in trials if t.state.name == "RUNNING"]
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes ran trials
    assert len({t.number for t in trials}) == len(trials)
    [default] = [t for t in trials if t.user_attrs.get("default")]  # params.yaml as it is, run once, not per worker
    assert default.params == {} and default.state.name == "COMPLETE" and len(default.user_attrs["curve"]) == 3


def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(project: Path, test_split_away) -> None:
    import optuna

    tune_params(project, "killed", 3)
    first = subprocess.Popen(tune_command(project), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it in the middle of its second trial, once that one drew its params
        time.sleep(0.5)
        try:
            trials = study_of(project, "killed").get_trials()
        except KeyError:
            continue
        if ([t.state.name for t in trials].count("COMPLETE") == 1
                and any(t.state.name == "RUNNING" and t.params for t in trials)):
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = study_of(project, "killed").get_trials()
    assert [t.state.name for t in before].count("COMPLETE") == 1
    killed = next(t for t in before if t.state.name == "RUNNING")
    assert killed.params  # a trial killed before it drew any would be retried with fresh ones, which proves less
    time.sleep(5)  # past the heartbeat's grace period (4 x tune.heartbeat_s): the trial's worker is known dead

    again = subprocess.run(tune_command(project), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = study_of(project, "killed").get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3  # grew from 1 to the 3 asked for
    assert trials[killed.number].state.name == "FAIL"  # the killed one is marked, and run again with its params
    retried = [t for t in finished
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    survivor = next(t for t in before if t.state.name == "COMPLETE")
    assert trials[survivor.number].value == survivor.value  # the finished trial was kept, not rerun
