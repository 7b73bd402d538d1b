"""BentoML's request timeout without its retention of every request for the length of the timeout.

BentoML 1.4.40's `TimeoutMiddleware` (bentoml/_internal/server/http/traffic.py) arms a timer per request with
`loop.call_later(timeout, ...)` and never cancels it. The timer keeps a copy of the request's context alive, and with
it the request's OpenTelemetry span, for `traffic.timeout` seconds (60 by default) after the answer was sent: at 60
requests/s that is some 3,600 requests' worth of objects, about 30 each, that every full collection of Python's
garbage collector walks. Measured with bench/serve_speed.py on 2 CPU cores: full collections of 40-280 ms, growing
with the load, and a p99 at concurrency 1 that climbed from 31 to 290 ms over a minute of load.

`patch()` replaces the middleware's `__call__` with the same logic that arms its timer in an empty context and
cancels it once the response has started (the timeout bounds the time to the first byte, as before): a request that
timed out still gets BentoML's 504.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any


async def _call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    from starlette.responses import JSONResponse

    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

    async def _send(message: dict[str, Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handling = asyncio.ensure_future(self.app(scope, receive, _send))
    try:
        await waiter
    except TimeoutError:  # asyncio.TimeoutError, which _set_timer_out raises
        if handling.cancel():
            response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
            await response(scope, receive, send)
        return
    finally:
        timer.cancel()
    await handling


def patch() -> None:
    """Make BentoML's TimeoutMiddleware release each request once answered (idempotent)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    TimeoutMiddleware.__call__ = _call
