"""Stage `package`: store a candidate that passed the gate in the BentoML model store, or refuse and say why."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Params
from components.io import read_json, write_json
from components.predict import read_meta
from components.stage import StageError, stage_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageResult:
    """The tag of the model now in the store."""

    tag: str


def refusal(verdict: dict[str, Any]) -> str:
    """The message for a candidate the gate refused: every failed condition with its numbers, then the fix."""
    lines = [f"  - {failure['message']}" for failure in verdict.get("failures", [])] or ["  - (no conditions recorded)"]
    return (
        "the candidate failed the quality gate, so nothing was packaged and the current model stays in place:\n"
        + "\n".join(lines)
        + "\nImprove the data or the training params (or, deliberately, the floors in the evaluate block of "
        "params.yaml), then rerun."
    )


RECORD_FILE = "package.json"


def store(model_dir: str | Path, name: str, metadata: dict[str, Any], record: dict[str, Any] | None = None) -> str:
    """Copy a trained model folder into the BentoML model store under `name`; return the new tag.

    `metadata` is what `bentoml models get` shows (BentoML takes only non-null scalars, lists and dicts);
    `record`, when given, is saved whole as package.json beside the weights.
    """
    import bentoml

    with bentoml.models.create(name=name, labels={"pipeline": "tuneline"}, metadata=metadata) as ref:
        shutil.copytree(model_dir, ref.path, dirs_exist_ok=True)
        if record is not None:
            write_json(Path(ref.path) / RECORD_FILE, record)
    return str(ref.tag)


def run(params: Params, model_dir: str | Path, metrics_path: str | Path, verdict_path: str | Path,
        out_path: str | Path) -> PackageResult:
    """Package the candidate when the gate passed.

    Args:
        params: all params (package.model_name names the model; the rest is recorded with it).
        model_dir: the trained model folder (paths.model).
        metrics_path: the evaluate stage's test metrics (paths.metrics).
        verdict_path: the evaluate stage's gate verdict (paths.verdict).
        out_path: where to record the stored tag (paths.packaged).

    Returns:
        The tag of the stored model.

    Raises:
        StageError: the gate did not pass; nothing is stored and out_path is left as it was.
    """
    verdict = read_json(verdict_path)
    if not verdict.get("passed"):
        raise StageError(refusal(verdict))
    metrics = read_json(metrics_path)
    meta = read_meta(model_dir)
    metadata = {
        "labels": meta["labels"],
        "base_model": meta["base_model"],
        "test_macro": metrics["model"]["macro"],
        "test_accuracy": metrics["model"]["accuracy"],
        "baseline_macro_f1": metrics["baseline"]["macro"]["f1"],
        "gate_passed": True,
    }
    record = {"metrics": metrics, "gate": verdict, "params": params.model_dump(mode="json", by_alias=True)}
    tag = store(model_dir, params.package.model_name, metadata, record)
    write_json(out_path, {"tag": tag, "model_name": params.package.model_name})
    log.info("packaged %s into the BentoML model store", tag)
    print(f"model: {tag}")
    return PackageResult(tag=tag)


def main() -> None:
    stage_main("package", lambda p: run(p, p.paths.model, p.paths.metrics, p.paths.verdict, p.paths.packaged))


if __name__ == "__main__":
    main()
