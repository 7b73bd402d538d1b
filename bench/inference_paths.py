"""CPU inference paths for a fine-tuned MiniLM classifier: the PyTorch eager path serving uses now, against faster
candidates, side by side in one run on the same texts.

`python -m bench.inference_paths`. A model folder is built as the serving tests build theirs (the pip-shipped
all-MiniLM-L6-v2 with a new 3-label head, saved with save_pretrained, its tokenizer and tuneline.json), and 512 texts
are drawn from the built-in Rotten Tomatoes corpus. Each variant predicts them the way Classifier.predict_proba does
(normalise, batches sorted by token count and capped at 512 padded tokens, dynamic padding, softmax):

  torch eager          - Classifier.predict_proba itself, torch's default threads (the baseline);
  torch eager 1 thread - the same forward pass under torch.set_num_threads(1);
  torch mkldnn linear  - every nn.Linear swapped for oneDNN's (torch.utils.mkldnn.to_mkldnn);
  torch.jit frozen     - torch.jit.trace, torch.jit.freeze and optimize_for_inference;
  torch.compile        - inductor on CPU, dynamic shapes;
  onnxruntime          - the model exported with torch.onnx.export(dynamo=True), run by ONNX Runtime's CPU provider;
  onnxruntime 1 thread - the same session with intra_op_num_threads=1;
  onnxruntime fused    - the export rewritten by onnxruntime.transformers' BERT optimizer (fused attention,
                         LayerNorm, GELU), still fp32.

Printed per variant: texts/s over length-sorted batches of 32, texts/s one text at a time, the median single-text
latency, the ratios to torch eager (medians of per-round ratios: rounds interleave the variants in a rotating order,
so a busy moment on a shared machine hits every variant alike), the spread over rounds, and the largest absolute
difference of any class probability from torch eager. Parity is <= 1e-4; the bar for a switch is >= 1.2x at both batch
sizes. Also printed: what the export and the first passes cost, and a cold start (fresh interpreter: imports, load,
first prediction) for torch and for ONNX Runtime. Quantisation is left out on purpose: it cannot keep parity.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve_speed import LABELS, build_model

TEXT_COUNT = 512
BATCH_SIZE = 32
MAX_LENGTH = 128
PARITY_ATOL = 1e-4
TARGET_SPEEDUP = 1.2
BASELINE = "torch eager"

Forward = Callable[[dict[str, np.ndarray]], np.ndarray]  # a tokenised batch (numpy, int64) -> logits (batch, labels)
Predict = Callable[[list[str], int], np.ndarray]  # texts, batch size -> probabilities in input order


@dataclass
class Variant:
    """One inference path, ready to time: how it predicts, and what building and warming it cost."""

    name: str
    predict: Predict | None
    threads: int
    build_seconds: float = 0.0
    note: str = ""
    error: str = ""
    first_pass_seconds: float = 0.0
    max_abs_diff: float = float("nan")
    rounds: list[dict[str, float]] = field(default_factory=list)


def corpus_texts(count: int, seed: int = 0) -> list[str]:
    """`count` distinct non-empty texts of the built-in corpus, read as the prepare stage reads it."""
    from components.config import DataParams
    from components.modalities.text.settings import TextParams
    from components.modalities.text.source import read

    texts = sorted({t for t in read(DataParams(), TextParams().column).frame["text"].dropna() if t})
    picked = np.random.default_rng(seed).choice(len(texts), size=count, replace=False)
    return [texts[i] for i in picked]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, as Classifier computes it."""
    logits = logits.astype(np.float32, copy=False)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def batched(tokenizer: Any, forward: Forward) -> Predict:
    """Classifier.predict_proba's loop (normalise, batches sorted by token count, capped at CPU_BATCH_TOKENS
    padded tokens and cut at CPU_FORWARD_TOKENS per pass, dynamic padding) around `forward`."""
    from components.modalities.text.normalise import normalise
    from components.modalities.text.predict import CPU_BATCH_TOKENS, CPU_FORWARD_TOKENS, token_batches

    def predict(texts: list[str], batch_size: int) -> np.ndarray:
        cleaned = [normalise(text) for text in texts]
        lengths = [len(ids) for ids in tokenizer(cleaned, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
        out = np.zeros((len(cleaned), len(LABELS)), dtype=np.float64)
        for index in token_batches(lengths, batch_size, CPU_BATCH_TOKENS, CPU_FORWARD_TOKENS):
            batch = tokenizer([cleaned[i] for i in index], padding=True, truncation=True, max_length=MAX_LENGTH,
                              return_tensors="np")
            out[index] = softmax(forward(dict(batch)))
        return out

    return predict


def torch_forward(model: Any) -> Forward:
    """Run a torch module (returning a ModelOutput, a dict or a tensor) on numpy inputs under inference_mode."""
    import torch

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            output = model(**{name: torch.from_numpy(array) for name, array in batch.items()})
        logits = output if isinstance(output, torch.Tensor) else output["logits"]
        return logits.float().numpy()

    return forward


def logits_module(model: Any) -> Any:
    """`model` behind a module that takes the three BERT inputs by keyword and returns the logits tensor alone."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, token_type_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask).logits

    return Logits().eval()


def export_onnx(model: Any, tokenizer: Any, path: Path) -> float:
    """Export with the dynamo exporter (batch and sequence length dynamic) to one self-contained file; seconds taken.

    The TorchScript exporter (dynamo=False) also runs, but traces transformers 5's attention-mask construction into
    shape-fixed constants: its probabilities are off by up to ~1e-2 at any other shape. The dynamo exporter is exact.
    """
    import torch

    example = dict(tokenizer(["an example", "a slightly longer example text"], padding=True, return_tensors="pt"))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    started = time.perf_counter()
    torch.onnx.export(model, (), str(path), kwargs=example, dynamo=True, external_data=False,
                      input_names=list(example), output_names=["logits"],
                      dynamic_shapes={name: {0: batch, 1: length} for name in example}, verbose=False)
    return time.perf_counter() - started


def ort_forward(path: Path, threads: int) -> Forward:
    """An ONNX Runtime CPU session on `path` with `threads` intra-op threads and every graph optimisation on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], {name: batch[name] for name in names})[0]

    return forward


