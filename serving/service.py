"""The BentoML service that serves the champion classifier from the BentoML model store.

Start it from the project root with `bentoml serve serving.service:TunelineService`; host and port come from the
serve block of params.yaml (--host/--port override them). It serves the champion (`tuneline models` shows it;
`tuneline promote` / `tuneline rollback` change it); TUNELINE_MODEL_TAG picks another stored model. Pre- and post-processing live in components.predict, shared with evaluation.

    POST /classify  {"texts": ["a gripping film", ...]}
    -> 200 [{"label": "pos", "probability": 0.93, "probabilities": {"neg": 0.07, "pos": 0.93}}, ...]
    -> 400 {"error": "...", "detail": [...]} for a malformed request; 415 for a body that is not JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from components.config import PARAMS_FILE, load_params
from components.registry import champion

MODEL_TAG_ENV = "TUNELINE_MODEL_TAG"
CLASSIFY_ROUTE = "/classify"

# BentoML reads the batching limits, the request schema and the model reference when the class is defined, so the
# params load at import. The path is resolved against this file, not the working directory, so the same params apply
# under `bentoml serve` from the project root and inside a built Bento (whose src/ holds params.yaml).
_params = load_params(Path(__file__).resolve().parents[1] / PARAMS_FILE)
_serve = _params.serve


class ClassifyRequest(BaseModel):
    """The texts to classify; each is normalised exactly as the training data was."""

    model_config = ConfigDict(extra="forbid", title="ClassifyRequest")

    texts: Annotated[
        list[Annotated[str, Field(max_length=_serve.max_text_chars)]],
        Field(
            min_length=1,
            max_length=_serve.max_texts_per_request,
            description=f"1 to {_serve.max_texts_per_request} texts of at most {_serve.max_text_chars} characters each",
        ),
    ]


class LabelPrediction(BaseModel):
    """One text's most likely label, its probability, and the probability of every label (summing to 1)."""

    label: str
    probability: float
    probabilities: dict[str, float]


class JsonBodyOnly:
    """ASGI middleware: answer 415 to a POST on `paths` whose body is declared as anything but JSON.

    BentoML would otherwise hand form and multipart bodies to its form parser, which fails with a 500 on garbage.
    """

    def __init__(self, app: Any, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            declared = dict(scope["headers"]).get(b"content-type", b"application/json")
            media_type = declared.split(b";")[0].strip().decode("latin-1").lower()
            if media_type != "application/json":
                response = JSONResponse(
                    {"error": f"the body must be JSON sent as Content-Type: application/json, got {media_type!r}"},
                    status_code=415,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@bentoml.service(name="tuneline", http={"host": _serve.host, "port": _serve.port})
class TunelineService:
    """Classifies texts with the model the pipeline's package stage put in the BentoML model store."""

    # At class scope, so that `bentoml build` records the model and carries it into the Bento: the champion (the
    # registry's pointer), unless TUNELINE_MODEL_TAG names another; the newest stored one if none was promoted.
    model = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV) or champion(_params.package.model_name)
                                      or f"{_params.package.model_name}:latest")

    def __init__(self) -> None:
        from components.predict import Classifier

        self.model_tag = _model_tag()
        stored = bentoml.models.BentoModel(self.model_tag).stored
        if stored is None:
            raise RuntimeError(
                f"model {self.model_tag} is not in the BentoML model store at "
                f"{os.environ.get('BENTOML_HOME', '~/bentoml')}; run the pipeline up to the package stage, "
                f"point BENTOML_HOME at the store that holds it, or set {MODEL_TAG_ENV} to a stored tag"
            )
        self.classifier = Classifier.load(stored.path)

    # BentoML counts a batch in texts and splits a request that does not fit; the split-off rest then waits in the
    # queue, and BentoML sheds work that waited longer than max_latency_ms with a 503. So a dispatch may hold a whole
    # request (max_texts_per_request texts), and serve.max_batch_size bounds each forward pass of the model instead.
    @bentoml.api(
        route=CLASSIFY_ROUTE,
        input_spec=ClassifyRequest,
        batchable=True,
        max_batch_size=max(_serve.max_texts_per_request, _serve.max_batch_size, 2),
        max_latency_ms=_serve.max_latency_ms,
    )
    def classify(self, texts: list[str]) -> list[LabelPrediction]:
        """One prediction per text, in request order; concurrent requests are merged by adaptive batching."""
        predictions = self.classifier.predict(texts, batch_size=_serve.max_batch_size)
        return [
            LabelPrediction(label=p.label, probability=p.probability, probabilities=p.probabilities)
            for p in predictions
        ]


def _model_tag() -> str:
    """The tag a built Bento recorded when serving from one, else the class-scope reference.

    BentoML re-resolves `name:latest` against the local store even for a Bento, which would serve a model packaged
    after the build instead of the one the Bento was built with.
    """
    if TunelineService.bento is not None:
        recorded = next(info for info in TunelineService.bento.info.services if info.name == TunelineService.name)
        return str(recorded.models[0].tag)
    return str(TunelineService.inner.model.tag)


TunelineService.add_asgi_middleware(JsonBodyOnly, paths=(CLASSIFY_ROUTE,))
