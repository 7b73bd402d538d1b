"""Test session setup: offline switches and throwaway tool homes, set before any test imports Prefect or BentoML."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from components.env import use_this_interpreter

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_HOMES = Path(tempfile.mkdtemp(prefix="tuneline-test-homes-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "TOKENIZERS_PARALLELISM": "false",
        # The tests' Prefect database and BentoML store live in a temp dir, never in the project or ~.
        "PREFECT_HOME": str(_HOMES / "prefect"),
        "BENTOML_HOME": str(_HOMES / "bentoml"),
        # What the test servers answer (monitor.dir): not into the checkout they are started from.
        "TUNELINE_MONITOR_DIR": str(_HOMES / "monitoring"),
    }
)
# dvc.yaml's `python -m components.<stage>` must run in the interpreter under test.
use_this_interpreter()


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The checkout under test."""
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (each start costs 10-20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's Prefect database and BentoML store (models of a few hundred MB pile up otherwise)."""
    shutil.rmtree(_HOMES, ignore_errors=True)
