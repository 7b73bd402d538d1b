"""The package stage inside a DVC experiment (DVC_EXP_NAME set, as `dvc exp run` does for every stage command):
the candidate is stored, the champion stays. Against the real BentoML store of the test session (a temporary
BENTOML_HOME, set in tests/conftest.py before BentoML loads; BentoML reads it once per process), one model name
per test."""

from __future__ import annotations

import json
from pathlib import Path

import bentoml
import pytest

from components import registry
from components.config import Params
from components.package import run

LABELS = ["neg", "pos"]


def candidate(tmp_path: Path, name: str) -> Path:
    """A model folder as the train stage leaves it, as far as packaging reads it: tuneline.json and weights."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tuneline.json").write_text(json.dumps({"base_model": "tiny", "labels": LABELS, "max_length": 8}))
    (folder / "model.safetensors").write_bytes(name.encode())
    return folder


def inputs(tmp_path: Path, decision: str) -> tuple[Path, Path]:
    """The evaluate stage's test metrics and a passing verdict with `decision`."""
    scores = {"precision": 0.8, "recall": 0.7, "f1": 0.75}
    per_class = {label: scores | {"support": 5} for label in LABELS}
    metrics = {"test_rows": 10,
               "model": {"accuracy": 0.8, "macro": scores, "per_class": per_class, "intervals": {}},
               "baseline": {"accuracy": 0.6, "macro": {"precision": 0.6, "recall": 0.6, "f1": 0.6}}}
    verdict = {"passed": True, "decision": decision, "reason": "better than the champion", "checks": []}
    metrics_path, verdict_path = tmp_path / "test.json", tmp_path / "gate.json"
    metrics_path.write_text(json.dumps(metrics))
    verdict_path.write_text(json.dumps(verdict))
    return metrics_path, verdict_path


@pytest.mark.parametrize("decision", ["promote", "keep"])
def test_an_experiment_stores_its_model_but_never_changes_the_champion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], decision: str) -> None:
    name = f"pkg-experiment-{decision}"
    params = Params(package={"model_name": name, "fast_path": {"runtime": "none"}})  # weights are fake here
    metrics_path, verdict_path = inputs(tmp_path, "promote")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)  # the tests themselves may run under `dvc exp run`
    champion = run(params, candidate(tmp_path, "first"), metrics_path, verdict_path, tmp_path / "first.json",
                   lock_path=tmp_path / "dvc.lock").tag
    assert registry.champion(name) == champion

    metrics_path, verdict_path = inputs(tmp_path, decision)
    monkeypatch.setenv("DVC_EXP_NAME", "fizzy-tuna")
    out_path = tmp_path / "packaged.json"
    tag = run(params, candidate(tmp_path, "second"), metrics_path, verdict_path, out_path,
              lock_path=tmp_path / "dvc.lock").tag

    assert tag != champion
    assert registry.champion(name) == champion
    assert [event["tag"] for event in registry.history(name)] == [champion]
    stored = bentoml.models.get(tag)
    assert stored.info.metadata["experiment"] == "fizzy-tuna"
    assert (Path(stored.path) / "model.safetensors").read_bytes() == b"second"
    packaged = json.loads(out_path.read_text())
    assert packaged["tag"] == tag and packaged["champion"] == champion
    assert packaged["decision"] == decision
    assert "fizzy-tuna" in packaged["not_promoted"]
    printed = capsys.readouterr().out
    assert (f"model: {tag} (stored; experiment fizzy-tuna does not change the champion; "
            f"promote it with: tuneline promote {tag})") in printed
