"""Stage `package`: store a candidate the gate let through in the BentoML model store with its record and model
card, make it the champion when the verdict says promote, or refuse and say why. Inside a DVC experiment
(`dvc exp run`, queued or not) the candidate is stored but never promoted: the user compares experiments and
promotes the one they pick."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import fastpath
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
        "the candidate failed the quality gate, so nothing was packaged and the champion stays in place:\n"
        + "\n".join(lines)
        + "\nImprove the data or the training params (or, deliberately, the floors in the evaluate block of "
        "params.yaml), then rerun."
    )


RECORD_FILE = "package.json"
MODEL_CARD = "MODEL_CARD.md"


def store(model_dir: str | Path, name: str, metadata: dict[str, Any], record: dict[str, Any] | None = None,
          card: Callable[[str], str] | None = None, extra: dict[str, Path] | None = None) -> str:
    """Copy a trained model folder into the BentoML model store under `name`; return the new tag.

    `metadata` is what `bentoml models get` shows (BentoML takes only non-null scalars, lists and dicts);
    `record`, when given, is saved whole as package.json beside the weights, and `card(tag)` as MODEL_CARD.md;
    each folder of `extra` is copied in under its key (the fast path's export).
    """
    import bentoml

    with bentoml.models.create(name=name, labels={"pipeline": "tuneline"}, metadata=metadata) as ref:
        shutil.copytree(model_dir, ref.path, dirs_exist_ok=True)
        for folder_name, folder in (extra or {}).items():
            shutil.copytree(folder, Path(ref.path) / folder_name, dirs_exist_ok=True)
        if record is not None:
            write_json(Path(ref.path) / RECORD_FILE, record)
        if card is not None:
            (Path(ref.path) / MODEL_CARD).write_text(card(str(ref.tag)), encoding="utf-8")
    return str(ref.tag)


# git pathspecs of what a pipeline run writes into the repository: not code, so not "dirty" code.
NOT_CODE = (":(exclude)dvc.lock", ":(exclude,glob)**/*.dvc", ":(exclude,glob)**/.gitignore", ":(exclude)params.yaml",
            ":(exclude)metrics", ":(exclude)reports", ":(exclude)runs")


def data_version(lock_path: str | Path, paths: list[str]) -> dict[str, str]:
    """The DVC hashes (md5 of the folder) of the data folders that made the model, from dvc.lock.

    Empty when the pipeline did not run under DVC (no dvc.lock): the record then says so rather than guessing.
    """
    import yaml

    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return {}
    stages = (yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}).get("stages", {})
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") in paths and out.get("md5"):
                found[out["path"]] = out["md5"]
    return dict(sorted(found.items()))


def code_revision(root: str | Path = ".") -> str:
    """The git commit the code was at, with `+dirty` when tracked files had changes; `unknown` outside git.

    The pipeline's own records (dvc.lock, .dvc files, params.yaml, metrics/, reports/, runs/) do not count: they
    change with every run and are recorded with the model anyway.
    """
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def model_card(tag: str, record: dict[str, Any]) -> str:
    """A model card in markdown: what the model is, how it scored, what made it, and what the gate decided."""
    metrics, verdict, provenance = record["metrics"], record["gate"], record["provenance"]
    model, baseline = metrics["model"], metrics["baseline"]
    intervals = model.get("intervals", {})

    def ci(key: str) -> str:
        low_high = intervals.get(key)
        return f" [{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else ""

    kind = provenance.get("modality", "text")
    baseline_name = metrics.get("baseline_name", "TF-IDF baseline")
    lines = [
        f"# Model card: {tag}",
        "",
        f"- Task: {kind} classification into {', '.join(provenance['labels'])}",
        f"- Base model: {provenance['base_model']}",
        f"- Code revision: {provenance['code_revision']}",
        "- Data version (DVC md5): " + (", ".join(f"{k} {v}" for k, v in provenance["data_version"].items())
                                        or "not run under DVC"),
        f"- Gate decision: **{verdict.get('decision', 'promote')}**: {verdict.get('reason', '')}",
        "",
        f"## Test metrics ({metrics['test_rows']} rows; 95% bootstrap intervals)",
        "",
        f"| | model | {baseline_name} |",
        "|---|---|---|",
        f"| accuracy | {model['accuracy']:.4f}{ci('accuracy')} | {baseline['accuracy']:.4f} |",
        f"| macro precision | {model['macro']['precision']:.4f}{ci('macro_precision')} | "
        f"{baseline['macro']['precision']:.4f} |",
        f"| macro recall | {model['macro']['recall']:.4f}{ci('macro_recall')} | {baseline['macro']['recall']:.4f} |",
        f"| macro F1 | {model['macro']['f1']:.4f}{ci('macro_f1')} | {baseline['macro']['f1']:.4f} |",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *[f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
          for label, c in model["per_class"].items()],
        "",
        "## Training",
        "",
        f"- model params: `{json.dumps(record['params']['model'], sort_keys=True)}`",
        f"- train params: `{json.dumps(record['params']['train'], sort_keys=True)}`",
        "",
        "## Gate",
        "",
        *[f"- [{'x' if check['passed'] else ' '}] {check['message']}" for check in verdict.get("checks", [])],
        "",
        "## Serving runtime",
        "",
        f"- {fastpath.summary(record['fast_path'])}" if "fast_path" in record else "- PyTorch (not recorded)",
        *[f"- tried {t['runtime']}: {'passed' if t['passed'] else 'failed'}: {t['reason']}"
          for t in record.get("fast_path", {}).get("tried", [])],
        "",
        f"Intended use: the labels above, on {kind} data like the training data. The test split is small, so figures "
        "carry the intervals shown; check them before relying on a difference.",
    ]
    return "\n".join(lines) + "\n"


def run(params: Params, model_dir: str | Path, metrics_path: str | Path, verdict_path: str | Path,
        out_path: str | Path, lock_path: str | Path = "dvc.lock",
        prepared_dir: str | Path | None = None) -> PackageResult:
    """Store a candidate the gate let through, and make it the champion when the verdict says promote.

    Under `dvc exp run` (DVC sets DVC_EXP_NAME for the stage commands of workspace and queued experiments alike)
    the candidate is stored but not promoted, whatever the verdict: an experiment never changes what is served.

    Args:
        params: all params (package.model_name names the model; the rest is recorded with it).
        model_dir: the trained model folder (paths.model).
        metrics_path: the evaluate stage's test metrics (paths.metrics).
        verdict_path: the evaluate stage's gate verdict (paths.verdict).
        out_path: where to record the stored tag and the decision (paths.packaged).
        lock_path: dvc.lock, for the data version recorded with the model.
        prepared_dir: the prepared splits, whose test split gates the faster runtime (package.fast_path); needed
            unless package.fast_path.runtime is none.

    Returns:
        The tag of the stored model.

    Raises:
        StageError: the verdict refused the candidate; nothing is stored, the champion and out_path stay as they
            were.
    """
    from components import registry

    verdict = read_json(verdict_path)
    decision = verdict.get("decision", "promote" if verdict.get("passed") else "refuse")
    if decision == "refuse" or not verdict.get("passed"):
        raise StageError(refusal(verdict))
    metrics = read_json(metrics_path)
    meta = read_meta(model_dir)
    provenance = {
        "modality": meta.get("modality", "text"),
        "base_model": meta["base_model"],
        "labels": meta["labels"],
        "code_revision": code_revision(),
        "data_version": data_version(lock_path, [params.paths.prepared, params.paths.augmented]),
    }
    metadata = {
        "labels": meta["labels"],
        "base_model": meta["base_model"],
        "test_macro": metrics["model"]["macro"],
        "test_accuracy": metrics["model"]["accuracy"],
        "baseline_macro_f1": metrics["baseline"]["macro"]["f1"],
        "gate_passed": True,
        "decision": decision,
        "code_revision": provenance["code_revision"],
        "data_version": provenance["data_version"],
    }
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        metadata["experiment"] = experiment
    name = params.package.model_name
    with tempfile.TemporaryDirectory(prefix="tuneline-fast-") as work:
        fast = faster_runtime(params, Path(model_dir), prepared_dir, Path(work) / fastpath.FAST_DIR)
        print(f"serving runtime: {fastpath.summary(fast)}")
        metadata["runtime"] = fast["runtime"]
        record = {"metrics": metrics, "gate": verdict, "params": params.model_dump(mode="json", by_alias=True),
                  "provenance": provenance, "fast_path": fast}
        tag = store(model_dir, name, metadata, record, card=lambda t: model_card(t, record),
                    extra={fastpath.FAST_DIR: Path(work) / fastpath.FAST_DIR})
    previous = registry.champion(name)
    if experiment:
        print(f"model: {tag} (stored; experiment {experiment} does not change the champion; "
              f"promote it with: tuneline promote {tag})")
    elif decision == "promote":
        registry.set_champion(name, tag, "promote", verdict.get("reason", "passed the gate"))
        print(f"model: {tag} (promoted: the champion now; was {previous or 'none'})")
    else:
        print(f"model: {tag} (stored; the champion stays {previous}: {verdict.get('reason', '')})\n"
              f"promote it anyway with: tuneline promote {tag}")
    packaged = {"tag": tag, "model_name": name, "decision": decision, "champion": registry.champion(name)}
    if experiment:
        packaged["not_promoted"] = f"ran as experiment {experiment} (dvc exp run); experiments never promote"
    write_json(out_path, packaged)
    log.info("packaged %s into the BentoML model store (%s)", tag, decision)
    return PackageResult(tag=tag)


def faster_runtime(params: Params, model_dir: Path, prepared_dir: str | Path | None, out_dir: Path) -> dict[str, Any]:
    """The fast path's verdict (components/fastpath.py), its export written into out_dir when one passed."""
    from components import modalities
    from components.io import read_labels, read_split

    if params.package.fast_path.runtime != "none" and prepared_dir is None:
        raise ValueError("package.run needs prepared_dir (the test split gates the faster runtime) unless "
                         "package.fast_path.runtime is none")
    modality = modalities.for_model(model_dir, params)
    if params.package.fast_path.runtime == "none" or not modality.fast_runtimes:
        return fastpath.export_and_gate(modality, model_dir, out_dir, [], [], [], params.package.fast_path)
    test = read_split(prepared_dir, "test")
    return fastpath.export_and_gate(modality, model_dir, out_dir, modality.inputs(test, Path(prepared_dir)),
                                    test["label"].tolist(), read_labels(prepared_dir), params.package.fast_path,
                                    params.evaluate.batch_size)


def main() -> None:
    stage_main("package", lambda p: run(p, p.paths.model, p.paths.metrics, p.paths.verdict, p.paths.packaged,
                                        prepared_dir=p.paths.prepared))


if __name__ == "__main__":
    main()
