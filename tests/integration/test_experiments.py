"""Experiments with the tools users already have: `dvc exp run -S` in the workspace, a queued grid (two learning
rates, with layer freezing set for both: the suite's time allows two runs) run by `dvc queue start`, compared with `dvc exp show`; every experiment's model
is stored in the project's BentoML store and none of them changes the served champion. A project of its own, with
a BentoML store of its own; no mocks: real DVC (its queue worker included), transformers and BentoML."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import dvc, make_project, set_params, sh

from components import registry

pytestmark = pytest.mark.slow

MODEL = "tuneline-text"
# A few steps on short texts and the smallest bootstrap the gate allows: each experiment takes seconds to train.
# The champion trains one step and every experiment EXPERIMENT_STEPS, so none is refused as worse than the champion
# (a model of a few steps can be, by chance): this module is about the experiment tools, not the gate.
QUICK = {"text": {"max_tokens": 32}, "train": {"max_steps": 1}, "evaluate": {"bootstrap_resamples": 100}}
EXPERIMENT_STEPS = "train.max_steps=16"
GRID = {(1.0e-4, 4), (3.0e-4, 4)}  # (train.learning_rate, model.freeze_layers)
QUEUE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("experiments-bentoml-home")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # four stored models of ~90 MB


@pytest.fixture(scope="module")
def env(home: Path) -> dict[str, str]:
    # `dvc queue start` spawns its worker as `dvc` from PATH, detached; the worker and the experiments it runs
    # inherit this environment, BENTOML_HOME included (test_queued_grid checks that it reached them).
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"BENTOML_HOME": str(home), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def champion(home: Path) -> str | None:
    """components.registry's champion, read with the experiments' BENTOML_HOME."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENTOML_HOME", str(home))
        return registry.champion(MODEL)


def stored_experiments(home: Path) -> dict[str, str]:
    """{tag: experiment name} of every model in the store that an experiment packaged."""
    found = {}
    for path in (home / "models" / MODEL).glob("*/model.yaml"):
        metadata = yaml.safe_load(path.read_text())["metadata"]
        if "experiment" in metadata:
            found[f"{MODEL}:{path.parent.name}"] = metadata["experiment"]
    return found


def wait_for_queue(project: Path, env: dict[str, str]) -> str:
    """Poll `dvc queue status` until no experiment is queued or running; return the last status."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = dvc(project, "queue", "status", env=env)
        assert status.returncode == 0, status.stderr
        if not re.search(r"\b(Queued|Running)\s*$", status.stdout, re.MULTILINE):
            return status.stdout
        if time.monotonic() > deadline:
            worker_log = project / ".dvc/tmp/exps/celery/dvc-exp-worker-1.out"
            pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status.stdout}\n"
                        + (worker_log.read_text(errors="replace")[-3000:] if worker_log.is_file() else ""))
        time.sleep(3)


def shown(project: Path, env: dict[str, str]) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: params.yaml, metrics/test.json and metrics/train.json, executor}."""
    result = dvc(project, "exp", "show", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {}
    for baseline in json.loads(result.stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                rows[rev["name"]] = {"params": data["params"]["params.yaml"]["data"],
                                     "metrics": data["metrics"]["metrics/test.json"]["data"],
                                     "training": data["metrics"]["metrics/train.json"]["data"],
                                     "executor": experiment.get("executor")}
    return rows


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory, project_root: Path, env: dict[str, str],
                home: Path) -> Iterator[dict]:
    """One `dvc repro` (the champion), then one workspace experiment and a queued grid of two."""
    project = make_project(tmp_path_factory.mktemp("experiments-project"), project_root)
    set_params(project, QUICK)
    baseline = dvc(project, "repro", env=env)
    assert baseline.returncode == 0, baseline.stdout[-3000:] + baseline.stderr[-3000:]
    # The run worth keeping, committed as a user would: `dvc exp show` compares the experiments with it.
    assert sh(project, "git", "add", "-A").returncode == 0
    assert sh(project, "git", "commit", "-q", "-m", "baseline run").returncode == 0
    first = champion(home)

    workspace = dvc(project, "exp", "run", "-S", "train.learning_rate=2e-4", "-S", EXPERIMENT_STEPS, env=env)
    packaged = json.loads((project / "models/packaged.json").read_text())
    queued = dvc(project, "exp", "run", "--queue", "-S", "train.learning_rate=1e-4,3e-4", "-S", EXPERIMENT_STEPS,
                 "-S", "model.freeze_layers=4", env=env)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    try:
        started = dvc(project, "queue", "start", "-j", "1", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        status = wait_for_queue(project, env)
    finally:
        dvc(project, "queue", "stop", "--kill", env=env)  # the worker stops itself when idle; this is for failures
    yield {"project": project, "champion": first, "workspace": workspace, "packaged": packaged, "queued": queued,
           "status": status, "shown": shown(project, env)}
    shutil.rmtree(project, ignore_errors=True)  # its DVC cache holds every experiment's model


def test_dvc_exp_run_with_set_param_in_the_workspace(experiments: dict) -> None:
    result = experiments["workspace"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name = re.search(r"Ran experiment\(s\): (\S+)", result.stdout).group(1)
    row = experiments["shown"][name]
    assert row["params"]["train"]["learning_rate"] == 2e-4
    assert 0.0 <= row["metrics"]["model"]["macro"]["f1"] <= 1.0
    tag = experiments["packaged"]["tag"]
    assert f"model: {tag} (stored; experiment {name} does not change the champion; " \
           f"promote it with: tuneline promote {tag})" in result.stdout
    assert name in experiments["packaged"]["not_promoted"]


def test_queued_grid_over_learning_rate_with_freezing(experiments: dict, home: Path) -> None:
    queued = re.findall(r"Queued experiment '(\S+)'", experiments["queued"].stdout)
    assert len(queued) == 2, experiments["queued"].stdout
    failed = [name for name in queued if not re.search(rf"{name}\s+.*Success\s*$", experiments["status"], re.MULTILINE)]
    logs = {name: dvc(experiments["project"], "queue", "logs", name).stdout[-3000:] for name in failed}
    assert not failed, f"{experiments['status']}\n{logs}"

    rows = {name: experiments["shown"][name] for name in queued}
    grid = {(row["params"]["train"]["learning_rate"], row["params"]["model"]["freeze_layers"]) for row in rows.values()}
    assert grid == GRID
    for row in rows.values():
        assert row["executor"]["state"] == "success"
        assert 0.0 <= row["metrics"]["model"]["macro"]["f1"] <= 1.0
        assert row["metrics"]["test_rows"] > 0
    # Freezing four of MiniLM's six layers trains fewer weights than the workspace experiment (nothing frozen): the
    # setting reached the training, not just the table.
    workspace = re.search(r"Ran experiment\(s\): (\S+)", experiments["workspace"].stdout).group(1)
    unfrozen = experiments["shown"][workspace]
    assert unfrozen["params"]["model"]["freeze_layers"] == 0
    assert all(row["training"]["trainable_params"] < unfrozen["training"]["trainable_params"] for row in rows.values())
    # The queued runs had the test's BENTOML_HOME: each stored its model there, labelled with its name.
    assert set(queued) <= set(stored_experiments(home).values())


def test_experiments_leave_the_champion_in_place(experiments: dict, home: Path) -> None:
    assert experiments["champion"] is not None
    assert champion(home) == experiments["champion"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENTOML_HOME", str(home))
        assert [event["tag"] for event in registry.history(MODEL)] == [experiments["champion"]]
    assert len(stored_experiments(home)) == 3  # the workspace experiment and the grid: stored, ready to promote
