"""Temperature scaling: probabilities a user can threshold.

A model fine-tuned on a small data set is over-confident. One temperature T, fitted on the validation split after
training by minimising the negative log-likelihood, softens (T > 1) or sharpens (T < 1) every prediction alike:
p_i ** (1 / T), normalised, which is softmax(logits / T) for the model's own logits. The top label never changes,
so accuracy, precision, recall and F1 stay exactly as they were; only the probabilities move. The train stage stores
T in the model's tuneline.json, and every predictor applies it (components.predict.Calibrated), so evaluate and
serving give the same probabilities.
"""

from __future__ import annotations

import numpy as np

# Temperatures searched: far enough either way for any model, narrow enough that a degenerate fit stays sane.
BOUNDS = (0.05, 20.0)
FLOOR = 1e-12  # a probability that rounded to 0 still has a logarithm


def temperature_scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of `probabilities` scaled by `temperature` (softmax(log p / T)); T = 1 returns them unchanged."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0 or probabilities.size == 0:
        return probabilities
    scaled = np.log(np.clip(probabilities, FLOOR, 1.0)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, true_index: np.ndarray) -> float:
    """Mean -log p(true label) over the rows."""
    rows = np.arange(len(true_index))
    return float(-np.mean(np.log(np.clip(probabilities[rows, true_index], FLOOR, 1.0))))


def fit_temperature(probabilities: np.ndarray, true_index: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the true labels (1.0 without rows).

    Args:
        probabilities: (rows, labels) the model's probabilities on the validation split.
        true_index: (rows,) each row's true label, as a column index.

    Returns:
        T within BOUNDS, rounded to 6 decimals.
    """
    from scipy.optimize import minimize_scalar

    if len(true_index) == 0:
        return 1.0
    true_index = np.asarray(true_index)
    fitted = minimize_scalar(
        lambda log_t: negative_log_likelihood(temperature_scale(probabilities, float(np.exp(log_t))), true_index),
        bounds=tuple(np.log(BOUNDS)), method="bounded", options={"xatol": 1e-5})
    return round(float(np.exp(fitted.x)), 6)
