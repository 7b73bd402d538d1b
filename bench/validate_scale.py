"""Prepare and validate a 1,000,000-row synthetic labelled CSV: wall time, peak memory and rows/s of each stage.

`python -m bench.validate_scale` (or `make bench-validate`). The file is written to a temporary folder and removed
afterwards. Each stage runs in its own child process, so its peak resident memory is its own and not the
generator's or the other stage's. The target for validation: under 2 minutes and under 4 GB on a 2-core machine.
Figures depend on what else the machine is doing; run it on a quiet machine to compare runs.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import queue as queue_module
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROWS = 1_000_000
SEED = 7
LABELS = {"fresh": 0.45, "rotten": 0.40, "plot": 0.15}
VALIDATE_SECONDS = 120
VALIDATE_BYTES = 4 * 1024**3

# Noise a real export carries: prepare turns these into spaces and counts them.
NOISE = ("\u200b", "\x85", "\t", "\u00a0", "\ufeff")
FALLBACK_WORDS = (
    "a the film movie story cast plot script director scene ending acting performance characters funny dull "
    "warm clever slow boring gripping beautiful awful charming tense predictable moving brilliant weak strong "
    "and but with of in on for too very never always really quite it is was has its his her their this that"
).split()


@dataclass(frozen=True)
class Figures:
    """One stage's measurement, taken inside its own child process."""

    stage: str
    seconds: float
    peak_rss_bytes: int
    rows: int
    outcome: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def vocabulary() -> tuple[list[str], np.ndarray]:
    """Words and their frequencies from the built-in Rotten Tomatoes corpus (a short fixed list without it)."""
    try:
        import pandas as pd

        from components.modalities.text.source import builtin_corpus_path

        texts = pd.read_csv(builtin_corpus_path())["text"].dropna()
    except Exception:  # the corpus package is optional for a benchmark; the fixed list keeps it running
        return FALLBACK_WORDS, np.full(len(FALLBACK_WORDS), 1.0 / len(FALLBACK_WORDS))
    counts = Counter(word for text in texts for word in re.findall(r"[A-Za-z][A-Za-z'-]*", text))
    words = [word for word, count in counts.most_common() if count >= 2]
    weights = np.array([counts[word] for word in words], dtype=float)
    return words, weights / weights.sum()


def synthesize(path: Path, rows: int = ROWS, seed: int = SEED) -> None:
    """Write a labelled CSV of `rows` short review-like texts with 3 labels, a little noise and a few duplicates.

    Texts are 4-40 words drawn by corpus frequency; about 1% of rows repeat an earlier text exactly and 0.5% repeat
    one with other case and punctuation, a few with another label (warnings, not errors); 0.5% carry a noise
    character prepare normalises.
    """
    rng = np.random.default_rng(seed)
    words, weights = vocabulary()
    lengths = rng.integers(4, 41, size=rows)
    drawn = np.asarray(words, dtype=object)[rng.choice(len(words), size=int(lengths.sum()), p=weights)]
    ends = np.cumsum(lengths)
    labels = rng.choice(list(LABELS), size=rows, p=list(LABELS.values()))
    kind = rng.random(rows)
    noise = rng.choice(len(NOISE), size=rows)
    earlier = (rng.random(rows) * np.arange(rows)).astype(np.int64)  # a random earlier row for each row
    contradicts = rng.random(rows) < 1 / 15
    texts: list[str] = []
    for i in range(rows):
        if i > 100 and kind[i] < 0.015:
            j = int(earlier[i])
            text = texts[j] if kind[i] < 0.01 else texts[j].upper().rstrip(".") + "!"
            # Most repeats keep their label; one in fifteen keeps its own draw, usually another (conflicting_labels).
            labels[i] = labels[i] if contradicts[i] else labels[j]
        else:
            chunk = drawn[ends[i] - lengths[i]:ends[i]]
            text = " ".join(chunk).capitalize() + "."
            if kind[i] > 0.995:
                cut = len(text) // 2
                text = text[:cut] + NOISE[noise[i]] + text[cut:]
        texts.append(text)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))


def _prepare(csv_path: str, prepared: str) -> tuple[int, str]:
    from components import modalities
    from components.config import DataParams, Params
    from components.prepare import run

    data = DataParams(path=csv_path)  # data.modality text, the text block's defaults (text.column: text)
    result = run(data, modalities.for_params(Params(data=data)), prepared)
    return sum(result.counts.values()), f"{result.counts} rows per split"


def _validate(prepared: str, report: str, html: str) -> tuple[int, str]:
    from components import modalities
    from components.config import ValidateParams
    from components.validate import ValidationFailed, run

    try:
        # What prepare recorded (texts), with the text block's defaults (text.min_chars, text.max_chars).
        result = run(ValidateParams(), modalities.for_prepared(prepared), prepared, report, html)
    except ValidationFailed as exc:
        result = exc.result
    verdict = "passed" if result.success else f"FAILED ({len(result.failures)} error check(s))"
    return sum(result.counts.values()), f"{verdict}, {len(result.warnings)} warning(s)"


STAGES = {"prepare": _prepare, "validate": _validate}


def _child(stage: str, args: tuple[str, ...], queue: Any) -> None:
    """Run one stage in this (child) process and send back its wall time, peak RSS and outcome."""
    import logging

    # Errors only: validation warnings on this data are expected and counted in the outcome line.
    logging.basicConfig(level=logging.ERROR, format=f"  {stage} %(levelname)s %(message)s")
    try:
        start = time.perf_counter()
        rows, outcome = STAGES[stage](*args)
        seconds = time.perf_counter() - start
    except Exception as exc:  # reported by the parent, which still prints the other stage's figures
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    # ru_maxrss is in KiB on Linux: the high-water mark of this process alone.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put(("ok", Figures(stage, seconds, peak, rows, outcome)))


def measure(stage: str, *args: str) -> Figures:
    """Run a stage in a fresh child process (spawned, so it inherits no memory from this one)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(stage, args, queue))
    process.start()
    # Poll, so a child that dies without reporting (killed for memory, say) ends the benchmark instead of hanging it.
    while True:
        try:
            status, payload = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not process.is_alive():
                status, payload = "error", f"the child process exited with code {process.exitcode}"
                break
    process.join()
    if status != "ok":
        raise SystemExit(f"{stage} failed in the benchmark: {payload}")
    return payload


def _print(figures: Figures) -> None:
    print(f"{figures.stage:<9} {figures.seconds:8.1f} s  {figures.peak_rss_bytes / 1024**2:8.0f} MiB peak RSS  "
          f"{figures.rows_per_second:10,.0f} rows/s  {figures.outcome}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows in the synthetic file (default {ROWS:,})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    options = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="tuneline-bench-validate-"))
    try:
        csv_path = folder / "raw" / "synthetic.csv"
        csv_path.parent.mkdir()
        start = time.perf_counter()
        synthesize(csv_path, options.rows)
        print(f"wrote {options.rows:,} rows ({csv_path.stat().st_size / 1024**2:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
        prepared, reports = folder / "prepared", folder / "reports"
        _print(measure("prepare", str(csv_path), str(prepared)))
        figures = measure("validate", str(prepared), str(reports / "validation.json"), str(reports / "validation.html"))
        _print(figures)
        within = figures.seconds < VALIDATE_SECONDS and figures.peak_rss_bytes < VALIDATE_BYTES
        print(f"validate target (< {VALIDATE_SECONDS} s, < {VALIDATE_BYTES / 1024**3:.0f} GiB): "
              f"{'met' if within else 'MISSED'}")
        if options.keep:
            print(f"kept {folder}")
    finally:
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
