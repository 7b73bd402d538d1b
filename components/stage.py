"""The shared `main()` of every stage: load params, run, and turn known failures into a message and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from components import modalities
from components.config import ConfigError, Params, load_params
from components.env import configure_environment

R = TypeVar("R")


class StageError(Exception):
    """A failure the user can fix (bad data, a failed gate, a missing input): printed without a traceback."""


def stage_main(name: str, run: Callable[[Params], R]) -> R:
    """Run one stage as `python -m components.<name>` does: from the project root, with params.yaml."""
    # No options: every knob is in params.yaml. --help says so instead of running the stage.
    argparse.ArgumentParser(
        prog=f"python -m components.{name}",
        description=(sys.modules["__main__"].__doc__ or "").strip(),
        epilog="Reads params.yaml in the working directory; dvc.yaml lists this stage's inputs and outputs.",
    ).parse_args()
    configure_environment()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    try:
        params = load_params()
        # what the modality cannot do is refused here, before any stage starts work on it
        modalities.for_params(params).check_options(params)
        return run(params)
    except (ConfigError, StageError) as exc:
        print(f"\n{name} stopped: {exc}\n", file=sys.stderr)
        raise SystemExit(1) from None
