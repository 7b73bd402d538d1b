"""Soak: the real server under steady load for 100,000 requests; does it leak, slow down or fail as time passes?

`python -m bench.soak` (or `make bench-soak`). The model and texts are bench.serve_speed's: the project's champion
when `make run` has made one, with the faster runtime its package stage kept (as users serve it), else, or with
--untrained, the pip-shipped MiniLM with a new 3-label head in PyTorch; 512 corpus snippets, one text per request,
round-robin. It is served by the real `bentoml serve
serving.service:TunelineService` with params.yaml as shipped (adaptive batching on, monitoring on: every answered
text is logged, into a temporary folder). wrk drives it at concurrency 32 in back-to-back 10-second windows until
--requests requests have been answered; after each window the server's RSS (the process and all its children,
summed) is read and the window's p99 latency, requests and errors are recorded.

Printed: every window, then the three verdicts: zero errors (non-2xx responses and socket errors over the whole
run), RSS at the end within 10% of RSS after the warm-up (the first --warmup-s seconds of load, in which caches,
the batcher's fitted dispatch times and the allocator settle), and the p99 of the last minute within 1.5x of the
first minute after the warm-up (a minute's p99 = the median of its six 10-s windows' p99s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.serve_speed import (PROJECT_ROOT, WrkResult, build_model, check_response, find_wrk, lua_script,
                               params_copy, project_champion, read_texts, run_wrk, start_server, stop_server)

WINDOW_S = 10
CONCURRENCY = 32
TARGET_RSS_GROWTH = 0.10
TARGET_P99_GROWTH = 1.5


@dataclass(frozen=True)
class Window:
    started_s: float  # seconds since the load began
    result: WrkResult
    rss_bytes: int

    @property
    def errors(self) -> int:
        return self.result.non_2xx + sum(self.result.socket_errors.values())


def tree_rss(pid: int) -> int:
    """The summed RSS of a process and all its descendants, now."""
    import psutil

    total = 0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def minute_p99(windows: list[Window]) -> float:
    return statistics.median(w.result.p99 for w in windows if w.result.p99 is not None)


def report(windows: list[Window], warmup_s: float, setup: list[str]) -> str:
    lines = ["== Soak: the real server, concurrency 32, 10-second windows ==", *setup, "",
             f"{'t (s)':>7} {'requests':>9} {'req/s':>7} {'p99 ms':>8} {'errors':>7} {'RSS MB':>8}"]
    for w in windows:
        lines.append(f"{w.started_s:>7.0f} {w.result.requests:>9,} {w.result.requests_per_s:>7.1f} "
                     f"{(w.result.p99 or 0) * 1000:>8.1f} {w.errors:>7} {w.rss_bytes / 2**20:>8.1f}")
    settled = [w for w in windows if w.started_s >= warmup_s]
    per_minute = 60 // WINDOW_S
    if len(settled) < 2 * per_minute:
        lines.append(f"\nonly {len(settled)} windows after the warm-up: run more --requests for the verdicts")
        return "\n".join(lines)
    errors = sum(w.errors for w in windows)
    total = sum(w.result.requests for w in windows)
    rss_start, rss_end = settled[0].rss_bytes, windows[-1].rss_bytes
    first, last = minute_p99(settled[:per_minute]), minute_p99(windows[-per_minute:])
    growth = rss_end / rss_start - 1
    lines += ["",
              f"requests: {total:,} in {windows[-1].started_s + WINDOW_S:.0f} s; errors (non-2xx + socket): {errors}"
              f"   {'PASS' if errors == 0 else 'FAIL'} (target 0)",
              f"RSS: {rss_start / 2**20:.1f} MB after the {warmup_s:.0f} s warm-up, {rss_end / 2**20:.1f} MB at the end:"
              f" {growth:+.1%}   {'PASS' if abs(growth) <= TARGET_RSS_GROWTH else 'FAIL'} (target within "
              f"{TARGET_RSS_GROWTH:.0%})",
              f"p99: {first * 1000:.1f} ms in the first minute after the warm-up, {last * 1000:.1f} ms in the last: "
              f"{last / first:.2f}x   {'PASS' if last / first <= TARGET_P99_GROWTH else 'FAIL'} (target <= "
              f"{TARGET_P99_GROWTH}x)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests to answer (default 100,000)")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="seconds of load before the RSS and p99 baselines (default 60)")
    parser.add_argument("--n-texts", type=int, default=512, help="texts to cycle through (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample of the built-in corpus")
    parser.add_argument("--untrained", action="store_true",
                        help="serve bench.serve_speed's own model (MiniLM, a head fitted by logistic regression) in "
                             "PyTorch even where the project has a champion")
    args = parser.parse_args()
    if args.requests < 1 or args.warmup_s < 0:
        parser.error("--requests must be at least 1 and --warmup-s at least 0")
    wrk, wrk_version = find_wrk()

    with tempfile.TemporaryDirectory(prefix="tuneline-bench-soak-") as folder:
        work = Path(folder)
        project_store = Path(os.environ.get("BENTOML_HOME") or PROJECT_ROOT / ".bentoml")  # where make run stores
        os.environ["BENTOML_HOME"] = str(work / "bentoml")
        os.environ["TUNELINE_MONITOR_DIR"] = str(work / "monitoring")  # the served rows: logged, then thrown away
        from components.config import PARAMS_FILE, load_params
        from components.env import configure_environment

        configure_environment(PROJECT_ROOT)
        from components.package import store
        from components.predict import read_meta

        params = load_params(PROJECT_ROOT / PARAMS_FILE)
        texts, source = read_texts(None, args.n_texts, params.serve.max_text_chars, args.seed)
        champion = None if args.untrained else project_champion(project_store, params.package.model_name)
        if champion is not None:
            model_dir, what = champion, f"the project's champion ({champion.name}, trained by make run)"
        else:
            (work / "model").mkdir()
            model_dir, what = build_model(work / "model", None, False, params.settings("text").max_tokens)
        tag = store(model_dir, params.package.model_name, {"labels": read_meta(model_dir)["labels"],
                                                            "purpose": "bench.soak"})
        script = work / "one_text_per_request.lua"
        script.write_text(lua_script(texts), encoding="utf-8")
        process, url, cold_start = start_server(tag, params_copy(work, True), work / "serve.log")
        windows: list[Window] = []
        try:
            check_response(url, texts[0])
            runtime = httpx.get(f"{url}/model", timeout=30).json()["runtime"]
            began = time.monotonic()
            answered = 0
            while answered < args.requests:
                started = time.monotonic() - began
                result = run_wrk(wrk, script, url, CONCURRENCY, WINDOW_S)
                windows.append(Window(started, result, tree_rss(process.pid)))
                answered += result.requests
                print(f"    {started:6.0f} s: {answered:,} requests, p99 {(result.p99 or 0) * 1000:.1f} ms, "
                      f"RSS {windows[-1].rss_bytes / 2**20:.1f} MB", flush=True)
            logged = sum(1 for path in (work / "monitoring").rglob("data.*.log*")
                         for _ in path.open(encoding="utf-8"))
        finally:
            stop_server(process)

    setup = [f"model: {tag}: {what}, served by {runtime}; cold start {cold_start:.1f} s",
             f"texts: {len(texts)} from {source}; one text per request",
             f"load generator: {wrk_version}, -t1 -c{CONCURRENCY}, back-to-back {WINDOW_S} s windows",
             f"monitoring: on (params.yaml), {logged:,} served rows logged"]
    print("\n" + report(windows, args.warmup_s, setup))


if __name__ == "__main__":
    main()