def fuse_bert(source: Path, out: Path, config: Any) -> str:
    """Rewrite `source` with onnxruntime.transformers' BERT fusions (fp32) into `out`; which operators it fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(source), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    optimized.save_model_to_file(str(out))
    fused = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
    return ", ".join(f"{name} x{count}" for name, count in sorted(fused.items())) or "nothing fused"


def build_variants(model_dir: Path, work: Path, names: set[str]) -> list[Variant]:
    """Every variant in `names`, each built from the same model folder; one that fails to build keeps its error."""
    import copy

    import torch
    from transformers import AutoTokenizer

    from components.modalities.text.predict import Classifier

    default_threads = torch.get_num_threads()
    classifier = Classifier.load(model_dir, device="cpu")
    model, tokenizer = classifier.model, AutoTokenizer.from_pretrained(model_dir)
    onnx_path = work / "model.onnx"

    def eager() -> tuple[Predict, str]:
        return classifier.predict_proba, "components.modalities.text.predict.Classifier, unchanged"

    def eager_one_thread() -> tuple[Predict, str]:
        return batched(tokenizer, torch_forward(model)), ""

    def mkldnn_linear() -> tuple[Predict, str]:
        from torch.utils.mkldnn import to_mkldnn

        return batched(tokenizer, torch_forward(to_mkldnn(copy.deepcopy(model)))), "nn.Linear -> MkldnnLinear"

    def jit_frozen() -> tuple[Predict, str]:
        example = dict(tokenizer(["an example", "a slightly longer example text"], padding=True, return_tensors="pt"))
        with torch.no_grad():
            traced = torch.jit.trace(logits_module(model), example_kwarg_inputs=example, strict=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return batched(tokenizer, torch_forward(frozen)), "traced at batch 2 x length 8"

    def compiled() -> tuple[Predict, str]:
        return batched(tokenizer, torch_forward(torch.compile(model, dynamic=True))), "inductor, dynamic=True"

    def onnx(threads: int) -> Callable[[], tuple[Predict, str]]:
        def build() -> tuple[Predict, str]:
            if not onnx_path.exists():
                seconds = export_onnx(model, tokenizer, onnx_path)
                note = f"dynamo export {seconds:.1f}s, {onnx_path.stat().st_size / 1e6:.1f} MB"
            else:
                note = "same file"
            return batched(tokenizer, ort_forward(onnx_path, threads)), note

        return build

    def onnx_fused() -> tuple[Predict, str]:
        if not onnx_path.exists():
            export_onnx(model, tokenizer, onnx_path)
        fused_path = work / "model.fused.onnx"
        note = fuse_bert(onnx_path, fused_path, model.config)
        return batched(tokenizer, ort_forward(fused_path, default_threads)), note

    builders: dict[str, tuple[int, Callable[[], tuple[Predict, str]]]] = {
        BASELINE: (default_threads, eager),
        "torch eager 1 thread": (1, eager_one_thread),
        "torch mkldnn linear": (default_threads, mkldnn_linear),
        "torch.jit frozen": (default_threads, jit_frozen),
        "torch.compile": (default_threads, compiled),
        "onnxruntime": (default_threads, onnx(default_threads)),
        "onnxruntime 1 thread": (1, onnx(1)),
        "onnxruntime fused": (default_threads, onnx_fused),
    }
    variants = []
    for name, (threads, build) in builders.items():
        if name not in names and name != BASELINE:
            continue
        print(f"--- building {name}", flush=True)
        torch.set_num_threads(threads)
        started = time.perf_counter()
        try:
            predict, note = build()
            variants.append(Variant(name, predict, threads, time.perf_counter() - started, note))
        except Exception as exc:  # a candidate that cannot be built is a finding, not a crash
            variants.append(Variant(name, None, threads, error=f"{type(exc).__name__}: {str(exc)[:200]}"))
        finally:
            torch.set_num_threads(default_threads)
    return variants


def first_pass(variant: Variant, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Both batch sizes once, untimed for the table (compilers compile here); the probabilities for parity."""
    import torch

    torch.set_num_threads(variant.threads)
    started = time.perf_counter()
    batch = variant.predict(texts, BATCH_SIZE)
    single = np.concatenate([variant.predict([text], 1) for text in texts])
    variant.first_pass_seconds = time.perf_counter() - started
    return batch, single


