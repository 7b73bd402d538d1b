"""A stage started by an interpreter that is not the project's (dvc repro from a shell without .venv) says so in one
line instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_stage_under_a_python_without_the_dependencies_says_what_to_do(tmp_path: Path) -> None:
    # -S -I: this interpreter without its site-packages, i.e. without pandas and pydantic, as a system python is
    code = f"import sys, runpy; sys.path.insert(0, {str(ROOT)!r}); runpy.run_module('components.prepare')"
    result = subprocess.run([sys.executable, "-S", "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is not the project's Python" in result.stderr and "source .venv/bin/activate" in result.stderr
    assert "make repro" in result.stderr
