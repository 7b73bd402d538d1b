"""Faster CPU paths for a trained text classifier: the network exported to ONNX and run by ONNX Runtime, in fp32 or
with int8 dynamic quantisation of its linear layers; or PyTorch itself in bfloat16, eager or traced into one frozen
TorchScript graph.

Texts go through exactly what Classifier does (normalise, tokenise, length-sorted batches cut for little padding);
only the forward pass changes. The export uses torch's dynamo exporter with the batch and sequence dimensions
dynamic (the TorchScript exporter bakes transformers 5's mask construction into shape-fixed constants:
bench/inference_paths.py measured its probabilities off by up to 1e-2 at other shapes). bench/README.md has the
speed figures. Whether an export may serve is decided elsewhere (a parity gate on the test split), never here.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from components.fastpath import ExportError
from components.modalities.text.predict import Classifier
from components.predict import read_meta

ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
FILES = {"onnx": ONNX_FP32, "onnx-int8": ONNX_INT8}  # runtime name (package.fast_path.runtime) -> its file
TORCH_BF16 = "torch-bf16"  # no file: the trained weights, cast to bfloat16 when loaded
TORCHSCRIPT_BF16 = "torchscript-bf16"  # no file: the same, then traced into a TorchScript graph when loaded
INPUTS = ("input_ids", "attention_mask")  # one text per row: BERT's token types are all zero


def _logits_module(model: Any) -> Any:
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits().eval()


def export(model_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the trained model in model_dir as out_dir/model.onnx (fp32, one self-contained file); what it cost."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with quiet_exporter():
            _export(model_dir, out)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means: serve PyTorch, and say why
        raise ExportError(f"the ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    return {"seconds": round(time.perf_counter() - started, 1),
            "megabytes": round((out / ONNX_FP32).stat().st_size / 1e6, 1)}


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's progress (hundreds of INFO lines from its graph passes, warnings about its own internals) kept
    out of the stage's output; an error still raises."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(model_dir: str | Path, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from components.modalities.text.model import load

    model = load(model_dir, read_meta(model_dir)).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    example = dict(tokenizer(["an example", "a slightly longer example text"], padding=True, return_tensors="pt"))
    example = {name: example[name] for name in INPUTS}
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    torch.onnx.export(_logits_module(model), (), str(out / ONNX_FP32), kwargs=example, dynamo=True,
                      external_data=False, input_names=list(INPUTS), output_names=["logits"],
                      dynamic_shapes={name: {0: batch, 1: length} for name in INPUTS}, verbose=False)


def quantize(out_dir: str | Path) -> dict[str, Any]:
    """out_dir/model.onnx with int8 dynamic quantisation of its linear layers' weights (per output channel;
    activations quantised per batch) as out_dir/model.int8.onnx; what it cost."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out_dir)
    started = time.perf_counter()
    try:
        with quiet_exporter():
            # Per-channel weight scales, linear layers only (not the embedding table): on the built-in model this
            # kept 98.4% of PyTorch's test labels against 93.6% per-tensor, at ~0.9x the per-tensor speed.
            quantize_dynamic(str(out / ONNX_FP32), str(out / ONNX_INT8), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul"])
    except Exception as exc:  # noqa: BLE001 - as for export
        raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
            from exc
    return {"seconds": round(time.perf_counter() - started, 1),
            "megabytes": round((out / ONNX_INT8).stat().st_size / 1e6, 1)}


class OnnxClassifier(Classifier):
    """Classifier with its forward pass run by ONNX Runtime's CPU provider on an exported file."""

    overlapping_passes = True  # ONNX Runtime runs a session without the interpreter lock (serve.forward_passes)

    def __init__(self, session: Any, tokenizer: Any, labels: list[str], max_length: int,
                 truncation: str = "head") -> None:
        super().__init__(None, tokenizer, labels, max_length, "cpu", truncation)
        self.session = session

    @classmethod
    def load_onnx(cls, model_dir: str | Path, onnx_file: str | Path, threads: int = 0) -> OnnxClassifier:
        """The tokenizer and labels of model_dir with the network of onnx_file (threads 0: ONNX Runtime's
        default, one per core)."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        meta = read_meta(model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        return cls(session, AutoTokenizer.from_pretrained(str(model_dir)), list(meta["labels"]),
                   int(meta["max_length"]), meta.get("truncation", "head"))

    def logits(self, batch: Any) -> Any:
        import torch

        feeds = {name: batch[name].numpy().astype(np.int64) for name in INPUTS}
        return torch.from_numpy(self.session.run(["logits"], feeds)[0]).float()


def bf16_classifier(model_dir: str | Path) -> Classifier:
    """The PyTorch classifier on the CPU with its weights in bfloat16 (logits come back as float32): on a CPU with
    AMX or AVX-512 BF16 its matrix products run at about twice fp32's rate; elsewhere slower than fp32."""
    import torch

    classifier = Classifier.load(model_dir, "cpu")
    classifier.model = classifier.model.to(torch.bfloat16)
    return classifier


def traced_bf16_classifier(model_dir: str | Path) -> TracedClassifier:
    """bf16_classifier with its forward pass traced into a frozen TorchScript graph (see TracedClassifier)."""
    return TracedClassifier.trace(bf16_classifier(model_dir))


class TracedClassifier(Classifier):
    """Classifier whose forward pass runs as one frozen TorchScript graph, traced from the eager model.

    Why: torch runs a traced graph's operators in C++ with the interpreter lock released, where the eager model goes
    back to Python between operators. In the service the event loop that parses and answers HTTP requests shares
    the process with the model thread; with the eager model each of its stretches of Python stalled the forward
    pass, with the graph they run beside it (bench/README.md: served texts/s at concurrency 32 on 2 cores).

    A trace records the path one example took. transformers' mask code takes two shape-dependent branches (padding
    beyond the mask's length, causal attention without a mask) that stay the same for an encoder's padded batches,
    so the graph holds at other batch sizes and lengths; the parity gate runs it on the test split's own shapes
    before it may serve. TorchScript is deprecated in torch in favour of torch.export and torch.compile; torch is
    pinned here, and its deprecation warnings are kept out of the output.
    """

    overlapping_passes = True  # its passes in two threads run side by side (serve.forward_passes)

    def __init__(self, classifier: Classifier, graph: Any) -> None:
        super().__init__(classifier.model, classifier.tokenizer, classifier.labels, classifier.max_length, "cpu",
                         classifier.truncation)
        self.graph = graph

    @classmethod
    def trace(cls, classifier: Classifier) -> TracedClassifier:
        """The classifier's model traced on two short padded texts and frozen (weights folded in as constants).

        Raises:
            ExportError: the model could not be traced.
        """
        import torch

        example = classifier.tokenizer(["an example", "a slightly longer example text"], padding=True,
                                       return_tensors="pt")
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation, the tracer's notes on those branches
                graph = torch.jit.freeze(torch.jit.trace(_logits_module(classifier.model),
                                                         tuple(example[name] for name in INPUTS), strict=False))
        except Exception as exc:  # noqa: BLE001 - a model the tracer cannot follow: serve another runtime
            raise ExportError(f"tracing the model into TorchScript failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
        return cls(classifier, graph)

    def logits(self, batch: Any) -> Any:
        return self.graph(*(batch[name] for name in INPUTS)).float()