def time_round(variant: Variant, texts: list[str]) -> dict[str, float]:
    """texts/s at batch 32, texts/s one text at a time, and the median single-text latency, for one round."""
    import torch

    torch.set_num_threads(variant.threads)
    started = time.perf_counter()
    variant.predict(texts, BATCH_SIZE)
    batch_seconds = time.perf_counter() - started
    latencies = []
    for text in texts:
        started = time.perf_counter()
        variant.predict([text], 1)
        latencies.append(time.perf_counter() - started)
    return {"batch": len(texts) / batch_seconds, "single": len(texts) / sum(latencies),
            "latency": statistics.median(latencies), "load": os.getloadavg()[0]}


def measure(variants: list[Variant], texts: list[str], rounds: int) -> None:
    """Parity against the baseline, then `rounds` timed rounds, the variants' order rotating each round."""
    import torch

    ready = [v for v in variants if v.predict is not None]
    reference: tuple[np.ndarray, np.ndarray] | None = None
    for variant in ready:
        print(f"--- first pass {variant.name}", flush=True)
        try:
            batch, single = first_pass(variant, texts)
        except Exception as exc:  # e.g. a traced graph that cannot run at another shape
            variant.error, variant.predict = f"{type(exc).__name__}: {str(exc)[:200]}", None
            continue
        if reference is None:
            reference = (batch, single)
        variant.max_abs_diff = float(max(np.abs(batch - reference[0]).max(), np.abs(single - reference[1]).max()))
    ready = [v for v in ready if v.predict is not None]
    for number in range(rounds):
        shift = number % len(ready)
        for variant in ready[shift:] + ready[:shift]:
            variant.rounds.append(time_round(variant, texts))
        print(f"--- round {number + 1}/{rounds} done, 1-minute load average {os.getloadavg()[0]:.1f}", flush=True)
    torch.set_num_threads(variants[0].threads)


