"""Training throughput on the built-in corpus: Tuneline's default against a naive set-up and a cached linear probe.

`python -m bench.train_speed` (or `make bench-train`). One run trains, side by side on the same data:

  (a) default  - the train block as params.yaml ships it: dynamic padding, length-grouped batches, tokenised once;
  (b) naive    - every text padded to text.max_tokens (128), batches in random order;
  (c) probe    - the backbone frozen, the head trained on the frozen-feature cache (computed in epoch 1);
  (d) bf16     - (a) under bf16 autocast on the CPU (train.precision bf16; pays on a CPU with AVX-512 BF16 or AMX);

(a)-(c) run in fp32, so that their ratios mean the same on every CPU; train.precision auto picks (d)'s bf16 where the
CPU has native bf16 (d/a says what that buys) and (a)'s fp32 elsewhere;

each in a child process of its own, so peak resident memory (RSS) is that configuration's alone. Printed: samples/s
and real (unpadded) tokens/s per epoch, peak RSS, validation macro-F1, the ratios a/b, c/b and d/a, and an MFU-style
figure: the model FLOP/s achieved on real tokens divided by a dense fp32 matmul's FLOP/s measured in this run.
Targets: a/b >= 2, c/b >= 10 on epochs after the first, RSS of (a) under 3 GB, MFU aim 40%.
Figures depend on what else the machine is doing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_DEFAULT_OVER_NAIVE = 2.0
TARGET_PROBE_OVER_NAIVE = 10.0
TARGET_RSS_BYTES = 3 * 1024**3
MFU_AIM = 0.40

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"model": {}, "train": {"epochs": 2, "precision": "fp32"}},
    "naive": {"model": {}, "train": {"epochs": 1, "padding": "max_length", "group_by_length": False,
                                     "precision": "fp32"}},
    "probe": {"model": {"freeze_backbone": True}, "train": {"epochs": 3, "learning_rate": 1e-3, "precision": "fp32"}},
    "bf16": {"model": {}, "train": {"epochs": 2, "precision": "bf16"}},
}


def matmul_flops(size: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a dense fp32 size x size matmul on this machine's CPU threads (best of `repeats`)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def model_flops(model_params: Any, train_lengths: list[int], backward: bool) -> float:
    """FLOPs one epoch needs on real tokens: 2N per token forward (N = non-embedding weights) plus attention's
    4 * layers * hidden * length^2 per text; training triples it (backward = 2x forward)."""
    from transformers import AutoConfig

    from components.modalities.text.model import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model_params)[0])
    d, layers = config.hidden_size, config.num_hidden_layers
    per_layer = 4 * d * d + 2 * d * config.intermediate_size  # attention projections + feed-forward
    dense = 2 * layers * per_layer * sum(train_lengths)
    attention = 4 * layers * d * sum(n * n for n in train_lengths)
    return (dense + attention) * (3 if backward else 1)


def one(name: str, data: Path, work: Path) -> dict[str, Any]:
    """Train configuration `name` in this process and return its figures."""
    from components.config import ModelParams, TrainParams
    from components.env import configure_environment

    configure_environment()
    from components import modalities, train
    from components.engine import native_cpu_bf16

    spec = CONFIGS[name]
    model_params = ModelParams(**spec["model"])
    train_params = TrainParams(early_stopping_patience=0, **spec["train"])
    # What prepare wrote (texts), with the text block's defaults: text.max_tokens 128, what (b) pads every text to.
    modality = modalities.for_prepared(data / "prepared")
    result = train.run(model_params, train_params, modality, data / "prepared", data / "prepared", work / "model",
                       work / "train.json", work_dir=work / "state")
    from transformers import AutoTokenizer

    from components.io import read_split
    from components.modalities.text.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_params)[0])
    texts = read_split(data / "prepared", "train")["text"].tolist()
    max_tokens = modality.settings.max_tokens
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]]
    return {
        "name": name,
        "rows": result.train_rows,
        "tokens": result.train_units,  # a text model counts them in tokens (result.unit)
        "epoch_seconds": list(result.epoch_seconds),
        "feature_seconds": result.feature_seconds,
        "val_macro_f1": result.best_val_macro_f1,
        "flops_per_epoch": model_flops(model_params, lengths, backward=not model_params.freeze_backbone),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "matmul_flops": matmul_flops(),
        "native_bf16": native_cpu_bf16(),
    }


def run_child(name: str, data: Path, work: Path) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its figures come back as JSON."""
    out = work / f"{name}.json"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "bench.train_speed", "--one", name, "--data", str(data), "--work",
               str(work / name), "--out", str(out)]
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text())


