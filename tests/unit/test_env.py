"""Where Tuneline keeps its tool state: the project's, found from any folder of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.env import configure_environment, project_root


def test_project_root_is_the_outermost_dvc_project(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "images/.dvc").mkdir(parents=True)  # the image pipeline, a DVC project inside the project
    (tmp_path / "images/data").mkdir()
    assert project_root(tmp_path / "images") == tmp_path
    assert project_root(tmp_path / "images/data") == tmp_path
    assert project_root(tmp_path) == tmp_path


def test_a_folder_outside_any_dvc_project_is_its_own_root(tmp_path: Path) -> None:
    assert project_root(tmp_path) == tmp_path


def test_a_stage_of_the_image_pipeline_uses_the_projects_model_store(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "images/.dvc").mkdir(parents=True)
    for key in ("BENTOML_HOME", "PREFECT_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "images"))  # what DVC sets for the images/ stages
    configure_environment()
    assert os.environ["BENTOML_HOME"] == str(tmp_path / ".bentoml")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / ".prefect")
