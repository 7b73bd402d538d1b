"""The image pipeline the project ships (images/: its params.yaml, with links to the project's dvc.yaml and
components) end to end on a tiny slice of the built-in digits: a real `dvc repro` in images/ (prepare, GX
validation, kornia augmentation, EfficientNet-Lite0 fine-tuning, evaluation, packaging), `tuneline scratch` (the same
network from random weights), then a real `bentoml serve` answering /classify_image with the evaluate stage's own
predictions, and refusing bad images with a 400."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY, bentoml_serve, dvc, make_project, merge, served_probabilities, sh

MODEL_NAME = "tuneline-image"  # images/params.yaml's: the session's text champion stays as it is
TINY_IMAGES = {
    "data": {"max_rows": 300, "val_fraction": 0.15, "test_fraction": 0.15},
    "image": {"size": 32},
    "augment": {"copies_per_example": 0.3},
    "train": {"max_steps": 12, "batch_size": 16, "learning_rate": 1.0e-3},
    "evaluate": TINY["evaluate"],
}


@pytest.fixture(scope="module")
def image_project(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Path:
    """The project's images/ folder inside a fresh repository, its params thinned to a tiny run, reproduced."""
    images = make_project(tmp_path_factory.mktemp("images"), project_root) / "images"
    shipped = yaml.safe_load((project_root / "images/params.yaml").read_text())
    assert shipped["data"]["modality"] == "image" and shipped["package"]["model_name"] == MODEL_NAME
    (images / "params.yaml").write_text(yaml.safe_dump(merge(shipped, TINY_IMAGES), sort_keys=False))
    result = dvc(images, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return images


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
    assert not (image_project.parent / "dvc.lock").exists()  # the text pipeline did not run


def test_scratch_compares_the_model_with_the_same_network_from_random_weights(image_project: Path) -> None:
    result = sh(image_project.parent, sys.executable, "-m", "tuneline.cli", "--root", "images", "scratch")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test macro-F1:        pretrained" in result.stdout and "random weights" in result.stdout
    comparison = json.loads((image_project / "metrics/scratch.json").read_text())
    test_metrics = json.loads((image_project / "metrics/test.json").read_text())
    # the pipeline's model, scored again on the same test rows, gets the evaluate stage's figure
    assert comparison["pretrained"]["test_macro_f1"] == pytest.approx(test_metrics["model"]["macro"]["f1"], abs=1e-6)
    assert comparison["test_rows"] == test_metrics["test_rows"]
    tried = comparison["learning_rates_tried"]
    assert [t["learning_rate"] for t in tried] == pytest.approx([1e-3 / 3, 1e-3, 3e-3], rel=1e-2)
    assert comparison["scratch"]["val_macro_f1"] == max(t["val_macro_f1"] for t in tried)
    assert 0 <= comparison["scratch"]["test_macro_f1"] <= 1
    difference = comparison["difference"]
    assert difference["low"] <= difference["difference"] <= difference["high"]
    assert comparison["clear"] == (difference["low"] > 0)


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
        files = [image_project / image for image in predictions["image"]]
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

        # the same endpoint takes the files themselves, as multipart/form-data, and answers the same
        uploads = [("images", (f.name, f.read_bytes(), "image/png")) for f in files[:5]]
        answer = httpx.post(f"{url}/classify_image", files=uploads, data={"top_k": str(len(labels))}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == predictions["predicted"].tolist()[:5]
        assert np.abs(served_probabilities(answer.json(), labels).max(axis=1)
                      - predictions["probability"].to_numpy()[:5]).max() < 1e-4
        bad_uploads = {
            "not an image": ({"files": [("images", ("x.png", b"%PDF-1.7 hello", "image/png"))]}, "images[0]"),
            "unknown field": ({"files": [("pictures", ("a.png", files[0].read_bytes(), "image/png"))]},
                              "unknown form field"),
            "text, not a file": ({"files": [("images", (None, "hello"))]}, "not a file"),
            "top_k not a number": ({"files": uploads[:1], "data": {"top_k": "many"}}, "top_k"),
        }
        for name, (request, expected) in bad_uploads.items():
            response = httpx.post(f"{url}/classify_image", timeout=60, **request)
            assert response.status_code == 400 and expected in response.text, (name, response.text)
        garbled = httpx.post(f"{url}/classify_image", content=b"--x\r\nnot a part",
                             headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=60)
        assert garbled.status_code == 400, garbled.text
        assert httpx.post(f"{url}/classify", files=uploads[:1], timeout=60).status_code == 415
        assert httpx.post(f"{url}/classify_image", json={"images": [good]}, timeout=60).status_code == 200
