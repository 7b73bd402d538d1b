"""serving.batching.GreedyBatcher: merging, order, limits, shedding and errors, with a plain function as the model."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.batching import GreedyBatcher


class Overloaded(Exception):
    pass


class Model:
    """Upper-cases texts; records each call's requests; the first call can be held until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[list[list[str]]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, requests: list[list[str]]) -> list[list[str]]:
        self.calls.append(requests)
        self.started.set()
        self.release.wait(timeout=10)
        return [[text.upper() for text in texts] for texts in requests]


def batcher(model: Model, max_texts: int = 100, max_latency_s: float = 60.0, **kwargs) -> GreedyBatcher:
    return GreedyBatcher(model, max_texts=max_texts, max_latency_s=max_latency_s, overloaded=Overloaded, **kwargs)


async def hold_then_send(batch: GreedyBatcher, model: Model, requests: list[list[str]]) -> list:
    """Send requests[0]; while the model holds it, queue the others; then release and gather every answer."""
    first = asyncio.ensure_future(batch(requests[0]))
    await asyncio.to_thread(model.started.wait, 10)
    rest = [asyncio.ensure_future(batch(texts)) for texts in requests[1:]]
    await asyncio.sleep(0.05)  # let the queued requests reach the batcher
    model.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_a_lone_request_goes_alone_and_gets_its_own_answer() -> None:
    model = Model()
    assert asyncio.run(batcher(model)(["a", "b"])) == ["A", "B"]
    assert model.calls == [[["a", "b"]]]


def test_requests_arriving_while_the_model_is_busy_share_the_next_call() -> None:
    model = Model(hold_first=True)
    sizes: list[int] = []
    requests = [["first"], ["x"], ["y", "z"], ["w"]]

    answers = asyncio.run(hold_then_send(batcher(model, on_batch=sizes.append), model, requests))

    assert answers == [["FIRST"], ["X"], ["Y", "Z"], ["W"]]  # each request its own answer, in its order
    assert model.calls == [[["first"]], [["x"], ["y", "z"], ["w"]]]
    assert sizes == [1, 4]


def test_each_request_reports_its_time_in_the_queue() -> None:
    model = Model(hold_first=True)
    waits: list[float] = []
    requests = [["first"], ["a"], ["b"]]
    answers = asyncio.run(hold_then_send(batcher(model, on_wait=waits.append), model, requests))

    assert answers == [["FIRST"], ["A"], ["B"]]
    assert len(waits) == 3  # one per request, when the model starts on it
    assert 0 <= waits[0] < 0.05  # the model was idle: no wait
    assert min(waits[1:]) >= 0.04  # queued behind the held call, which hold_then_send released after 0.05 s


async def answered_then_more(batch: GreedyBatcher, model: Model) -> list:
    """The model holds a call for "a" while "b" queues; on release, "c" arrives as soon as "a" is answered (as a
    client just answered sends its next request)."""
    first = asyncio.ensure_future(batch(["a"]))
    await asyncio.to_thread(model.started.wait, 10)
    queued = asyncio.ensure_future(batch(["b"]))
    await asyncio.sleep(0.05)
    model.release.set()
    answer = await first
    return [answer, *await asyncio.gather(queued, batch(["c"]))]


def test_gathering_lets_the_clients_just_answered_join_the_next_call() -> None:
    model = Model(hold_first=True)
    answers = asyncio.run(answered_then_more(batcher(model, gather=1.0), model))

    assert answers == [["A"], ["B"], ["C"]]
    assert model.calls == [[["a"]], [["b"], ["c"]]]  # b waited for c, for at most the first call's duration


def test_without_gathering_the_queued_request_goes_alone() -> None:
    model = Model(hold_first=True)
    answers = asyncio.run(answered_then_more(batcher(model, gather=0.0), model))

    assert answers == [["A"], ["B"], ["C"]]
    assert model.calls == [[["a"]], [["b"]], [["c"]]]


def test_gathering_stops_once_the_next_call_is_full() -> None:
    model = Model(hold_first=True)

    async def scenario() -> list:
        # A gather window of 100 x the held call (about 5 s): a full queue must not sit it out.
        return await asyncio.wait_for(
            answered_then_more(batcher(model, gather=100.0, full_texts=1), model), timeout=3)

    assert asyncio.run(scenario()) == [["A"], ["B"], ["C"]]
    assert model.calls == [[["a"]], [["b"]], [["c"]]]


def test_a_lone_request_after_a_call_does_not_wait_for_company() -> None:
    model = Model(hold_first=True)

    async def scenario() -> list:
        batch = batcher(model, gather=100.0)
        first = asyncio.ensure_future(batch(["a"]))
        await asyncio.to_thread(model.started.wait, 10)
        await asyncio.sleep(0.05)
        model.release.set()
        # Nothing queued when the call ended: the next request finds the model idle and goes at once.
        return [await first, await asyncio.wait_for(batch(["b"]), timeout=3)]

    assert asyncio.run(scenario()) == [["A"], ["B"]]
    assert model.calls == [[["a"]], [["b"]]]


