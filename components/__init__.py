"""Tuneline's pipeline stages: each stage's logic lives here once; flows/, serving/ and dvc.yaml adapt it.

dvc.yaml runs each stage as `python -m components.<stage>`, with whichever `python` the shell finds first. Outside
the project's environment that is an interpreter without Tuneline's dependencies; say so in one line, before the
first import that would fail with a traceback.
"""

import importlib.util
import sys

if importlib.util.find_spec("pandas") is None or importlib.util.find_spec("pydantic") is None:
    raise SystemExit(f"{sys.executable} is not the project's Python (it lacks Tuneline's dependencies): run "
                     "`source .venv/bin/activate` first, or `make repro`, which runs `dvc repro` with the project's "
                     "environment (`make install` creates it)")
