"""BentoML's client for a dependent service (`bentoml.depends`) without its dropping of requests in flight.

BentoML 1.4.40's `SessionManager` (_bentoml_impl/client/proxy2.py) replaces its aiohttp session every 100 requests
(or 5 minutes) and closes the old one at once, with the requests still running on it: each of them fails with
`ServerDisconnectedError` and its client gets a 500. Measured with bench/serve_speed.py in serve.layout split on 2
CPU cores: 25% of the requests at concurrency 32 (337 of 1,318), a few at concurrency 8, none at 1. BentoML's
issues #5540 and #5544 report the same refresh from the other side ("Session is closed").

`patch()` keeps the refresh and retires the old session instead: it is closed once every request begun on it has had
the client's whole timeout to finish.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def _get_session(self: Any) -> Any:
    if self._session is None or self._should_refresh():
        if self._session is not None:
            _retire(self._session, self._timeout.total or 60.0)
        self._session = self._make_client()
        self._created_at = time.monotonic()
        self._request_count = 0
    self._request_count += 1
    return self._session


_retiring: set[asyncio.Task] = set()  # strong references: the event loop keeps only weak ones to its tasks


def _retire(session: Any, after_s: float) -> None:
    """Close `session` after `after_s` seconds, when no request begun on it can still be waiting."""
    async def close_later() -> None:
        await asyncio.sleep(after_s)
        await session.close()

    task = asyncio.get_running_loop().create_task(close_later())
    _retiring.add(task)
    task.add_done_callback(_retiring.discard)


def patch() -> None:
    """Make BentoML's dependency client let a replaced session's requests finish (idempotent)."""
    from _bentoml_impl.client.proxy2 import SessionManager

    SessionManager.get_session = _get_session