def test_a_call_takes_whole_requests_up_to_max_texts() -> None:
    model = Model(hold_first=True)
    requests = [["hold"], ["a", "b"], ["c", "d"], ["e"], ["f", "g", "h", "i", "j"]]

    answers = asyncio.run(hold_then_send(batcher(model, max_texts=4), model, requests))

    assert answers[1:] == [["A", "B"], ["C", "D"], ["E"], ["F", "G", "H", "I", "J"]]
    # never split: 2 + 2 fit, "e" would make 5; the 5-text request is over the limit and goes alone
    assert model.calls[1:] == [[["a", "b"], ["c", "d"]], [["e"]], [["f", "g", "h", "i", "j"]]]


def test_a_request_that_waited_past_max_latency_is_refused_and_the_others_served() -> None:
    model = Model(hold_first=True)
    answers = asyncio.run(hold_then_send(batcher(model, max_latency_s=0.01), model, [["hold"], ["late"]]))

    assert answers[0] == ["HOLD"]
    assert isinstance(answers[1], Overloaded)
    assert model.calls == [[["hold"]]]


def failing(requests: list[list[str]]) -> list:
    """A model that fails any call holding the text "boom", and otherwise counts each request's texts."""
    if any("boom" in texts for texts in requests):
        raise RuntimeError("model failed")
    return [len(texts) for texts in requests]


def test_a_model_error_reaches_every_request_of_the_call_and_the_batcher_goes_on() -> None:
    async def scenario() -> tuple:
        batch = GreedyBatcher(failing, max_texts=10, max_latency_s=60, overloaded=Overloaded)
        with pytest.raises(RuntimeError, match="model failed"):
            await batch(["boom"])
        return await batch(["fine", "too"])

    assert asyncio.run(scenario()) == 2


def test_a_coroutine_predict_is_awaited_in_the_loop_and_merges_alike() -> None:
    """The split layout's API worker: `predict` is a call of the model service, awaited rather than run in a thread;
    what queues while it is out goes in the next call, and its error reaches each request of the call."""
    calls: list[list[list[str]]] = []
    out = asyncio.Event()
    back = asyncio.Event()

    async def remote(requests: list[list[str]]) -> list[list[str]]:
        calls.append(requests)
        out.set()
        await back.wait()
        if any("fail" in texts for texts in requests):
            raise Overloaded("the model service said no")
        return [[text.upper() for text in texts] for texts in requests]

    async def scenario() -> list:
        batch = GreedyBatcher(remote, max_texts=100, max_latency_s=60.0, overloaded=Overloaded)
        first = asyncio.ensure_future(batch(["first"]))
        await out.wait()
        rest = [asyncio.ensure_future(batch(texts)) for texts in (["x"], ["y", "z"])]
        await asyncio.sleep(0.01)
        back.set()
        answers = await asyncio.gather(first, *rest)
        failing = await asyncio.gather(batch(["fail"]), return_exceptions=True)
        return [*answers, *failing]

    answers = asyncio.run(scenario())

    assert answers[:3] == [["FIRST"], ["X"], ["Y", "Z"]]
    assert isinstance(answers[3], Overloaded)
    assert calls[:2] == [[["first"]], [["x"], ["y", "z"]]]


class Gate:
    """A model whose calls each wait until released one by one; records which calls were in progress together."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_progress: list[list[str]] = []
        self.most_at_once = 0
        self.calls: list[list[list[str]]] = []
        self.releases = threading.Semaphore(0)

    def __call__(self, requests: list[list[str]]) -> list[list[str]]:
        texts = [text for request in requests for text in request]
        with self.lock:
            self.calls.append(requests)
            self.in_progress.append(texts)
            self.most_at_once = max(self.most_at_once, len(self.in_progress))
        self.releases.acquire(timeout=10)
        with self.lock:
            self.in_progress.remove(texts)
        return [[text.upper() for text in request] for request in requests]

    async def running(self, count: int) -> None:
        """Until `count` calls are in progress."""
        for _ in range(500):
            with self.lock:
                if len(self.in_progress) >= count:
                    return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} calls never ran at once: {self.in_progress}")


def test_with_two_call_slots_a_second_request_runs_beside_the_first_and_a_third_waits_for_a_slot() -> None:
    gate = Gate()

    async def scenario() -> list:
        batch = batcher(gate, calls=2)
        first = asyncio.ensure_future(batch(["a"]))
        await gate.running(1)
        second = asyncio.ensure_future(batch(["b"]))
        await gate.running(2)  # b went at once, beside a
        third = asyncio.ensure_future(batch(["c"]))
        fourth = asyncio.ensure_future(batch(["d"]))
        await asyncio.sleep(0.05)
        assert len(gate.calls) == 2  # both slots busy: c and d queue
        gate.releases.release()  # one call ends; its slot takes what queued, in one call
        await gate.running(2)
        gate.releases.release(3)
        return await asyncio.gather(first, second, third, fourth)

    assert asyncio.run(scenario()) == [["A"], ["B"], ["C"], ["D"]]
    assert gate.most_at_once == 2
    assert gate.calls == [[["a"]], [["b"]], [["c"], ["d"]]]


def test_a_call_slot_freed_by_a_failing_call_serves_the_next_request() -> None:
    async def scenario() -> list:
        batch = GreedyBatcher(failing, max_texts=10, max_latency_s=60, overloaded=Overloaded, calls=2)
        failed = await asyncio.gather(batch(["boom"]), batch(["boom", "again"]), return_exceptions=True)
        return [*failed, await asyncio.wait_for(batch(["fine", "too"]), timeout=5)]

    first, second, answer = asyncio.run(scenario())
    assert isinstance(first, RuntimeError) and isinstance(second, RuntimeError)
    assert answer == 2
