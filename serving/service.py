"""The BentoML service that serves the champion classifier from the BentoML model store.

Start it from the project root with `bentoml serve serving.service:TunelineService` (or `make serve`); host, port,
limits and batching come from the serve block of params.yaml, or of the file TUNELINE_PARAMS names (a Bento that
`tuneline build` made carries its project's params and model tag as Bento arguments). It serves the
champion (`tuneline models` shows it; `tuneline promote` / `tuneline rollback` change it); TUNELINE_MODEL_TAG picks
another stored model. Pre- and post-processing live in components.predict, shared with the evaluate stage.

    POST /classify  {"texts": ["a gripping film", ...], "top_k": 2}
    -> 200 {"model": "tuneline-text:abc", "predictions": [{"label": "fresh", "probability": 0.93,
            "top_k": [{"label": "fresh", "probability": 0.93}, {"label": "rotten", "probability": 0.05}]}, ...]}
    GET /model -> the served model's tag, labels, test metrics and data version
    -> 400 for a malformed request, 401 without the API key (when TUNELINE_API_KEY is set), 413 for a body over
       serve.max_body_bytes, 415 for a body that is not JSON, 503 when a request waited past serve.max_latency_ms.

BentoML's /livez, /readyz, /metrics and /docs (OpenAPI) stay on and need no key.
"""

from __future__ import annotations

import hmac
import logging
import os
import typing
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from fastapi import FastAPI
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from components import modalities
from components.config import PARAMS_FILE, Params, ServeParams, load_params, parse_params
from components.predict import ranked_labels
from components.registry import champion
from serving import session_fix, timeout_fix
from serving.runner import ModelRunner, per_request, request_batcher

timeout_fix.patch()  # BentoML's request timeout kept every request alive for 60 s after its answer
session_fix.patch()  # its client of the model service (layout split) dropped the requests in flight every 100

MODEL_TAG_ENV = "TUNELINE_MODEL_TAG"
PARAMS_ENV = "TUNELINE_PARAMS"
API_KEY_ENV = "TUNELINE_API_KEY"
MONITOR_DIR_ENV = "TUNELINE_MONITOR_DIR"
LAYOUT_ENV = "TUNELINE_SERVE_LAYOUT"  # overrides serve.layout; `tuneline build` sets split, so a Bento holds both
CLASSIFY_ROUTE = modalities.get("text").route  # each modality names the route that takes its items
CLASSIFY_IMAGE_ROUTE = modalities.get("image").route
CLASSIFY_AUDIO_ROUTE = modalities.get("audio").route
MODEL_ROUTE = "/model"



def _service_params() -> Params:
    """The params the service runs with: the file TUNELINE_PARAMS names; else, in a Bento `tuneline build` made, the
    params it recorded (so an image or speech Bento serves with its own modality's settings); else params.yaml beside
    this code (the project root, or a Bento's src/), whatever the working directory."""
    if os.environ.get(PARAMS_ENV):
        return load_params(os.environ[PARAMS_ENV])
    recorded = getattr(bentoml.use_arguments(), "params", None)
    if recorded is not None:
        return parse_params(recorded, source="the params recorded in this Bento by `tuneline build`")
    return load_params(Path(__file__).resolve().parents[1] / PARAMS_FILE)


# BentoML reads the limits, the request schema and the model reference when the class is defined, so the params load
# at import.
_params = _service_params()
_serve = _params.serve
_monitor = _params.monitor
# Where BentoML's monitoring API writes what the service answers (components/monitor.py); relative to the server's
# working directory, which `tuneline serve` sets to the project root.
_monitor_dir = Path(os.environ.get(MONITOR_DIR_ENV) or _monitor.dir).resolve()
logger = logging.getLogger(__name__)


_TEXTS = modalities.get("text")()  # /classify's items, checked as the text modality checks a request's texts


def _not_blank(text: str) -> str:
    """Refuse a text that normalisation (as in training) leaves empty, as the text modality refuses it: there is
    nothing to classify."""
    return _TEXTS.decode_request(text)


