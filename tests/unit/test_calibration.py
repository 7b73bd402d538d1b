"""Temperature scaling (components/calibration.py) and the predictor that applies it (components.predict.Calibrated)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.calibration import BOUNDS, fit_temperature, negative_log_likelihood, temperature_scale
from components.metrics import expected_calibration_error


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def overconfident(rows: int = 4000, temperature: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits), and the probabilities a model too sure by `temperature` gives them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(rows, 3))
    truth = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    return softmax(logits * temperature), truth


def test_scaling_keeps_the_top_label_and_rows_summing_to_one() -> None:
    probabilities, _ = overconfident(200)
    for temperature in (0.3, 1.0, 2.0, 7.0):
        scaled = temperature_scale(probabilities, temperature)
        assert np.allclose(scaled.sum(axis=1), 1.0)
        assert (scaled.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    np.testing.assert_array_equal(temperature_scale(probabilities, 1.0), probabilities)
    # scaling by T and then by 1/T gives the probabilities back (evaluate reports the network's own this way)
    np.testing.assert_allclose(temperature_scale(temperature_scale(probabilities, 2.0), 0.5), probabilities,
                               atol=1e-9)


def test_softmax_of_scaled_logits_is_what_scaling_the_probabilities_gives() -> None:
    logits = np.random.default_rng(1).normal(size=(50, 4))
    np.testing.assert_allclose(temperature_scale(softmax(logits), 3.0), softmax(logits / 3.0), atol=1e-9)


def test_the_fit_recovers_the_overconfidence_and_lowers_the_error() -> None:
    probabilities, truth = overconfident(temperature=2.5)
    temperature = fit_temperature(probabilities, truth)
    assert temperature == pytest.approx(2.5, rel=0.1)
    scaled = temperature_scale(probabilities, temperature)
    assert negative_log_likelihood(scaled, truth) < negative_log_likelihood(probabilities, truth)
    assert expected_calibration_error(scaled, truth) < 0.03 < expected_calibration_error(probabilities, truth)


def test_a_calibrated_model_keeps_about_one_and_an_empty_split_gets_one() -> None:
    probabilities, truth = overconfident(temperature=1.0, seed=2)
    assert fit_temperature(probabilities, truth) == pytest.approx(1.0, rel=0.1)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    hopeless = np.tile([[1.0, 0.0, 0.0]], (20, 1))  # certain and always wrong: the fit stays within its bounds
    assert BOUNDS[0] <= fit_temperature(hopeless, np.ones(20, dtype=int)) <= BOUNDS[1]


def test_the_predictor_applies_the_temperature_its_folder_records(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from components.modalities import load_predictor
    from components.predict import Calibrated

    class Fixed:
        labels = ["a", "b"]
        device = "cpu"

        def predict_proba(self, items: list, batch_size: int = 32) -> np.ndarray:
            return np.tile([[0.9, 0.1]], (len(items), 1))

    calibrated = Calibrated(Fixed(), 3.0)
    assert calibrated.labels == ["a", "b"] and calibrated.device == "cpu"
    np.testing.assert_allclose(calibrated.predict_proba(["x"]), temperature_scale(np.array([[0.9, 0.1]]), 3.0))
    assert calibrated.predict(["x"])[0].label == "a" and calibrated.predict(["x"])[0].probability < 0.9
    # a folder without a temperature (trained before calibration) predicts as the network does
    (tmp_path / "tuneline.json").write_text(json.dumps({"modality": "text", "labels": ["a", "b"]}))
    from components.modalities.text import TextModality

    monkeypatch.setattr(TextModality, "load_model", lambda self, folder, device="auto": Fixed())
    assert load_predictor(tmp_path).temperature == 1.0
    (tmp_path / "tuneline.json").write_text(json.dumps({"modality": "text", "labels": ["a", "b"], "temperature": 2.0}))
    assert load_predictor(tmp_path).temperature == 2.0
    np.testing.assert_allclose(load_predictor(tmp_path).predict_proba(["x"]),
                               temperature_scale(np.array([[0.9, 0.1]]), 2.0))
