"""The image modality end to end on a tiny slice of the built-in digits: a real `dvc repro` (prepare, GX validation,
kornia augmentation, EfficientNet-Lite0 fine-tuning, evaluation, packaging), then a real `bentoml serve` answering
/classify_image with the evaluate stage's own predictions, and refusing bad images with a 400."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import bentoml_serve, dvc, make_project, served_probabilities, set_params

MODEL_NAME = "tuneline-image"  # its own name: the session's text champion stays as it is
IMAGE_PARAMS = {
    "data": {"modality": "image", "max_rows": 300},
    "image": {"size": 32},
    "augment": {"copies_per_example": 0.3},
    "train": {"max_steps": 12, "batch_size": 16, "learning_rate": 1.0e-3},
    "package": {"model_name": MODEL_NAME},
}


@pytest.fixture(scope="module")
def image_project(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Path:
    project = make_project(tmp_path_factory.mktemp("images"), project_root)
    set_params(project, IMAGE_PARAMS)
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project


def test_dvc_repro_runs_every_stage_on_images(image_project: Path) -> None:
    metrics = json.loads((image_project / "metrics/test.json").read_text())
    assert metrics["test_rows"] > 0 and set(metrics["model"]["per_class"]) == {str(d) for d in range(10)}
    assert json.loads((image_project / "reports/validation.json").read_text())["success"] is True
    augmented = pd.read_json(image_project / "data/augmented/train.jsonl", lines=True)
    assert augmented["augmented"].sum() > 0
    meta = json.loads((image_project / "models/candidate/tuneline.json").read_text())
    assert meta["modality"] == "image" and meta["architecture"] == "efficientnet-lite0"
    packaged = json.loads((image_project / "models/packaged.json").read_text())
    assert packaged["tag"].startswith(MODEL_NAME + ":")
    status = dvc(image_project, "status")
    assert "up to date" in status.stdout, status.stdout


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_served_images_get_the_evaluate_stages_predictions_and_bad_ones_a_400(image_project: Path,
                                                                               tmp_path: Path) -> None:
    predictions = pd.read_csv(image_project / "reports/predictions.csv", dtype={"label": str, "predicted": str})
    labels = json.loads((image_project / "data/prepared/labels.json").read_text())
    tag = json.loads((image_project / "models/packaged.json").read_text())["tag"]
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "TUNELINE_PARAMS": str(image_project / "params.yaml")}
    with bentoml_serve(image_project, "serving.service:TunelineService", env, tmp_path / "serve.log") as url:
        files = [image_project / text for text in predictions["text"]]
        answer = httpx.post(f"{url}/classify_image", json={"images": [encoded(f) for f in files],
                                                           "top_k": len(labels)}, timeout=120)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == tag
        assert [p["label"] for p in body["predictions"]] == predictions["predicted"].tolist()
        served = served_probabilities(body, labels).max(axis=1)
        assert np.abs(served - predictions["probability"].to_numpy()).max() < 1e-4

        good = encoded(files[0])
        refused = {
            "not base64": {"images": ["%%% not base64 %%%"]},
            "not an image": {"images": [base64.b64encode(b"%PDF-1.7 hello").decode()]},
            "truncated": {"images": [base64.b64encode(files[0].read_bytes()[:60]).decode()]},
            "too small": {"images": [base64.b64encode(png((4, 4))).decode()]},
            "two channels": {"images": [base64.b64encode(png((16, 16), "LA")).decode()]},
            "empty list": {"images": []},
            "unknown field": {"images": [good], "pixels": 1},
        }
        for name, request in refused.items():
            response = httpx.post(f"{url}/classify_image", json=request, timeout=60)
            assert response.status_code == 400, (name, response.status_code, response.text)
        response = httpx.post(f"{url}/classify_image", json={"images": [good, "%%%"]}, timeout=60)
        assert "images[1] is not base64" in response.text
        response = httpx.post(f"{url}/classify", json={"texts": ["a text"]}, timeout=60)
        assert response.status_code == 400 and "classifies images" in response.text
        assert httpx.post(f"{url}/classify_image", json={"images": [good]}, timeout=60).status_code == 200
