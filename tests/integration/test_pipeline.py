"""The real pipeline end to end on a tiny slice of the built-in corpus: dvc repro, the Prefect flow, the gate,
and validation stopping bad data. No mocks: real DVC, Prefect, Great Expectations, transformers and BentoML."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

# A few hundred rows and a few dozen steps; floors low enough that a briefly trained model passes.
TINY = {
    "data": {"max_rows": 400},
    "train": {"epochs": 2, "learning_rate": 1.0e-4, "batch_size": 16, "early_stopping_patience": 0},
    "evaluate": {"min_macro_precision": 0.0, "min_macro_recall": 0.0, "min_macro_f1": 0.0,
                 "min_margin_over_baseline": -1.0},
}
PROJECT_FILES = ["components", "flows", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore", "data/raw/.gitkeep"]


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def set_params(project: Path, overrides: dict) -> None:
    """Write the project's params.yaml as the repo's own, with TINY and then `overrides` applied."""
    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(merge(merge(base, TINY), overrides), sort_keys=False))


def sh(project: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900)


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(project, str(Path(sys.executable).parent / "dvc"), *args)


def stored_models() -> list[str]:
    import bentoml

    return sorted(str(model.tag) for model in bentoml.models.list())


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Path:
    """A fresh git + DVC repository holding this checkout's pipeline, with tiny params."""
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source, target = project_root / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    set_params(root, {})
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "ci@tuneline.invalid"],
                    ["git", "config", "user.name", "Tuneline CI"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "tiny pipeline"]):
        assert sh(root, *command).returncode == 0
    return root


@pytest.fixture(scope="module")
def reproduced(project: Path) -> subprocess.CompletedProcess:
    """One full `dvc repro` of the tiny pipeline (fine-tuning included)."""
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_dvc_repro_trains_gates_and_packages(project: Path, reproduced: subprocess.CompletedProcess) -> None:
    for stage in ("prepare", "validate", "augment", "train", "evaluate", "package"):
        assert f"Running stage '{stage}'" in reproduced.stdout
    metrics = json.loads((project / "metrics/test.json").read_text())
    assert 0.0 <= metrics["baseline"]["macro"]["f1"] <= 1.0
    assert set(metrics["model"]["per_class"]) == {"fresh", "plot", "rotten"}
    # A few dozen steps of real fine-tuning already beat always answering the majority class.
    majority = max(c["support"] for c in metrics["model"]["per_class"].values()) / metrics["test_rows"]
    assert metrics["model"]["accuracy"] > majority
    assert json.loads((project / "metrics/gate.json").read_text())["passed"] is True
    tag = json.loads((project / "models/packaged.json").read_text())["tag"]
    assert tag in stored_models()

    status = dvc(project, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}
    again = dvc(project, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout
    shown = dvc(project, "metrics", "show", "--json")
    assert "macro" in shown.stdout and "f1" in shown.stdout


def test_flow_runs_only_stale_stages_and_leaves_dvc_clean(project: Path, reproduced, prefect_harness) -> None:
    from flows.pipeline import pipeline

    set_params(project, {"evaluate": {"min_macro_f1": 0.01}})
    first = pipeline(root=str(project))
    assert first["ran"] == {"prepare": False, "validate": False, "augment": False, "train": False,
                            "evaluate": True, "package": True}
    assert first["verdict"]["passed"] is True
    assert first["model_tag"] in stored_models()
    assert json.loads(dvc(project, "status", "--json").stdout) == {}

    second = pipeline(root=str(project))
    assert not any(second["ran"].values())
    assert second["model_tag"] == first["model_tag"]


def test_failed_gate_packages_nothing(project: Path, reproduced) -> None:
    models_before = stored_models()
    record_before = (project / "models/packaged.json").read_text()
    set_params(project, {"evaluate": {"min_macro_f1": 0.99}})
    result = dvc(project, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "failed the quality gate" in output
    assert "macro f1" in output and "is below the floor 0.9900" in output and "evaluate.min_macro_f1" in output
    assert stored_models() == models_before
    assert (project / "models/packaged.json").read_text() == record_before


def test_bad_data_is_stopped_by_validation_and_loses_nothing(project: Path, reproduced) -> None:
    set_params(project, {})
    assert dvc(project, "repro").returncode == 0
    models_before = stored_models()
    record_before = (project / "models/packaged.json").read_text()
    model_before = tree_digest(project / "models/candidate")

    rows = [f"a perfectly fine review number {i},{'good' if i % 2 else 'bad'}" for i in range(60)]
    rows += ['"   ",good', "another fine text,", "text shared across splits,good"] + ["text shared across splits,bad"]
    (project / "data/raw/bad.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    set_params(project, {"data": {"path": "data/raw/bad.csv", "max_rows": None}})
    result = dvc(project, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "validate stopped" in output
    assert "Running stage 'train'" not in output
    assert "Traceback" not in output
    assert stored_models() == models_before
    assert (project / "models/packaged.json").read_text() == record_before
    assert tree_digest(project / "models/candidate") == model_before
