"""The served network in one process: the stored model loaded on its device (or the faster runtime the package stage
gated), its forward passes in long-lived threads (serve.forward_passes at once), adaptive batching, the model's
Prometheus histograms, and the served rows `tuneline monitor` reads.

Both layouts of serving/service.py hold one: the single layout in each HTTP worker, the split layout in its one model
service behind the API workers.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from components import fastpath, modalities
from components.config import Params, ServeParams
from components.monitor import log_served
from serving.batching import GreedyBatcher

logger = logging.getLogger(__name__)

texts_per_batch = bentoml.metrics.Histogram(
    name="tuneline_batch_texts",
    documentation="Texts per call of the model: concurrent requests merged by adaptive batching",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
_SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
queue_seconds = bentoml.metrics.Histogram(
    name="tuneline_queue_seconds",
    documentation="Seconds a request waited for the model to start on it (behind the forward pass in progress)",
    buckets=_SECONDS_BUCKETS,
)
model_seconds = bentoml.metrics.Histogram(
    name="tuneline_model_seconds",
    documentation="Seconds per call of the model: tokenising, forward passes and softmax for one merged batch",
    buckets=_SECONDS_BUCKETS,
)

AUTO_PASSES = 2  # serve.forward_passes auto, where passes overlap on a CPU with a core for each


def request_batcher(predict: Callable[[Sequence[list[Any]]], Any], serve: ServeParams,
                    overloaded: Callable[[], Exception], calls: int = 1, **options: Any) -> GreedyBatcher:
    """A GreedyBatcher within serve.*'s limits: whole requests per call, up to max_texts_per_request texts (or
    max_batch_size, if larger); a request that waited past max_latency_ms gets `overloaded()`.

    With `calls` calls at once (serve.forward_passes), each call takes up to an equal share of max_batch_size texts
    (batch_share): one call that took every waiting text would leave the other passes idle, and concurrent clients
    would fall into one group that takes turns with nobody. A request larger than the share still goes, alone."""
    max_texts = batch_share(serve, calls) if calls > 1 else max(serve.max_texts_per_request, serve.max_batch_size)
    return GreedyBatcher(predict, max_texts=max_texts, max_latency_s=serve.max_latency_ms / 1000,
                         overloaded=overloaded, calls=calls, **options)


def batch_share(serve: ServeParams, calls: int) -> int:
    """Each of `calls` calls' equal share of serve.max_batch_size texts (rounded up)."""
    return -(-serve.max_batch_size // calls)


def per_request(probabilities: np.ndarray, requests: Sequence[list[Any]]) -> list[np.ndarray]:
    """The rows of one call for several requests' items, split back per request."""
    return np.split(probabilities, np.cumsum([len(request) for request in requests])[:-1])


class ModelRunner:
    """One process's copy of the served model.

    Args:
        stored: the stored model (BentoML model store).
        params: the service's params (serve.* for batching and limits, monitor.* for the served rows, the modality's
            block).
        overloaded: the exception for a request that waited past serve.max_latency_ms (the service makes it a 503).
        monitor_dir: where BentoML's monitoring API writes the served rows (named in the log when that fails).
        processes: how many processes on this machine run a copy of the model; each takes its share of the cores,
            and each of its forward passes running at once a share of that.
    """

    def __init__(self, stored: Any, params: Params, overloaded: Callable[[], Exception], monitor_dir: Path,
                 processes: int = 1) -> None:
        serve = params.serve
        stored_path = Path(stored.path)
        self.model_tag = str(stored.tag)  # name:latest resolved, so answers name the exact model
        self.max_batch_size = serve.max_batch_size
        self._monitor, self._monitor_dir = params.monitor, monitor_dir
        process_threads = share_cpu_threads(processes)
        # How many passes run at once is settled by the predictor loaded, but ONNX Runtime fixes its threads when its
        # session is made: load with each pass's share of the most passes the setting allows, settle, then share.
        most = AUTO_PASSES if serve.forward_passes == "auto" else serve.forward_passes
        _use_threads(max(1, process_threads // most))
        # what the stored model classifies (its tuneline.json), with the params' block for it (request limits)
        self.modality = modalities.for_model(stored_path, params)
        # The faster runtime the package stage exported and gated, where it may serve; PyTorch otherwise.
        self.classifier, self.runtime = fastpath.load_served(self.modality, stored_path, "auto",
                                                             allowed=serve.runtime == "auto")
        self.forward_passes = forward_passes(serve.forward_passes, self.classifier, processes)
        threads = max(1, process_threads // self.forward_passes)
        _use_threads(threads)
        logger.info("serving %s with %s (%d forward pass(es) at once, %d thread(s) each): %s", self.model_tag,
                    self.runtime["runtime"], self.forward_passes, threads, self.runtime["reason"])
        # serve.forward_passes at once, each always in the same thread: torch keeps per-thread state (the OpenMP
        # team on a CPU, the cuBLAS handle on a GPU) warm there, and each thread runs on its share of the cores.
        self._model_threads = ThreadPoolExecutor(max_workers=self.forward_passes, thread_name_prefix="tuneline-model",
                                                 initializer=_use_threads, initargs=(threads,))
        self._batched = None
        if serve.batching:
            # serve.max_batch_size bounds each forward pass, and a call that has that many texts (its share of them,
            # with passes at once) need not gather.
            self._batched = request_batcher(self._predict_batches, serve, overloaded,
                                            on_batch=texts_per_batch.observe, on_wait=queue_seconds.observe,
                                            executor=self._model_threads, calls=self.forward_passes,
                                            gather=serve.batch_gather,
                                            full_texts=batch_share(serve, self.forward_passes))
        # A first forward pass in each model thread, before the server reports ready: its one-off set-up (lazy
        # imports, the thread team, kernel choices) is not a user's request's to wait for. The barrier holds each
        # thread until all have started, so that every pass lands in a thread of its own.
        started = threading.Barrier(self.forward_passes)
        sample = [self.modality.warm_up_input(self.classifier)]
        for warm_up in [self._model_threads.submit(_warm_up, started, self.classifier, sample)
                        for _ in range(self.forward_passes)]:
            warm_up.result()
        # torch, transformers and the model leave millions of long-lived objects behind, and each full collection of
        # the garbage collector walks them all: measured, 100-280 ms pauses that stall whichever requests are in
        # flight. Move them out of its reach; what requests allocate is still collected.
        gc.collect()
        gc.freeze()

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    @property
    def device(self) -> str:
        return self.classifier.device

    def _predict(self, items: list[Any]) -> np.ndarray:
        """The model's probabilities for these items (length-sorted forward passes); timed for /metrics."""
        started = time.perf_counter()
        probabilities = self.classifier.predict_proba(items, batch_size=self.max_batch_size)
        model_seconds.observe(time.perf_counter() - started)
        return probabilities

    def _predict_batches(self, batches: Sequence[list[Any]]) -> list[np.ndarray]:
        """The items of several requests in one call, split back per request."""
        return per_request(self._predict([item for batch in batches for item in batch]), batches)

    def _predict_queued(self, items: list[Any], queued: float) -> np.ndarray:
        queue_seconds.observe(time.monotonic() - queued)
        return self._predict(items)

    async def probabilities(self, items: list[Any]) -> np.ndarray:
        """One request's decoded items -> their probabilities, batched with whatever else is waiting."""
        if self._batched is not None:
            return await self._batched(items)
        import asyncio

        texts_per_batch.observe(len(items))
        return await asyncio.get_running_loop().run_in_executor(self._model_threads, self._predict_queued, items,
                                                                time.monotonic())

    def watch(self, items: list[Any], probabilities: np.ndarray) -> None:
        """One answered request's rows for `tuneline monitor` (label, probability, the modality's input signals),
        when monitor.sample draws it."""
        if not (self._monitor.log and random.random() < self._monitor.sample):
            return
        try:
            labels = [self.labels[i] for i in probabilities.argmax(axis=1)]
            texts = items if self._monitor.log_text and all(isinstance(item, str) for item in items) else None
            log_served(self.model_tag, items, labels, probabilities.max(axis=1),
                       self.modality.signals(items, self.classifier), texts)
        except Exception:  # watching a request never fails it
            logger.exception("could not log the served rows to %s", self._monitor_dir)


def forward_passes(setting: int | str, predictor: Any, processes: int = 1) -> int:
    """serve.forward_passes resolved for a loaded predictor. auto: 2 on a CPU where the predictor's passes overlap
    (`overlapping_passes`: its forward pass runs without the interpreter lock, as a traced graph's and ONNX
    Runtime's do) and this
    process's share of the cores is 2 or more; otherwise 1. Eager PyTorch goes back to Python between operators, so
    its passes in two threads take turns at the lock (bench.serve_speed: 103 texts/s served against 125-143 with one
    pass), and
    on a GPU the passes queue on the one device anyway."""
    if setting != "auto":
        return int(setting)
    overlap = predictor.device == "cpu" and getattr(predictor, "overlapping_passes", False)
    return AUTO_PASSES if overlap and _cores() // processes >= AUTO_PASSES else 1


def share_cpu_threads(processes: int) -> int:
    """With several processes holding a model, each takes an equal share of the cores for its forward passes: N
    processes with torch's default (one thread per core) each would oversubscribe the machine N times. Returns the
    process's threads (torch's setting, which ONNX Runtime sessions loaded after it follow)."""
    import torch

    if processes > 1:
        torch.set_num_threads(max(1, _cores() // processes))
    return torch.get_num_threads()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _use_threads(threads: int) -> None:
    """This thread's forward passes use `threads` threads (torch's setting is per thread; an ONNX Runtime session
    loaded after it takes as many)."""
    import torch

    torch.set_num_threads(threads)


def _warm_up(started: threading.Barrier, classifier: Any, sample: list[Any]) -> None:
    started.wait(timeout=600)
    classifier.predict_proba(sample, 1)