class ClassifyRequest(BaseModel):
    """The texts to classify; each is normalised exactly as the training data was."""

    model_config = ConfigDict(extra="forbid", title="ClassifyRequest")

    texts: Annotated[
        list[Annotated[str, Field(max_length=_serve.max_text_chars), AfterValidator(_not_blank)]],
        Field(
            min_length=1,
            max_length=_serve.max_texts_per_request,
            description=f"1 to {_serve.max_texts_per_request} texts of at most {_serve.max_text_chars} characters each",
        ),
    ]
    top_k: Annotated[int | None, Field(ge=1, description=(
        f"labels to return per text, most likely first (default {_serve.top_k}; more than the model has = all)"
    ))] = None


class ClassifyImageRequest(BaseModel):
    """The images to classify, each a base64-encoded PNG, JPEG, BMP, GIF, WEBP or TIFF file."""

    model_config = ConfigDict(extra="forbid", title="ClassifyImageRequest")

    images: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=1, max_length=_serve.max_texts_per_request,
              description=f"1 to {_serve.max_texts_per_request} base64-encoded image files"),
    ]
    top_k: Annotated[int | None, Field(ge=1, description=(
        f"labels to return per image, most likely first (default {_serve.top_k}; more than the model has = all)"
    ))] = None


class ClassifyAudioRequest(BaseModel):
    """The clips to classify, each a base64-encoded WAV, FLAC, OGG or MP3 file."""

    model_config = ConfigDict(extra="forbid", title="ClassifyAudioRequest")

    audio: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=1, max_length=_serve.max_texts_per_request,
              description=f"1 to {_serve.max_texts_per_request} base64-encoded audio files"),
    ]
    top_k: Annotated[int | None, Field(ge=1, description=(
        f"labels to return per clip, most likely first (default {_serve.top_k}; more than the model has = all)"
    ))] = None


class LabelProbability(BaseModel):
    label: str
    probability: float


class TextPrediction(BaseModel):
    """One text's most likely label and its probability, and the top_k labels with theirs, most likely first."""

    label: str
    probability: float
    top_k: list[LabelProbability]


class ClassifyResponse(BaseModel):
    """The tag of the model that answered, and one prediction per text, in request order."""

    model: str
    predictions: list[TextPrediction]


class ModelInfo(BaseModel):
    """What is being served: the stored model, its labels, the test metrics it was packaged with, its data version."""

    tag: str
    labels: list[str]
    champion: bool = Field(description="whether the registry names this model the champion")
    base_model: str | None = None
    metrics: dict[str, Any] | None = Field(None, description="the evaluate stage's test metrics of this model")
    data_version: dict[str, str] | None = Field(None, description="DVC md5 of the data sets it was trained on")
    code_revision: str | None = None
    decision: str | None = Field(None, description="the gate's decision when it was packaged")
    batching: bool
    device: str
    workers: int = Field(1, description="HTTP worker processes (layout single: each with its own copy of the model)")
    layout: str = Field("single", description="single: each worker runs the model; split: the workers parse and "
                                              "answer requests, one model process batches them on the device")
    runtime: str = Field("pytorch", description="what runs the network: pytorch, or the faster runtime the package "
                                                "stage exported and gated (onnx-int8, onnx)")
    runtime_reason: str | None = Field(None, description="why this runtime: the parity gate's figures, or why the "
                                                         "faster one is not serving")