def cold_start(kind: str, model_dir: Path, onnx_path: Path) -> dict[str, Any]:
    """In a fresh interpreter: seconds to import, load and predict one text, peak RSS, whether torch was imported."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench.inference_paths", "--cold", kind, "--model-dir",
                          str(model_dir), "--onnx", str(onnx_path)], check=True, capture_output=True, text=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures | {"wall": time.perf_counter() - started}


def cold_child(kind: str, model_dir: Path, onnx_path: Path) -> dict[str, Any]:
    """The child side of cold_start: what serving would do on start-up with this path."""
    started = time.perf_counter()
    if kind == "torch":
        import torch  # noqa: F401  (imports timed apart from loading)
        import transformers  # noqa: F401

        # What the text modality's load_predictor (serving's loader) runs, imported now so that its imports count
        # as imports, not as loading.
        from components.modalities.text.predict import Classifier

        imported = time.perf_counter()
        classifier = Classifier.load(model_dir, device="cpu")
        loaded = time.perf_counter()
        classifier.predict_proba(["A gripping, beautifully acted film."])
    else:
        import onnxruntime  # noqa: F401
        from transformers import AutoTokenizer  # imports torch too: transformers does on import

        imported = time.perf_counter()
        predict = batched(AutoTokenizer.from_pretrained(model_dir), ort_forward(onnx_path, _threads()))
        loaded = time.perf_counter()
        predict(["A gripping, beautifully acted film."], 1)
    done = time.perf_counter()
    return {"import": imported - started, "load": loaded - imported, "first": done - loaded, "rss": _peak_rss(),
            "torch_imported": "torch" in sys.modules}


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss, not inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _threads() -> int:
    return len(os.sched_getaffinity(0))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> float:
    """(max - min) / median, as a percentage: how much the rounds disagreed."""
    return 100 * (max(values) - min(values)) / statistics.median(values)


def report(variants: list[Variant], cold: dict[str, dict[str, Any]], rounds: int) -> str:
    """The side-by-side table, the spread over rounds, build and first-pass costs, cold starts and the verdict."""
    base = variants[0]
    lines = [f"{TEXT_COUNT} texts, batch {BATCH_SIZE} (length-sorted) and batch 1, {rounds} "
             f"interleaved rounds, medians; ratios are per-round vs {BASELINE}; parity: max |p - p_eager| <= "
             f"{PARITY_ATOL:g}", "",
             f"{'variant':<22}{'thr':>4}{'b32 t/s':>9}{'x':>6}{'b1 t/s':>8}{'x':>6}{'lat ms':>8}{'x':>6}"
             f"{'spread b32/b1':>15}{'max|dp|':>10}  parity"]
    for v in variants:
        if not v.rounds:
            lines.append(f"{v.name:<22}{v.threads:>4}  not measured: {v.error}")
            continue
        batch = _median([r["batch"] for r in v.rounds])
        single = _median([r["single"] for r in v.rounds])
        latency = _median([r["latency"] for r in v.rounds])
        x_batch = _median([r["batch"] / b["batch"] for r, b in zip(v.rounds, base.rounds, strict=True)])
        x_single = _median([r["single"] / b["single"] for r, b in zip(v.rounds, base.rounds, strict=True)])
        x_latency = _median([b["latency"] / r["latency"] for r, b in zip(v.rounds, base.rounds, strict=True)])
        spread = f"{_spread([r['batch'] for r in v.rounds]):.0f}%/{_spread([r['single'] for r in v.rounds]):.0f}%"
        parity = "ok" if v.max_abs_diff <= PARITY_ATOL else "FAILS"
        lines.append(f"{v.name:<22}{v.threads:>4}{batch:>9.1f}{x_batch:>6.2f}{single:>8.1f}{x_single:>6.2f}"
                     f"{1000 * latency:>8.2f}{x_latency:>6.2f}{spread:>15}{v.max_abs_diff:>10.1e}  {parity}")
    loads = [r["load"] for v in variants for r in v.rounds] or [float("nan")]
    lines += ["", f"1-minute load average during the rounds: {min(loads):.1f} to {max(loads):.1f} on "
              f"{os.cpu_count()} CPUs (this run itself adds ~{base.threads}); eager at {base.threads} threads slows "
              "most when others take a core"]
    lines += ["", "per-round speed-up ranges over torch eager (min to max over the rounds), batch 32 / batch 1 / latency:"]
    for v in variants[1:]:
        if v.rounds:
            ranges = [_ratios(v, base, key) for key in ("batch", "single")] + [_ratios(base, v, "latency")]
            lines.append(f"  {v.name:<22}" + "   ".join(f"{min(r):.2f}-{max(r):.2f}" for r in ranges))
    lines += ["", "x: speed-up over torch eager (latency: eager's latency / this one's); spread: (max - min) / median "
              "texts/s over the rounds", "", "build and first pass (both batch sizes once, 1024 predictions):"]
    for v in variants:
        detail = v.error or v.note
        lines.append(f"  {v.name:<22} build {v.build_seconds:6.1f}s  first pass {v.first_pass_seconds:6.1f}s  {detail}")
    if cold:
        lines += ["", "cold start in a fresh interpreter (imports, load the folder / session, predict one text):"]
        for kind, c in cold.items():
            lines.append(f"  {kind:<12} total {c['wall']:5.1f}s  (imports {c['import']:.1f}s, load {c['load']:.2f}s, "
                         f"first prediction {1000 * c['first']:.0f} ms)  peak RSS {c['rss'] / 1e6:.0f} MB  "
                         f"torch imported: {c['torch_imported']}")
    lines += ["", verdict(variants)]
    return "\n".join(lines)


def _ratios(top: Variant, bottom: Variant, key: str) -> list[float]:
    """top / bottom for `key`, round by round."""
    return [t[key] / b[key] for t, b in zip(top.rounds, bottom.rounds, strict=True)]


def verdict(variants: list[Variant]) -> str:
    """Whether ONNX Runtime (as exported, 2 threads) clears the bar: parity and >= 1.2x at both batch sizes."""
    base = variants[0]
    ort = next((v for v in variants if v.name == "onnxruntime" and v.rounds), None)
    if ort is None:
        return "onnxruntime: not measured"
    x_batch = _median([r["batch"] / b["batch"] for r, b in zip(ort.rounds, base.rounds, strict=True)])
    x_single = _median([r["single"] / b["single"] for r, b in zip(ort.rounds, base.rounds, strict=True)])
    met = x_batch >= TARGET_SPEEDUP and x_single >= TARGET_SPEEDUP and ort.max_abs_diff <= PARITY_ATOL
    return (f"onnxruntime vs torch eager: {x_batch:.2f}x at batch {BATCH_SIZE}, {x_single:.2f}x at batch 1, "
            f"max |dp| {ort.max_abs_diff:.1e}: bar (>= {TARGET_SPEEDUP}x at both, parity) "
            f"{'met' if met else 'NOT met'}")


# Not in requirements.lock (serving does not use them); installed beside the pins without changing any of them.
EXTRA_PACKAGES = "onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2 onnx-ir==1.1.0 ml_dtypes==0.6.0"


def main() -> None:
    import importlib.util

    missing = [name for name in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"this benchmark needs {', '.join(missing)}, which Tuneline itself does not install: "
                         f".venv/bin/pip install {EXTRA_PACKAGES}")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (interleaved)")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (torch eager always runs)")
    parser.add_argument("--cold", choices=["torch", "onnx"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from components.env import configure_environment

    configure_environment()
    if args.cold:
        print(json.dumps(cold_child(args.cold, args.model_dir, args.onnx)))
        return
    import logging
    import warnings

    logging.disable(logging.WARNING)  # the exporter's and optimiser's progress chatter
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-infer-") as folder:
        work = Path(folder)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")  # a cold compile, not an earlier run's cache
        (work / "model").mkdir()
        model_dir, _ = build_model(work / "model", None, random_init=False, max_length=MAX_LENGTH)
        texts = corpus_texts(TEXT_COUNT)
        variants = build_variants(model_dir, work, set(args.only) if args.only is not None else _all_names())
        measure(variants, texts, args.rounds)
        cold = {}
        if (work / "model.onnx").exists():
            print("--- cold starts", flush=True)
            cold = {kind: cold_start(kind, model_dir, work / "model.onnx") for kind in ("torch", "onnx")}
        print("\n" + report(variants, cold, args.rounds))


def _all_names() -> set[str]:
    return {BASELINE, "torch eager 1 thread", "torch mkldnn linear", "torch.jit frozen", "torch.compile",
            "onnxruntime", "onnxruntime 1 thread", "onnxruntime fused"}


if __name__ == "__main__":
    main()
