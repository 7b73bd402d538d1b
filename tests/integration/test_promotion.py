"""Promotion, refusal and rollback through the real pipeline, on a project with a BentoML store of its own:
a weak first model becomes the champion, a better one replaces it and is what `bentoml serve` answers with,
broken candidates (shuffled labels, a diverging learning rate) are refused with the champion untouched,
`tuneline rollback` brings the weak one back, and `dvc metrics diff` / `dvc plots diff` compare two experiments.
No mocks: real DVC, transformers, BentoML and the pip-shipped MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import bentoml_serve, dvc, make_project, served_probabilities, set_params, sh

from components.io import read_split
from components.modalities import load_predictor

pytestmark = pytest.mark.slow

MODEL = "tuneline-text"
TEXTS = ["A gripping, beautifully acted film.", "Dull and far too long.",
         "A young detective returns to her home town to find her missing sister."]
# A learning rate that collapses the model to one class: a weak first champion (the tiny floors let it through).
WEAK = {"train": {"max_steps": 6, "learning_rate": 0.5}}
GOOD = {"train": {"epochs": 3, "learning_rate": 2.0e-4}}
# The repo's own gate (floors, class recall, collapse checks) instead of the tiny floors, for the broken candidates.
STRICT = {"evaluate": {"min_macro_precision": 0.5, "min_macro_recall": 0.5, "min_macro_f1": 0.5,
                       "min_class_recall": 0.2, "max_prediction_share": 0.95, "val_loss_below_chance": True}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="module")
def env(home: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"BENTOML_HOME": str(home), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def registry(home: Path) -> dict:
    return json.loads((home / "tuneline" / f"{MODEL}.json").read_text())


def stored(home: Path) -> list[str]:
    return sorted(f"{MODEL}:{p.name}" for p in (home / "models" / MODEL).iterdir() if p.is_dir())


def model_path(home: Path, tag: str) -> Path:
    return home / "models" / MODEL / tag.split(":")[1]


def repro(project: Path, env: dict[str, str], overrides: dict) -> subprocess.CompletedProcess:
    set_params(project, overrides)
    return dvc(project, "repro", env=env)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory, project_root: Path, env: dict[str, str],
             home: Path) -> dict:
    """A weak model (two steps) packaged first, then a properly trained one: tags, verdicts and outputs."""
    project = make_project(tmp_path_factory.mktemp("registry-project"), project_root)
    first = repro(project, env, WEAK)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    weak = json.loads((project / "models/packaged.json").read_text())["tag"]
    second = repro(project, env, GOOD)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    good = json.loads((project / "models/packaged.json").read_text())["tag"]
    # The champion's run, committed as a user would: the experiment in the last test is compared with it.
    assert sh(project, "git", "add", "-A").returncode == 0
    assert sh(project, "git", "commit", "-q", "-m", "champion run").returncode == 0
    return {"project": project, "weak": weak, "good": good, "output": second.stdout + second.stderr,
            "verdict": json.loads((project / "metrics/gate.json").read_text())}


def test_a_significantly_better_candidate_is_promoted(promoted: dict, home: Path) -> None:
    verdict = promoted["verdict"]
    assert verdict["decision"] == "promote"
    assert "significantly better than the champion" in verdict["reason"]
    difference = verdict["champion"]["difference"]
    assert verdict["champion"]["tag"] == promoted["weak"]
    assert difference["low"] > 0 and difference["n"] == json.loads(
        (promoted["project"] / "metrics/test.json").read_text())["test_rows"]
    state = registry(home)
    assert state["champion"] == promoted["good"]
    assert [(e["event"], e["tag"], e["previous"]) for e in state["history"]] == [
        ("promote", promoted["weak"], None), ("promote", promoted["good"], promoted["weak"])]
    card = (model_path(home, promoted["good"]) / "MODEL_CARD.md").read_text()
    record = json.loads((model_path(home, promoted["good"]) / "package.json").read_text())
    assert promoted["good"] in card and "Data version" in card and "promote" in card
    assert set(record["provenance"]["data_version"]) == {"data/prepared", "data/augmented"}
    assert record["provenance"]["code_revision"] != "unknown"
    report = (promoted["project"] / "reports/evaluation.md").read_text()
    assert "Champion" in report or "champion" in report


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        # Labels shuffled: the model can only learn noise.
        ("shuffled labels", {"data": {"path": "data/raw/shuffled.csv", "max_rows": None}, "train": {"max_steps": 16}},
         ["macro f1"]),
        # A learning rate that blows the weights up: the model collapses (a few steps are enough).
        ("diverging learning rate", {"train": {"learning_rate": 1.0, "max_steps": 8}}, ["no collapse"]),
    ],
)
def test_broken_candidates_are_refused_and_the_champion_stays(promoted: dict, env: dict[str, str], home: Path,
                                                              name: str, overrides: dict,
                                                              expected: list[str]) -> None:
    project = promoted["project"]
    if "shuffled" in name:
        rows = pd.concat([read_split(project / "data/prepared", split) for split in ("train", "val", "test")])
        rng = np.random.default_rng(0)
        rows.assign(label=rng.permutation(rows["label"].to_numpy()))[["text", "label"]].to_csv(
            project / "data/raw/shuffled.csv", index=False)
    before = (registry(home), stored(home), (project / "models/packaged.json").read_text())

    result = repro(project, env, {**STRICT, **overrides})
    output = result.stdout + result.stderr

    assert result.returncode != 0, output[-3000:]
    assert "failed the quality gate" in output and "the champion stays in place" in output
    verdict = json.loads((project / "metrics/gate.json").read_text())
    assert verdict["decision"] == "refuse"
    failed = [failure["condition"] for failure in verdict["failures"]]
    for condition in expected:
        assert any(condition in f for f in failed), (name, failed)
    for failure in verdict["failures"]:
        assert failure["message"] in output  # every failed condition, with its numbers, in the terminal
    assert (registry(home), stored(home), (project / "models/packaged.json").read_text()) == before


def serve_and_ask(project: Path, env: dict[str, str]) -> np.ndarray:
    """Start `bentoml serve` as `make serve` does (no tag given: the champion), ask it, stop it."""
    with bentoml_serve(project, "serving.service:TunelineService", env, project / "serve.log") as url:
        response = httpx.post(f"{url}/classify", json={"texts": TEXTS, "top_k": 100}, timeout=60)
    assert response.status_code == 200, response.text
    labels = sorted(entry["label"] for entry in response.json()["predictions"][0]["top_k"])
    return served_probabilities(response.json(), labels)


def expected(home: Path, tag: str) -> np.ndarray:
    classifier = load_predictor(model_path(home, tag))
    order = np.argsort(classifier.labels)
    return classifier.predict_proba(TEXTS)[:, order]


def test_serve_answers_with_the_champion_and_rollback_brings_the_last_one_back(
        promoted: dict, env: dict[str, str], home: Path) -> None:
    project = promoted["project"]
    good, weak = expected(home, promoted["good"]), expected(home, promoted["weak"])
    assert not np.allclose(good, weak, atol=1e-3)  # the two models answer differently, so the check means something

    np.testing.assert_allclose(serve_and_ask(project, env), good, atol=1e-5)

    rolled = sh(project, str(Path(sys.executable).parent / "tuneline"), "rollback", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert f"{promoted['weak']} is the champion again (was {promoted['good']})" in rolled.stdout
    assert registry(home)["champion"] == promoted["weak"]
    assert registry(home)["history"][-1]["event"] == "rollback"
    listed = sh(project, str(Path(sys.executable).parent / "tuneline"), "models", env=env)
    assert f"* {promoted['weak']}" in listed.stdout.replace("*  ", "* ")

    np.testing.assert_allclose(serve_and_ask(project, env), weak, atol=1e-5)

    back = sh(project, str(Path(sys.executable).parent / "tuneline"), "promote", promoted["good"], env=env)
    assert back.returncode == 0 and registry(home)["champion"] == promoted["good"]
    missing = sh(project, str(Path(sys.executable).parent / "tuneline"), "promote", f"{MODEL}:nosuchmodel", env=env)
    assert missing.returncode == 1 and "no model" in missing.stderr and "tuneline models" in missing.stderr
    assert registry(home)["champion"] == promoted["good"]


def test_experiments_diff_metrics_and_plots_without_noise(promoted: dict, env: dict[str, str]) -> None:
    project = promoted["project"]
    # Back to the committed champion run, as a user would after the refused candidates: git for params, dvc.lock
    # and metrics, `dvc checkout` for the data and model folders; nothing is out of date and nothing retrains.
    (project / "data/raw/shuffled.csv").unlink(missing_ok=True)
    assert sh(project, "git", "reset", "-q", "--hard", "HEAD").returncode == 0
    assert dvc(project, "checkout", "--force", env=env).returncode == 0
    status = dvc(project, "status", "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr

    # Up to evaluate only: an experiment is scored, not packaged.
    # 30 steps: past the first loss logged (train.logging_steps 25), so the experiment has a training curve too
    exp = dvc(project, "exp", "run", "evaluate", "-S", "train.learning_rate=3e-4", "-S", "train.max_steps=30",
              "-n", "faster", env=env)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]

    diff = json.loads(dvc(project, "metrics", "diff", "HEAD", "faster", "--json", env=env).stdout)
    changed = {f"{path}:{key}" for path, keys in diff.items() for key in keys}
    assert any("model.macro.f1" in key for key in changed)
    clock = {"time", "timestamp", "date", "created", "runtime", "at"}
    assert not [key for key in changed if clock & set(key.replace(":", ".").replace("_", ".").split("."))]
    plots = json.loads(dvc(project, "plots", "diff", "HEAD", "faster", "--json", env=env).stdout)
    for name in ("reports/predictions.csv", "reports/per_class.csv", "metrics/train/plots/metrics/loss.tsv"):
        revisions = {rev for plot in plots["data"][name] for rev in plot["revisions"]}
        assert revisions == {"HEAD", "faster"}, (name, revisions)
