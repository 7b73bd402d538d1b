"""What pretraining buys: the pipeline's network trained again from random weights, on the same splits with the
same recipe, and both scored on the same test rows (`tuneline scratch`, run by `make run-images`).

For any modality whose models can start from random weights (model.pretrained: false): images today; text refuses
it with the reason, as its check_options says.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from components import metrics as m
from components import modalities
from components.config import Params
from components.io import META_FILE, read_labels, read_split, write_json
from components.predict import read_meta
from components.stage import StageError

log = logging.getLogger(__name__)

SCRATCH_LR_FACTORS = (1 / 3, 1.0, 3.0)  # random weights get their best of these multiples of the model's rate


def _scores(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    scored = m.classification_metrics(truth, predicted, labels)
    return {"test_macro_f1": scored["macro"]["f1"], "test_accuracy": scored["accuracy"]}


def compare_with_scratch(params: Params, *, factors: tuple[float, ...] = SCRATCH_LR_FACTORS) -> dict[str, Any]:
    """The same network from random weights, trained on the same train and val splits with the same recipe, scored
    on the same test rows as the pipeline's model (paths.model).

    Random weights get a small search the pretrained model did not: each multiple `factors` of the learning rate
    the pipeline's model trained at is tried and the one best on val macro-F1 is kept (the test split is never
    looked at for that). The difference
    in test macro-F1 comes with a paired bootstrap interval (evaluate.confidence, bootstrap_resamples), the same
    test the gate uses against the champion. The result also goes to paths.scratch.

    Raises:
        StageError: the pipeline has not trained a model yet, model.pretrained is false, or the modality's models
            cannot start from random weights.
    """
    from components.train import run as train

    paths = params.paths
    if not (Path(paths.model) / META_FILE).is_file():
        raise StageError(f"no trained model in {paths.model}; run the pipeline first (make run-images)")
    if not params.model.pretrained:
        raise StageError("model.pretrained is false: the pipeline's model already has random weights, so there is "
                         "nothing to compare; set it to true")
    modality = modalities.for_prepared(paths.prepared, params)
    # every layer trains: frozen random layers would only handicap the untrained network
    scratch_model = params.model.model_copy(update={"pretrained": False, "freeze_layers": 0,
                                                    "freeze_embeddings": False, "freeze_backbone": False})
    modality.check_options(params.model_copy(update={"model": scratch_model}))
    labels = read_labels(paths.prepared)
    test = read_split(paths.prepared, "test")
    truth = test["label"].astype(str).tolist()
    items = modality.inputs(test, Path(paths.prepared))

    def test_predictions(model_dir: Path) -> list[str]:
        predictor = modality.load_predictor(model_dir, params.train.device)
        return [labels[i] for i in predictor.predict_proba(items, params.evaluate.batch_size).argmax(axis=1)]

    pretrained = test_predictions(Path(paths.model))
    base_rate = float(read_meta(paths.model)["train"]["learning_rate"])  # as the pipeline's model trained (recipe)
    tried: list[dict[str, Any]] = []
    best: tuple[float, list[str]] | None = None
    for factor in factors:
        learning_rate = float(f"{base_rate * factor:.3g}")
        with tempfile.TemporaryDirectory(prefix="tuneline-scratch-") as tmp:
            result = train(scratch_model, params.train.model_copy(update={"learning_rate": learning_rate}),
                           modality, paths.augmented, paths.prepared, Path(tmp) / "model", Path(tmp) / "train.json")
            tried.append({"learning_rate": learning_rate, "val_macro_f1": result.best_val_macro_f1,
                          "steps": result.steps})
            log.info("random weights, learning rate %g: val macro-F1 %.4f", learning_rate, result.best_val_macro_f1)
            scratch_name = read_meta(Path(tmp) / "model")["base_model"]
            if best is None or result.best_val_macro_f1 > best[0]:
                best = (result.best_val_macro_f1, test_predictions(Path(tmp) / "model"))
    assert best is not None
    chosen = max(tried, key=lambda t: t["val_macro_f1"])
    difference = m.paired_bootstrap_difference(truth, pretrained, best[1], labels, params.evaluate.bootstrap_resamples,
                                               params.evaluate.confidence, params.evaluate.seed)
    comparison = {
        "test_rows": len(truth),
        "pretrained": {"base_model": read_meta(paths.model)["base_model"], **_scores(truth, pretrained, labels)},
        "scratch": {"base_model": scratch_name, "learning_rate": chosen["learning_rate"],
                    "val_macro_f1": chosen["val_macro_f1"], **_scores(truth, best[1], labels)},
        "learning_rates_tried": tried,
        # pretrained minus scratch; "clear" when the whole interval lies above zero
        "difference": {key: difference[key] for key in ("difference", "low", "high", "confidence")},
        "clear": bool(difference["low"] > 0),
    }
    write_json(paths.scratch, comparison)
    return comparison
