"""A faster inference path, gated like a model: at package time the trained model is exported to the faster
runtimes its modality offers (texts: ONNX Runtime, int8 and fp32), each is run on the test split beside the PyTorch
model, and the first that passes the parity gate (its labels agree with PyTorch's on at least `min_agreement` of the
rows; its macro-F1 at most `max_f1_drop` below) is stored with the model, in its `fast/` folder with the verdict. The
service serves it; otherwise, or when loading it fails, PyTorch, and /model says why. Modality-blind: the modality
exports and loads, this module compares label lists and decides.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.config import FastPathParams
    from components.modalities import Modality
    from components.predict import Predictor

log = logging.getLogger(__name__)

FAST_DIR = "fast"  # in a stored model's folder: the exported file and VERDICT_FILE
VERDICT_FILE = "fast_path.json"
PYTORCH = "pytorch"


class ExportError(RuntimeError):
    """The model could not be exported or quantised (the message says which step and why)."""


def parity(reference: list[str], candidate: list[str], truth: list[str], labels: list[str], min_agreement: float,
           max_f1_drop: float) -> dict[str, Any]:
    """The verdict on `candidate`'s test predictions against `reference`'s (the PyTorch model's), with the figures.

    Raises:
        ValueError: the three lists differ in length or are empty.
    """
    from sklearn.metrics import f1_score

    if not (len(reference) == len(candidate) == len(truth)) or not truth:
        raise ValueError(f"parity needs the same test rows for both: {len(reference)} reference, {len(candidate)} "
                         f"candidate and {len(truth)} true labels")
    agreement = sum(a == b for a, b in zip(reference, candidate, strict=True)) / len(truth)
    reference_f1 = float(f1_score(truth, reference, labels=labels, average="macro", zero_division=0))
    candidate_f1 = float(f1_score(truth, candidate, labels=labels, average="macro", zero_division=0))
    drop = reference_f1 - candidate_f1
    tolerance = 1e-9  # a drop of exactly max_f1_drop passes, float rounding aside
    failures = []
    if agreement < min_agreement - tolerance:
        failures.append(f"labels agree with PyTorch on {agreement:.2%} of {len(truth)} test rows, under the "
                        f"{min_agreement:.2%} required")
    if drop > max_f1_drop + tolerance:
        failures.append(f"macro-F1 {candidate_f1:.4f} is {drop:.4f} below PyTorch's {reference_f1:.4f}, more than "
                        f"the {max_f1_drop:.4f} allowed" if max_f1_drop >= 0 else
                        f"macro-F1 {candidate_f1:.4f} is not at least {-max_f1_drop:.4f} above PyTorch's "
                        f"{reference_f1:.4f}, as max_f1_drop {max_f1_drop} demands")
    reason = "; ".join(failures) or (f"labels agree on {agreement:.2%} of {len(truth)} test rows; macro-F1 "
                                     f"{candidate_f1:.4f} vs PyTorch {reference_f1:.4f}")
    return {"passed": not failures, "agreement": round(agreement, 6), "macro_f1": round(candidate_f1, 6),
            "reference_macro_f1": round(reference_f1, 6), "f1_drop": round(drop, 6), "test_rows": len(truth),
            "reason": reason}


SINGLE_ITEMS = 64  # items timed one per call, for the speed of a lone request


def _run(predictor: Any, items: list[Any], batch_size: int) -> tuple[Any, float, float]:
    """Its probabilities for items, the seconds they took in batches, and the seconds of the first SINGLE_ITEMS
    one per call; after a short warm-up (lazy set-up left out)."""
    predictor.predict_proba(items[:batch_size], batch_size)
    started = time.perf_counter()
    probabilities = predictor.predict_proba(items, batch_size)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for item in items[:SINGLE_ITEMS]:
        predictor.predict_proba([item], 1)
    return probabilities, batched, time.perf_counter() - started


def export_and_gate(modality: Modality, model_dir: Path, out_dir: Path, items: list[Any], truth: list[str],
                    labels: list[str], params: FastPathParams, batch_size: int = 32) -> dict[str, Any]:
    """Export model_dir to the runtimes `params` asks for, fastest first, and keep the first that passes the parity
    gate on (items, truth), the test split: its file goes into out_dir with VERDICT_FILE. Returns the verdict:
    `runtime` (the kept one, or "pytorch"), `reason`, and per runtime tried its figures and gate verdict, with
    `speedup`: PyTorch's time for the test split over the runtime's, one pass each at evaluate's batch size, and
    `single_speedup`: the same for its first SINGLE_ITEMS rows one per call. Under runtime auto a runtime must also
    be faster than PyTorch both ways (on some CPUs fp32 ONNX is slower on batches, bf16 on single texts); one named
    in params is kept at any speed. Never raises for a runtime that fails: that is a verdict too.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if params.runtime == "none":
        return _written(out_dir, {"runtime": PYTORCH, "tried": [],
                                  "reason": "package.fast_path.runtime is none: nothing was exported"})
    wanted = list(modality.fast_runtimes) if params.runtime == "auto" else [params.runtime]
    offered = [runtime for runtime in wanted if runtime in modality.fast_runtimes]
    if not offered:
        return _written(out_dir, {"runtime": PYTORCH, "tried": [], "reason": (
            f"no faster runtime for {modality.items} yet" if not modality.fast_runtimes else
            f"{modality.items} export to {', '.join(modality.fast_runtimes)}, not {params.runtime}")})
    pytorch = modality.load_model(model_dir, "cpu")
    reference_probabilities, reference_seconds, reference_single = _run(pytorch, items, batch_size)
    reference = [pytorch.labels[i] for i in reference_probabilities.argmax(axis=1)]
    tried, kept = [], None
    for runtime in offered:
        try:
            figures = modality.export_fast(model_dir, out_dir, runtime)
            fast = modality.load_fast(model_dir, _file(out_dir, figures["file"]), runtime)
            probabilities, seconds, single = _run(fast, items, batch_size)
        except ExportError as exc:
            tried.append({"runtime": runtime, "passed": False, "reason": str(exc)})
            continue
        verdict = parity(reference, [fast.labels[i] for i in probabilities.argmax(axis=1)], truth, labels,
                         params.min_agreement, params.max_f1_drop)
        speedup, single_speedup = round(reference_seconds / seconds, 2), round(reference_single / single, 2)
        if verdict["passed"] and params.runtime == "auto" and min(speedup, single_speedup) <= 1.0:
            verdict |= {"passed": False, "reason": f"{verdict['reason']}; but it ran at {speedup}x PyTorch's speed "
                                                   f"in batches and {single_speedup}x one text at a time: runtime "
                                                   f"auto keeps only one faster both ways"}
        tried.append({"runtime": runtime, **figures, **verdict, "speedup": speedup, "single_speedup": single_speedup,
                      "max_probability_difference": round(float(abs(probabilities - reference_probabilities).max()),
                                                          6)})
        if verdict["passed"]:
            kept = tried[-1]
            break
    for path in out_dir.iterdir():  # only the kept file stays (int8 is made from the fp32 export)
        if kept is None or path.name != kept.get("file"):
            path.unlink() if path.is_file() else shutil.rmtree(path)
    if kept is None:
        reasons = "; ".join(f"{t['runtime']}: {t['reason']}" for t in tried)
        return _written(out_dir, {"runtime": PYTORCH, "tried": tried,
                                  "reason": f"no export passed the parity gate ({reasons})"})
    return _written(out_dir, {"runtime": kept["runtime"], "file": kept["file"], "tried": tried,
                              "reason": f"passed the parity gate: {kept['reason']}"})


def _file(folder: Path, name: str | None) -> Path | None:
    """Where a runtime's export lies; None for one that has no file (it loads the trained weights differently)."""
    return folder / name if name else None


def _written(out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    (out_dir / VERDICT_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def summary(result: dict[str, Any]) -> str:
    """One line for the stage's output and the card: what will serve, and why."""
    if result["runtime"] == PYTORCH:
        return f"PyTorch: {result['reason']}"
    kept = next(t for t in result["tried"] if t["runtime"] == result["runtime"])
    size = f", {kept['megabytes']} MB" if kept.get("file") else ""
    return (f"{result['runtime']}: labels agree with PyTorch on {kept['agreement']:.2%} of {kept['test_rows']} test "
            f"rows, macro-F1 {kept['macro_f1']:.4f} vs {kept['reference_macro_f1']:.4f}{size}, "
            f"{kept['speedup']}x PyTorch's speed on them in batches, {kept['single_speedup']}x one at a time")


def load_served(modality: Modality, model_dir: Path, device: str, allowed: bool = True) -> tuple[Predictor, dict]:
    """The predictor the service runs for a stored model folder, temperature applied, and what /model reports of
    the choice: {"runtime", "reason"}. The fast path when the package stage kept one and the service runs on the
    CPU; PyTorch otherwise, or when the fast path fails to load (logged, and said in the reason)."""
    from components.predict import Calibrated, pick_device, read_meta

    verdict_path = model_dir / FAST_DIR / VERDICT_FILE
    verdict = json.loads(verdict_path.read_text(encoding="utf-8")) if verdict_path.is_file() else None
    device = pick_device(device)
    reason = None
    if verdict is None:
        reason = "the model was packaged before Tuneline exported faster runtimes"
    elif verdict["runtime"] == PYTORCH:
        reason = verdict["reason"]
    elif not allowed:
        reason = "serve.runtime is pytorch"
    elif device != "cpu":
        reason = f"serving on {device}: the exported runtime ({verdict['runtime']}) is for the CPU"
    else:
        try:
            fast = modality.load_fast(model_dir, _file(model_dir / FAST_DIR, verdict["file"]), verdict["runtime"])
        except Exception as exc:  # noqa: BLE001 - a broken export must not stop the service: PyTorch serves
            log.warning("could not load the %s export of %s (%s); serving PyTorch", verdict["runtime"], model_dir,
                        exc)
            reason = f"loading the {verdict['runtime']} export failed ({type(exc).__name__}: {exc}); serving PyTorch"
        else:
            temperature = read_meta(model_dir).get("temperature", 1.0)
            return Calibrated(fast, temperature), {"runtime": verdict["runtime"], "reason": verdict["reason"]}
    return modality.load_predictor(model_dir, device), {"runtime": PYTORCH, "reason": reason}