def rates(figures: dict[str, Any]) -> tuple[float, float]:
    """(samples/s of epoch 1 including any feature computation, samples/s of the epochs after it; or epoch 1's)."""
    seconds = figures["epoch_seconds"]
    first = figures["rows"] / (seconds[0] + figures["feature_seconds"])
    later = figures["rows"] / (sum(seconds[1:]) / len(seconds[1:])) if len(seconds) > 1 else first
    return first, later


def report(results: dict[str, dict[str, Any]]) -> str:
    """The side-by-side table, the ratios and the MFU-style figures."""
    peak = max(r["matmul_flops"] for r in results.values())
    lines = [f"dense fp32 matmul (1024^3, best of 20): {peak / 1e9:.1f} GFLOP/s; torch threads {_threads()}", "",
             f"{'config':<9}{'rows':>6}{'epochs':>7}{'samples/s ep1':>15}{'samples/s later':>17}{'tokens/s':>10}"
             f"{'peak RSS':>10}{'val F1':>8}{'MFU':>7}"]
    for name, r in results.items():
        first, later = rates(r)
        tokens = later * r["tokens"] / r["rows"]
        mfu = _mfu(r, peak) if name in ("default", "naive") else None  # against an fp32 matmul: fp32 runs only
        lines.append(f"{name:<9}{r['rows']:>6}{len(r['epoch_seconds']):>7}{first:>15.1f}{later:>17.1f}"
                     f"{tokens:>10.0f}{r['peak_rss_bytes'] / 1024**3:>9.2f}G{r['val_macro_f1']:>8.4f}"
                     f"{(f'{100 * mfu:.0f}%' if mfu is not None else '-'):>7}")
    a, b, c, d = (rates(results[n]) for n in ("default", "naive", "probe", "bf16"))
    default_over_naive = a[1] / b[1]
    probe_over_naive = c[1] / b[1]
    rss = results["default"]["peak_rss_bytes"]
    mfu = _mfu(results["default"], peak)
    lines += ["",
              f"a/b default / naive samples/s: {default_over_naive:.2f}x "
              f"(target >= {TARGET_DEFAULT_OVER_NAIVE:.0f}x: {_ok(default_over_naive >= TARGET_DEFAULT_OVER_NAIVE)})",
              f"c/b probe+cache / naive samples/s, epochs after the first: {probe_over_naive:.0f}x "
              f"(target >= {TARGET_PROBE_OVER_NAIVE:.0f}x: {_ok(probe_over_naive >= TARGET_PROBE_OVER_NAIVE)}); "
              f"epoch 1 with the cache computed: {c[0] / b[1]:.1f}x",
              f"d/a bf16 / fp32 default samples/s, epochs after the first: {d[1] / a[1]:.2f}x (this CPU has native "
              f"bf16: {'yes' if results['bf16']['native_bf16'] else 'no'}; val macro-F1 "
              f"{results['bf16']['val_macro_f1']:.4f} against {results['default']['val_macro_f1']:.4f})",
              f"peak RSS of default training: {rss / 1024**3:.2f} GB (target < 3 GB: {_ok(rss < TARGET_RSS_BYTES)})",
              f"MFU-style, default training: {100 * mfu:.0f}% of the measured matmul FLOP/s (aim {MFU_AIM:.0%})"]
    return "\n".join(lines)


def _mfu(figures: dict[str, Any], peak: float) -> float:
    """Model FLOP/s on real tokens over the epochs run, as a fraction of the matmul FLOP/s."""
    seconds = figures["epoch_seconds"]
    return figures["flops_per_epoch"] * len(seconds) / sum(seconds) / peak


def _ok(passed: bool) -> str:
    return "met" if passed else "MISSED"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="use at most this many rows of the corpus")
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.out.write_text(json.dumps(one(args.one, args.data, args.work)))
        return

    from components.config import DataParams, Params
    from components.env import configure_environment

    configure_environment()
    from components import modalities, prepare

    with tempfile.TemporaryDirectory(prefix="tuneline-bench-train-") as folder:
        work = Path(folder)
        data = DataParams(max_rows=args.rows)  # the built-in corpus: texts
        prepare.run(data, modalities.for_params(Params(data=data)), work / "data" / "prepared")
        results = {}
        for name in CONFIGS:
            print(f"--- training {name}: {CONFIGS[name]}", flush=True)
            results[name] = run_child(name, work / "data", work)
        print("\n" + report(results))


if __name__ == "__main__":
    main()
