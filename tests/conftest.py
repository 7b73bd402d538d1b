"""Test session setup: offline switches and throwaway tool homes, set before any test imports Prefect or BentoML."""

from __future__ import annotations

import inspect
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
# Under pytest-xdist the workers share the cores: each torch (and every stage it starts) gets its share of threads
# instead of all of them, which on 2 cores would make two trainings spin against each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
# dvc.yaml's `python -m components.<stage>` must run in the interpreter under test.
use_this_interpreter()


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The checkout under test."""
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (each start costs 10-20 s).

    Its start is tried up to three times: Prefect's wait for its new server retries only refused connections, and a
    connection the starting server accepted and dropped (httpx.RemoteProtocolError) once failed every test of a
    session that used it.
    """
    import httpx
    from prefect.testing.utilities import prefect_test_harness

    for attempt in range(3):
        harness = prefect_test_harness(server_startup_timeout=120)
        try:
            harness.__enter__()
            break
        except httpx.TransportError:
            if attempt == 2:
                raise
    try:
        yield
    finally:
        harness.__exit__(None, None, None)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# make test runs the suite in pytest-xdist workers, a module whole on one worker (its module-scoped fixtures are
# built once), and the modules using the session's one trained text project (tests/integration/conftest.py) all on
# the same worker, so it is trained once. xdist's own loadgroup cannot do this under pytest 9 (it renames nodes
# through an attribute pytest 9 no longer reads), hence the scheduler below.
SHARED_PROJECT_FIXTURES = {"project", "reproduced"}
SHARED_PROJECT_CONFTEST = PROJECT_ROOT / "tests" / "integration" / "conftest.py"
SHARED_PROJECT_MODULES = {"test_bad_data.py", "test_monitor_served.py", "test_pipeline.py", "test_tune.py"}
# The longest groups start first, so that neither worker is left with a long one at the end (a hint; any order
# passes).
LONGEST_FIRST = ["shared project", "test_promotion.py", "test_schedule.py", "test_train_engine.py",
                 "test_experiments.py", "test_given_splits.py", "test_audio_pipeline.py"]


def _group(nodeid: str) -> str:
    """The work unit a test belongs to: the shared project's, or its module's path."""
    module = nodeid.split("::", 1)[0]
    return "shared project" if Path(module).name in SHARED_PROJECT_MODULES else module


def _uses_shared_project(item: pytest.Item) -> bool:
    """Whether the test uses tests/integration/conftest.py's project (a module may define its own `project`)."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = [d for name in SHARED_PROJECT_FIXTURES for d in (info.name2fixturedefs.get(name, ()) if info else ())]
    return any(inspect.getfile(d.func) == str(SHARED_PROJECT_CONFTEST) for d in definitions)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test using the shared project outside SHARED_PROJECT_MODULES would train it a second time on the other
    worker: stop and say so. Under xdist, the longest groups go first."""
    strays = sorted({item.nodeid.split("::", 1)[0] for item in items
                     if _uses_shared_project(item) and _group(item.nodeid) != "shared project"})
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)}: tests there use the session's trained project; add the "
                                f"module to SHARED_PROJECT_MODULES in tests/conftest.py")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        def rank(item: pytest.Item) -> int:
            group = _group(item.nodeid)
            name = group if group == "shared project" else Path(group).name
            return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        items.sort(key=rank)  # stable: the order within a group, and of the other groups, stays


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 - xdist's scheduler type
    """Work units are the groups above, handed out in collection order, the next one only when a worker is
    about to run out (one pending test: an xdist worker holds its last test back until it knows the next)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

        def _reschedule(self, node) -> None:  # noqa: ANN001
            if not node.shutting_down and self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    config.option.loadscopereorder = False  # keep the order the workers collected (longest first)
    return GroupScheduling(config, log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's Prefect database and BentoML store (models of a few hundred MB pile up otherwise)."""
    shutil.rmtree(_HOMES, ignore_errors=True)
