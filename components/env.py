"""Offline switches and tool homes, applied by entry points before Prefect, DVC, BentoML or transformers load."""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure_environment(root: str | Path = ".") -> None:
    """Set the offline switches and keep Prefect's and BentoML's state inside the project, unless already set.

    Values the caller exported win, so a user can point BENTOML_HOME or PREFECT_HOME elsewhere on purpose. Under
    `dvc exp run` the stages run in a temporary copy of the project (queued experiments); DVC_ROOT names the real
    one, whose model store the experiment must compare with and store into. A pipeline in a sub-folder (images/)
    shares the project's store and Prefect home.
    """
    root = project_root(os.environ.get("DVC_ROOT") or root)
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("BENTOML_HOME", str(root / ".bentoml"))
    use_this_interpreter()


def project_root(folder: str | Path) -> Path:
    """The project holding `folder`: the outermost folder upwards with a .dvc/ in it (images/ is a DVC project of
    its own inside the project), or `folder` itself."""
    folder = Path(folder).resolve()
    return next((p for p in reversed((folder, *folder.parents)) if (p / ".dvc").is_dir()), folder)


def use_this_interpreter() -> None:
    """Put the running interpreter's folder first on PATH, so dvc.yaml's `python -m ...` runs in this environment."""
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