info_app = FastAPI(title="tuneline model info")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class RequestGuard:
    """ASGI middleware in front of the API routes: the API key, the body size limit and the JSON-only rule.

    The key (when TUNELINE_API_KEY is set) is required on `protected` routes, as `Authorization: Bearer KEY` or
    `X-API-Key: KEY`. A POST body on `json_paths` is read here up to `max_body_bytes` (413 beyond, before anything
    parses it) and must be declared as JSON (415 otherwise: BentoML would hand form and multipart bodies to its form
    parser, which fails with a 500 on garbage). On `multipart_paths` a multipart/form-data body of image files is
    taken too: it is read here, within the same limit, and handed on as the JSON request with the files in base64,
    so both forms meet the same checks.
    """

    def __init__(self, app: Any, protected: tuple[str, ...], json_paths: tuple[str, ...], max_body_bytes: int,
                 multipart_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.protected = protected
        self.json_paths = json_paths
        self.multipart_paths = multipart_paths
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.protected:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._unauthorised(headers)
        if refusal is None and scope["method"] == "POST" and scope["path"] in self.json_paths:
            multipart = scope["path"] in self.multipart_paths and _media_type(headers) == "multipart/form-data"
            refusal = (None if multipart else self._not_json(headers)) or self._declared_too_large(headers)
            if refusal is None:
                body, refusal = await self._read_body(receive)
                if refusal is None and multipart:
                    body, refusal = await _multipart_as_json(scope, body)
                    scope = {**scope, "headers": [(name, value) for name, value in scope["headers"]
                                                  if name not in (b"content-type", b"content-length")]
                             + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
                if refusal is None:
                    receive = _replay(body)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _unauthorised(headers: dict[bytes, bytes]) -> JSONResponse | None:
        key = os.environ.get(API_KEY_ENV)
        if not key:
            return None
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        given = given or headers.get(b"x-api-key", b"").decode("latin-1").strip()
        if given and hmac.compare_digest(given.encode(), key.encode()):
            return None
        what = "a wrong API key" if given else "no API key"
        return _error(401, f"{what}: this server requires the key set in its {API_KEY_ENV}; "
                           "send it as the header 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                      {"WWW-Authenticate": "Bearer"})

    def _not_json(self, headers: dict[bytes, bytes]) -> JSONResponse | None:
        media_type = _media_type(headers)
        if media_type == "application/json":
            return None
        return _error(415, f"the body must be JSON sent as Content-Type: application/json, got {media_type!r}")

    def _declared_too_large(self, headers: dict[bytes, bytes]) -> JSONResponse | None:
        declared = headers.get(b"content-length")  # uvicorn has already answered 400 to one that is not a number
        return self._too_large() if declared is not None and int(declared) > self.max_body_bytes else None

    def _too_large(self) -> JSONResponse:
        return _error(413, f"the request body is larger than {self.max_body_bytes} bytes (serve.max_body_bytes); "
                           "send fewer or shorter texts per request")

    async def _read_body(self, receive: Any) -> tuple[bytes, JSONResponse | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", _error(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _media_type(headers: dict[bytes, bytes]) -> str:
    declared = headers.get(b"content-type", b"application/json")
    return declared.split(b";")[0].strip().decode("latin-1").lower()


# the routes that also take files as multipart/form-data: the file field (repeated) and an example file
MULTIPART_FILES = {CLASSIFY_IMAGE_ROUTE: ("images", "digit.png"), CLASSIFY_AUDIO_ROUTE: ("audio", "clip.wav")}


async def _multipart_as_json(scope: dict[str, Any], body: bytes) -> tuple[bytes, JSONResponse | None]:
    """A multipart/form-data request of files (the route's field, repeated, and optionally `top_k`) as the JSON body
    the route takes, each file's bytes in base64; or a 400 that says what was wrong with it."""
    import base64
    import json

    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    field, example = MULTIPART_FILES[scope["path"]]
    fields = (field, "top_k")
    how = f"send each file as a file field named {field!r} (curl -F {field}=@{example}), and top_k as a field"
    try:
        form = await Request(scope, _replay(body)).form(max_files=_serve.max_texts_per_request,
                                                        max_fields=len(fields))
    except (MultiPartException, HTTPException, ValueError) as exc:  # HTTPException: starlette's wrapping of the first
        detail = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
        return b"", _error(400, f"the multipart body could not be read ({detail}); {how}")
    try:
        unknown = sorted(set(form.keys()) - set(fields))
        if unknown:
            return b"", _error(400, f"unknown form field(s) {unknown}; {how}")
        files = form.getlist(field)
        if not files:
            return b"", _error(400, f"no {field!r} file in the form; {how}")
        encoded = []
        for index, item in enumerate(files):
            if isinstance(item, str):
                return b"", _error(400, f"{field}[{index}] is a text field, not a file; {how}")
            encoded.append(base64.b64encode(await item.read()).decode("ascii"))
        payload: dict[str, Any] = {field: encoded}
        top_k = form.get("top_k")
        if top_k is not None:
            if not isinstance(top_k, str) or not top_k.strip().isdigit():
                return b"", _error(400, f"top_k must be a whole number, got {top_k!r}")
            payload["top_k"] = int(top_k)
        return json.dumps(payload).encode(), None
    finally:
        await form.close()


def _replay(body: bytes) -> Any:
    """An ASGI receive callable that hands over an already read body once, then waits like the real one would."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _overloaded() -> Exception:
    from bentoml.exceptions import ServiceUnavailable

    return ServiceUnavailable(
        f"the server is overloaded: the request waited more than serve.max_latency_ms ({_serve.max_latency_ms} ms) "
        "for the model; retry later, or send fewer texts at once"
    )


def _serving_layout() -> str:
    """serve.layout (or TUNELINE_SERVE_LAYOUT), with auto resolved: split on a machine with a CUDA device (the model
    on it, HTTP in the API workers), single otherwise."""
    layout = os.environ.get(LAYOUT_ENV) or _serve.layout
    choices = typing.get_args(ServeParams.model_fields["layout"].annotation)
    if layout not in choices:
        raise RuntimeError(f"{LAYOUT_ENV}={layout!r}: the serving layout is one of {', '.join(choices)}")
    if layout != "auto":
        return layout
    import torch

    return "split" if torch.cuda.is_available() else "single"


LAYOUT = _serving_layout()
# The stored model to serve: TUNELINE_MODEL_TAG, else the Bento's recorded `model` argument, else the champion (the
# registry's pointer), else the newest stored one.
_MODEL_REFERENCE = (os.environ.get(MODEL_TAG_ENV) or getattr(bentoml.use_arguments(), "model", None)
                    or champion(_params.package.model_name) or f"{_params.package.model_name}:latest")
_LOGGING = {"access": {"enabled": _serve.access_log}}
_MONITORING = {"enabled": _monitor.log, "type": "default", "options": {"log_path": str(_monitor_dir)}}


def _stored(service: Any) -> Any:
    """The stored model a service class declares, or an error that says how to get it into the store."""
    reference = _model_tag(service)
    stored = bentoml.models.BentoModel(reference).stored
    if stored is None:
        raise RuntimeError(
            f"model {reference} is not in the BentoML model store at "
            f"{os.environ.get('BENTOML_HOME', '~/bentoml')}; run the pipeline up to the package stage, "
            f"point BENTOML_HOME at the store that holds it, or set {MODEL_TAG_ENV} to a stored tag"
        )
    return stored


@bentoml.service(name="tuneline-model", workers=1, logging=_LOGGING, monitoring=_MONITORING)
class TunelineModel:
    """serve.layout split: the one process that holds the model on the device and batches what the API workers send.
    It listens on a socket of its own (a Unix socket under `bentoml serve`), never on serve.host/port."""

    model = bentoml.models.BentoModel(_MODEL_REFERENCE)

    def __init__(self) -> None:
        self.runner = ModelRunner(_stored(TunelineModel), _params, _overloaded, _monitor_dir)

    @bentoml.api
    async def probabilities(self, requests: list[list[Any]]) -> list[list[list[float]]]:
        """Several requests' decoded items (checked by the API worker that merged them) -> each request's
        probabilities; merged in turn with what the other workers send. Each request is sampled for monitoring here."""
        answers = per_request(await self.runner.probabilities([item for request in requests for item in request]),
                              requests)
        for items, answer in zip(requests, answers, strict=True):
            self.runner.watch(items, answer)
        return [answer.tolist() for answer in answers]

    @bentoml.api
    def describe(self) -> dict[str, str]:
        """What GET /model says of the network: its device and runtime, and why that runtime."""
        return {"device": self.runner.device, "runtime": self.runner.runtime["runtime"],
                "reason": self.runner.runtime["reason"]}


@bentoml.asgi_app(info_app)
@bentoml.service(name="tuneline", workers=_serve.workers, http={"host": _serve.host, "port": _serve.port},
                 logging=_LOGGING, monitoring=_MONITORING)
class TunelineService:
    """Classifies texts with the model the pipeline's package stage put in the BentoML model store.

    serve.layout single: each of serve.workers processes holds the model and answers HTTP. split: serve.workers API
    processes parse, check and normalise requests and answer them; one TunelineModel process runs the network.
    """

    # At class scope, so that `bentoml build` records the model and carries it into the Bento.
    model = bentoml.models.BentoModel(_MODEL_REFERENCE)
    if LAYOUT == "split":
        model_service = bentoml.depends(TunelineModel)

    def __init__(self) -> None:
        stored = _stored(TunelineService)
        self.model_tag = str(stored.tag)  # name:latest resolved, so answers name the exact model
        self.runner: ModelRunner | None = None
        if LAYOUT == "single":
            self.runner = ModelRunner(stored, _params, _overloaded, _monitor_dir, processes=_serve.workers)
            self.modality, self.labels = self.runner.modality, self.runner.labels
            self.info = _model_info(self.model_tag, stored, self.labels, self.runner.device, self.runner.runtime)
        else:  # the API worker checks requests against the model's modality; the network lives in TunelineModel
            from components.predict import read_meta

            self.modality = modalities.for_model(stored.path, _params)
            self.labels = list(read_meta(stored.path)["labels"])
            self.info = None  # completed from TunelineModel on the first GET /model
            self._stored = stored
            # The worker's concurrent requests go to the model service together, one call at a time (it merges them
            # with the other workers' calls): the model process answers one internal request per call, not per
            # client request, so its own HTTP handling does not become the limit the split is there to lift.
            self._forward = request_batcher(self._ask_model, _serve, _overloaded) if _serve.batching else None

    async def _probabilities(self, items: list[Any]) -> np.ndarray:
        if self.runner is not None:
            probabilities = await self.runner.probabilities(items)
            self.runner.watch(items, probabilities)
            return probabilities
        if self._forward is not None:
            return await self._forward(items)
        return (await self._ask_model([items]))[0]

    async def _ask_model(self, requests: list[list[Any]]) -> list[np.ndarray]:
        """Several requests' items -> each one's probabilities, from the model service (layout split)."""
        from bentoml.exceptions import BentoMLException

        try:
            answers = await self.model_service.probabilities(requests)
        except BentoMLException as exc:  # the model service's refusal (a 503 when overloaded) with its own message
            raise type(exc)(_message_of(str(exc)), error_code=exc.error_code) from None
        return [np.asarray(answer, dtype=np.float32) for answer in answers]

    @bentoml.api(route=CLASSIFY_ROUTE, input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, texts: list[str], top_k: int | None = None) -> ClassifyResponse:
        """One prediction per text, in request order; concurrent requests share forward passes (adaptive batching).

        Each text gets its most likely label and probability, and the `top_k` most likely labels with theirs.
        """
        return await self._classify(CLASSIFY_ROUTE, texts, top_k)

    @bentoml.api(route=CLASSIFY_IMAGE_ROUTE, input_spec=ClassifyImageRequest, output_spec=ClassifyResponse)
    async def classify_image(self, images: list[str], top_k: int | None = None) -> ClassifyResponse:
        """One prediction per image, in request order; batched with concurrent requests like texts.

        Each image is a base64-encoded file, checked as training data is (readable, within image.* size, pixel and
        channel limits); a bad one gets a 400 naming its position and problem.
        """
        return await self._classify(CLASSIFY_IMAGE_ROUTE, images, top_k)

    @bentoml.api(route=CLASSIFY_AUDIO_ROUTE, input_spec=ClassifyAudioRequest, output_spec=ClassifyResponse)
    async def classify_audio(self, audio: list[str], top_k: int | None = None) -> ClassifyResponse:
        """One prediction per clip, in request order; batched with concurrent requests like texts.

        Each clip is a base64-encoded file (or a multipart file field `audio`), checked as training data is
        (readable, within audio.* rate, channel, length, level and clipping limits); a bad one gets a 400 naming
        its position and problem.
        """
        return await self._classify(CLASSIFY_AUDIO_ROUTE, audio, top_k)

    async def _classify(self, route: str, items: list[Any], top_k: int | None) -> ClassifyResponse:
        """The answer of a route: refused when the served model takes its items at another route, each item decoded
        by the model's modality (a 400 naming the bad one), then batched and ranked."""
        from bentoml.exceptions import BadInput

        modality = self.modality
        if route != modality.route:
            raise BadInput(f"{self.model_tag} classifies {modality.items}: POST them to {modality.route} as "
                           f"{modality.request_example}")
        decoded = []
        for index, item in enumerate(items):
            try:
                decoded.append(modality.decode_request(item))
            except ValueError as exc:
                raise BadInput(f"{modality.items}[{index}] {exc}") from None
        probabilities = await self._probabilities(decoded)
        return self._answer(probabilities, top_k)

    def _answer(self, probabilities: np.ndarray, top_k: int | None) -> ClassifyResponse:
        """The response: per row its most likely label and the top_k labels with their probabilities."""
        predictions = []
        for row in probabilities:
            ranked = [LabelProbability(label=label, probability=p)
                      for label, p in ranked_labels(row, self.labels, top_k or _serve.top_k)]
            predictions.append(TextPrediction(label=ranked[0].label, probability=ranked[0].probability, top_k=ranked))
        return ClassifyResponse(model=self.model_tag, predictions=predictions)

    @info_app.get(MODEL_ROUTE, response_model=ModelInfo, summary="The model being served")
    def model_info(self) -> ModelInfo:
        """Tag, labels, test metrics, data version and code revision of the model this server answers with."""
        if self.info is None:  # split layout: the network's device and runtime are the model service's to say
            network = self.model_service.to_sync.describe()
            self.info = _model_info(self.model_tag, self._stored, self.labels, network["device"], network)
        # Read the registry now: `tuneline promote` or `rollback` may have moved the pointer since this server started.
        return self.info.model_copy(update={"champion": champion(self.model_tag.split(":", 1)[0]) == self.model_tag})


def _message_of(body: str) -> str:
    """The message of a BentoML error response body ({"error": "..."}), or the body itself."""
    import json

    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body


def _model_info(tag: str, stored: Any, labels: list[str], device: str, runtime: dict[str, str]) -> ModelInfo:
    """What GET /model reports, from the stored model's package.json (written by the package stage) when it has one,
    and the network's runtime (fastpath.load_served's verdict: runtime and reason)."""
    from components.io import read_json
    from components.package import RECORD_FILE

    record_path = Path(stored.path) / RECORD_FILE
    record = read_json(record_path) if record_path.is_file() else {}
    provenance = record.get("provenance", {})
    return ModelInfo(
        tag=tag,
        labels=labels,
        champion=False,
        base_model=provenance.get("base_model") or stored.info.metadata.get("base_model"),
        metrics=record.get("metrics", {}).get("model"),
        data_version=provenance.get("data_version"),
        code_revision=provenance.get("code_revision"),
        decision=record.get("gate", {}).get("decision"),
        batching=_serve.batching,
        device=device,
        workers=_serve.workers,
        layout=LAYOUT,
        runtime=runtime["runtime"],
        runtime_reason=runtime["reason"],
    )


def _model_tag(service: Any) -> str:
    """The tag a built Bento recorded for this service when serving from one, else its class-scope reference.

    BentoML re-resolves `name:latest` against the local store even for a Bento, which would serve a model packaged
    after the build instead of the one the Bento was built with.
    """
    if service.bento is not None:
        recorded = next(info for info in service.bento.info.services if info.name == service.name)
        return str(recorded.models[0].tag)
    return str(service.inner.model.tag)


TunelineService.add_asgi_middleware(RequestGuard, protected=(CLASSIFY_ROUTE, CLASSIFY_IMAGE_ROUTE,
                                                                CLASSIFY_AUDIO_ROUTE, MODEL_ROUTE),
                                    json_paths=(CLASSIFY_ROUTE, CLASSIFY_IMAGE_ROUTE, CLASSIFY_AUDIO_ROUTE),
                                    multipart_paths=tuple(MULTIPART_FILES), max_body_bytes=_serve.max_body_bytes)
