"""serving.session_fix: BentoML's dependency client refreshes its session without failing the requests in flight."""

from __future__ import annotations

import asyncio

from aiohttp import web

from serving import session_fix


async def _slow_answer(request: web.Request) -> web.Response:
    await asyncio.sleep(0.2)
    return web.json_response({"ok": True})


def test_requests_in_flight_survive_a_session_refresh_and_the_old_session_closes_later(tmp_path) -> None:
    from _bentoml_impl.client.proxy2 import SessionManager

    session_fix.patch()
    socket = tmp_path / "model.sock"  # a Unix socket, as `bentoml serve` gives a dependency

    async def scenario() -> tuple[list[int], int, bool, bool]:
        app = web.Application()
        app.router.add_post("/probabilities", _slow_answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(socket)).start()
        manager = SessionManager(f"file://{socket}", timeout=0.5, headers={}, max_requests=5)
        sessions = set()

        async def one() -> int:
            session = await manager.get_session()
            sessions.add(session)
            async with session.post("/probabilities", data=b"{}") as response:
                return response.status

        try:
            # 24 requests at once: the session is replaced four times while earlier ones still wait for answers
            statuses = await asyncio.gather(*(one() for _ in range(24)), return_exceptions=True)
            retired = [s for s in sessions if s is not manager._session]
            open_after_answers = all(not s.closed for s in retired)
            await asyncio.sleep(0.8)  # past the client's timeout: the retired sessions are closed
            closed_later = all(s.closed for s in retired)
            return statuses, len(sessions), open_after_answers, closed_later
        finally:
            await manager.close()
            await runner.cleanup()

    statuses, sessions, open_after_answers, closed_later = asyncio.run(scenario())
    assert statuses == [200] * 24, [repr(s) for s in statuses if s != 200][:3]
    assert sessions == 4, "the session was not replaced (BentoML does so once more than max_requests were sent)"
    assert open_after_answers and closed_later
