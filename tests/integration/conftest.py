"""One real git + DVC project for the whole session, trained and packaged once, shared by the integration modules
(test_pipeline.py, test_bad_data.py), and the helpers that drive it. Test modules import the helpers with
`from conftest import ...` (this folder is on sys.path while its tests are collected)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

# A few hundred rows and a few dozen steps; floors low enough that a briefly trained model passes.
TINY = {
    "data": {"max_rows": 400},
    "train": {"epochs": 2, "learning_rate": 1.0e-4, "batch_size": 16, "early_stopping_patience": 0,
              "method": "finetune"},
    # No faster runtime by default: it costs an export per package run; test_pipeline.py tests it on its own.
    "package": {"fast_path": {"runtime": "none"}},
    "evaluate": {"min_macro_precision": 0.0, "min_macro_recall": 0.0, "min_macro_f1": 0.0, "min_class_recall": 0.0,
                 "min_margin_over_baseline": -1.0, "max_prediction_share": 1.0, "val_loss_below_chance": False},
}
PROJECT_FILES = ["components", "flows", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore", "data/raw/.gitkeep",
                 "images/.dvc/config", "images/.dvc/.gitignore", "images/.dvcignore", "images/params.yaml",
                 "images/dvc.yaml", "images/components", "images/data/raw/.gitkeep",
                 "audio/.dvc/config", "audio/.dvc/.gitignore", "audio/.dvcignore", "audio/params.yaml",
                 "audio/dvc.yaml", "audio/components", "audio/data/raw/.gitkeep"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


@functools.cache
def repo_params() -> str:
    """The repo's params.yaml, read once: the project's components are copied once, and the two must match."""
    return (REPO_ROOT / "params.yaml").read_text()


def set_params(project: Path, overrides: dict) -> None:
    """Write the project's params.yaml as the repo's own, with TINY and then `overrides` applied."""
    base = yaml.safe_load(repo_params())
    (project / "params.yaml").write_text(yaml.safe_dump(merge(merge(base, TINY), overrides), sort_keys=False))


def sh(project: Path, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900, env=env)


def dvc(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return sh(project, str(Path(sys.executable).parent / "dvc"), *args, env=env)


def stored_models() -> list[str]:
    import bentoml

    return sorted(str(model.tag) for model in bentoml.models.list())


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def make_project(root: Path, source: Path) -> Path:
    """A fresh git + DVC repository at root holding `source`'s pipeline, with tiny params, committed."""
    for name in PROJECT_FILES:
        origin, target = source / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():  # images/: links to the project's dvc.yaml and components
            target.symlink_to(origin.readlink())
        elif origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target)
    set_params(root, {})
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "ci@tuneline.invalid"],
                    ["git", "config", "user.name", "Tuneline CI"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "tiny pipeline"]):
        assert sh(root, *command).returncode == 0
    return root


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Path:
    """A fresh git + DVC repository holding this checkout's pipeline, with tiny params."""
    return make_project(tmp_path_factory.mktemp("project"), project_root)


@pytest.fixture(scope="session")
def reproduced(project: Path) -> subprocess.CompletedProcess:
    """One full `dvc repro` of the tiny pipeline (fine-tuning included), shared by every module that needs it."""
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    """Wait for a `bentoml serve` subprocess to answer /readyz; fail with its log if it dies or never does."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"bentoml serve exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"no /readyz within {timeout_s} s:\n{log_path.read_text(errors='replace')}")


@contextlib.contextmanager
def bentoml_serve(cwd: Path, target: str, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`bentoml serve TARGET` on a free 127.0.0.1 port in its own process group; yields its URL once /readyz answers.

    The server and every worker it started are stopped on the way out, also when the test fails.
    """
    import os
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)
    command = [str(Path(bin_dir) / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    env = env | {"PATH": bin_dir + os.pathsep + env.get("PATH", "")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # workers left behind, or a server that ignored SIGTERM
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def served_probabilities(answer: dict, labels: list[str]) -> np.ndarray:
    """A /classify answer asked with top_k >= len(labels) as a probability matrix, columns in `labels` order."""
    rows = [{entry["label"]: entry["probability"] for entry in p["top_k"]} for p in answer["predictions"]]
    assert all(set(row) == set(labels) for row in rows), rows
    return np.array([[row[label] for label in labels] for row in rows])
