"""serving.timeout_fix: BentoML's TimeoutMiddleware lets go of a request once answered, and still answers 504."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving import timeout_fix

request_state: contextvars.ContextVar = contextvars.ContextVar("request_state")


class RequestState:
    """Stands for what a request's context holds (BentoML's: its OpenTelemetry span)."""


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.messages.append(message)


async def receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def answer_ok(scope: dict, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_an_answered_request_is_released_at_once_not_after_the_timeout() -> None:
    timeout_fix.patch()
    middleware = TimeoutMiddleware(answer_ok, timeout=60)

    async def one_request(sent: Sent) -> weakref.ref:
        state = RequestState()
        request_state.set(state)  # in this request's own context, as the tracing middleware sets its span
        await middleware({"type": "http"}, receive, sent)
        return weakref.ref(state)

    async def scenario() -> tuple[bool, list[int]]:
        sent = Sent()
        state = await asyncio.get_running_loop().create_task(one_request(sent))
        await asyncio.sleep(0)  # the finished task's own callbacks run and let go of its context
        gc.collect()
        statuses = [message["status"] for message in sent.messages if message["type"] == "http.response.start"]
        return state() is None, statuses

    released, statuses = asyncio.run(scenario())
    assert statuses == [200]
    # Unpatched, the armed 60 s timer holds a copy of the request's context, and with it the request's state.
    assert released, "the request's context is still alive after its answer"


def test_a_request_past_the_timeout_still_gets_a_504_and_its_handler_is_cancelled() -> None:
    timeout_fix.patch()
    cancelled = asyncio.Event()

    async def never_answers(scope: dict, receive, send) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> list[dict]:
        sent = Sent()
        await TimeoutMiddleware(never_answers, timeout=0.05)({"type": "http"}, receive, sent)
        await asyncio.wait_for(cancelled.wait(), timeout=5)
        return sent.messages

    messages = asyncio.run(scenario())
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 504
    assert b"0.05 seconds" in messages[1]["body"]


def test_the_service_applies_the_fix_when_imported(tmp_path) -> None:
    # In a fresh interpreter, since this module patched the class already: what `bentoml serve` imports must patch it.
    check = ("from bentoml._internal.server.http.traffic import TimeoutMiddleware\n"
             "from _bentoml_impl.client.proxy2 import SessionManager\n"
             "before = TimeoutMiddleware.__call__\n"
             "import serving.service\n"
             "print(before.__module__, TimeoutMiddleware.__call__.__module__, SessionManager.get_session.__module__)")
    done = subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120, env=os.environ | {"BENTOML_HOME": str(tmp_path / "bentoml")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["bentoml._internal.server.http.traffic", "serving.timeout_fix",
                                   "serving.session_fix"]  # and serving.session_fix's patch
