"""The Prefect flow that runs dvc.yaml's stages, in dvc.yaml's order, through DVC's Python API."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components.config import load_params
from components.io import read_json
from components.package import refusal


class StageFailed(Exception):
    """A DVC stage exited non-zero (`stage` names it); its own message was printed above this one."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


def stage_order(root: str | Path) -> list[str]:
    """The stage names in the order dvc.yaml lists them (which is also their dependency order)."""
    document = yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8"))
    return list(document["stages"])


@task(task_run_name="dvc-{stage}")
def reproduce_stage(root: str, stage: str) -> bool:
    """Run one DVC stage if its deps or params changed; True when it ran, False when DVC found it up to date."""
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    logger = get_run_logger()
    try:
        # DVC resolves some paths against the working directory, so work from the repository root.
        with contextlib.chdir(root), Repo(".") as repo:
            ran = repo.reproduce(stage, single_item=True)
    except ReproductionError as exc:
        raise StageFailed(f"stage {stage!r} failed ({exc.__cause__ or exc}); its message is printed above",
                          stage) from None
    logger.info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return bool(ran)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """The test metrics as a markdown table: model vs baseline, macro figures, then per class."""
    model, baseline = metrics["model"], metrics["baseline"]
    rows = ["| | accuracy | macro precision | macro recall | macro F1 |", "|---|---|---|---|---|"]
    for name, figures in (("model", model), (metrics.get("baseline_name", "TF-IDF baseline"), baseline)):
        macro = figures["macro"]
        rows.append(f"| {name} | {figures['accuracy']:.4f} | {macro['precision']:.4f} | {macro['recall']:.4f} | "
                    f"{macro['f1']:.4f} |")
    rows += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    rows += [f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
             for label, c in model["per_class"].items()]
    return f"# Test metrics ({metrics['test_rows']} rows)\n\n" + "\n".join(rows)


def verdict_markdown(verdict: dict[str, Any]) -> str:
    """The gate verdict as a markdown checklist, headed by the decision (promote, keep or refuse) and its reason."""
    lines = [f"- [{'x' if check['passed'] else ' '}] {check['message']}" for check in verdict["checks"]]
    decision = verdict.get("decision", "promote" if verdict["passed"] else "refuse")
    head = f"# Gate: {'passed' if verdict['passed'] else 'FAILED'}, decision: {decision}"
    return head + f"\n\n{verdict.get('reason', '')}\n\n" + "\n".join(lines)


def publish_validation(root: Path, report_path: str) -> dict[str, Any]:
    """Publish the validate stage's report (if it wrote one) as the "tuneline-validation" markdown artifact.

    Returns:
        {"validation": {"success", "results"}} from the report, or {} when there is no report yet.
    """
    from components.validation_report import render_markdown

    if not (root / report_path).is_file():
        return {}
    report = read_json(root / report_path)
    if "results" not in report:  # left by an older validate (its stage failed or did not run since): skip it
        return {}
    create_markdown_artifact(key="tuneline-validation", markdown=render_markdown(report),
                             description="Tuneline data validation: every check, its severity and result")
    return {"validation": {"success": report["success"], "results": report["results"]}}


def publish(root: Path) -> dict[str, Any]:
    """Publish the metrics and the gate verdict (whichever exist) as Prefect artifacts; return them."""
    paths = load_params(root / "params.yaml").paths
    found: dict[str, Any] = publish_validation(root, paths.validation)
    for key, path, render in (("metrics", paths.metrics, metrics_markdown), ("verdict", paths.verdict,
                                                                             verdict_markdown)):
        if (root / path).is_file():
            found[key] = read_json(root / path)
            create_markdown_artifact(key=f"tuneline-{key}", markdown=render(found[key]),
                                     description=f"Tuneline {key}")
    if (root / paths.evaluation_report).is_file():
        create_markdown_artifact(key="tuneline-evaluation",
                                 markdown=(root / paths.evaluation_report).read_text(encoding="utf-8"),
                                 description="Tuneline evaluation: metrics with intervals, champion, mistakes")
    if (root / paths.packaged).is_file():
        found["model_tag"] = read_json(root / paths.packaged)["tag"]
    return found


@flow(name="tuneline-pipeline", log_prints=True)
def pipeline(root: str = ".") -> dict[str, Any]:
    """Run prepare → validate → augment → train → evaluate → package, each only if DVC says it is stale.

    Args:
        root: the project root (holding dvc.yaml and params.yaml).

    Returns:
        What ran, the test metrics, the gate verdict and the packaged model tag.
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    ran: dict[str, bool] = {}
    stage = ""
    try:
        for stage in stage_order(root_path):
            ran[stage] = reproduce_stage(str(root_path), stage)
    except StageFailed:
        found = publish(root_path)
        if stage == "package" and "verdict" in found:
            logger.error(refusal(found["verdict"]))
        raise
    found = publish(root_path)
    logger.info("stages run: %s", [name for name, did in ran.items() if did] or "none (all up to date)")
    return {"ran": ran, **found}
