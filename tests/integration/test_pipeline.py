"""The real pipeline end to end on a tiny slice of the built-in corpus: dvc repro, the Prefect flow, the gate,
and validation stopping bad data. No mocks: real DVC, Prefect, Great Expectations, transformers and BentoML."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bentoml_serve, dvc, set_params, sh, stored_models, tree_digest

pytestmark = pytest.mark.slow

# The `project` and `reproduced` fixtures, and these helpers, live in conftest.py: one trained project per session,
# shared with test_bad_data.py.


def test_dvc_repro_trains_gates_and_packages(project: Path, reproduced: subprocess.CompletedProcess) -> None:
    for stage in ("prepare", "validate", "augment", "train", "evaluate", "package"):
        assert f"Running stage '{stage}'" in reproduced.stdout
    metrics = json.loads((project / "metrics/test.json").read_text())
    assert 0.0 <= metrics["baseline"]["macro"]["f1"] <= 1.0
    assert set(metrics["model"]["per_class"]) == {"fresh", "plot", "rotten"}
    # A few dozen steps of real fine-tuning already beat always answering the majority class.
    majority = max(c["support"] for c in metrics["model"]["per_class"].values()) / metrics["test_rows"]
    assert metrics["model"]["accuracy"] > majority
    assert json.loads((project / "metrics/gate.json").read_text())["passed"] is True
    tag = json.loads((project / "models/packaged.json").read_text())["tag"]
    assert tag in stored_models()

    status = dvc(project, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}
    again = dvc(project, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout
    shown = dvc(project, "metrics", "show", "--json")
    assert "macro" in shown.stdout and "f1" in shown.stdout


def test_the_temperature_fitted_on_val_is_stored_and_reported(project: Path, reproduced) -> None:
    """train fits a temperature on the val split and stores it with the model; evaluate reports the test ECE of the
    probabilities served and of the network's own, and `dvc plots` draws both reliability diagrams in one."""
    meta = json.loads((project / "models/candidate/tuneline.json").read_text())
    training = json.loads((project / "metrics/train.json").read_text())
    assert meta["temperature"] == training["temperature"] > 0 and training["temperature"] != 1.0
    assert training["val_nll_calibrated"] <= training["val_nll"]  # the fit minimises the val NLL
    model = json.loads((project / "metrics/test.json").read_text())["model"]
    assert model["temperature"] == meta["temperature"] and 0 <= model["ece"] <= 1 and 0 <= model["ece_uncalibrated"]
    assert model["ece"] != model["ece_uncalibrated"]
    plots = json.loads(dvc(project, "plots", "show", "--json").stdout)["data"]
    drawn = {row["filename"] for row in plots["reliability"][0]["content"]["data"]["values"]}
    assert drawn == {"reliability.csv", "reliability_uncalibrated.csv"}  # DVC names each line by its file
    assert "temperature-scaled" in (project / "reports/evaluation.md").read_text()


def test_served_predictions_equal_the_evaluate_stages(project: Path, reproduced, project_root: Path,
                                                      tmp_path: Path) -> None:
    """The packaged model, served over HTTP, gives the test rows the label and probability that evaluate wrote.

    It is served twice: from the checkout (`bentoml serve serving.service:TunelineService`, as `make serve` does)
    and from a Bento built offline with `bentoml build`, which must carry the model it was built with.
    """
    import httpx
    import pandas as pd

    offline = pd.read_csv(project / "reports/predictions.csv", keep_default_na=False)
    tag = json.loads((project / "models/packaged.json").read_text())["tag"]
    env = os.environ | {"TUNELINE_MODEL_TAG": tag}

    def ask(url: str) -> pd.DataFrame:
        answers = []
        for start in range(0, len(offline), 100):
            texts = offline["text"].iloc[start:start + 100].tolist()
            response = httpx.post(f"{url}/classify", json={"texts": texts}, timeout=120)
            assert response.status_code == 200, response.text
            answers += response.json()["predictions"]
        assert httpx.get(f"{url}/model", timeout=30).json()["tag"] == tag
        return pd.DataFrame(answers)

    with bentoml_serve(project_root, "serving.service:TunelineService", env, tmp_path / "serve.log") as url:
        served = ask(url)
    assert served["label"].tolist() == offline["predicted"].tolist()
    assert (served["probability"] - offline["probability"]).abs().max() <= 1e-4

    built = sh(project_root, str(Path(sys.executable).parent / "bentoml"), "build", "-f", "serving/bentofile.yaml",
               ".", env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    bento = re.search(r'Bento\(tag="?([\w.-]+:\w+)', built.stdout + built.stderr)
    assert bento, built.stdout[-2000:]
    # No TUNELINE_MODEL_TAG and another working directory: the Bento alone decides what is served.
    bare_env = {k: v for k, v in os.environ.items() if k != "TUNELINE_MODEL_TAG"}
    with bentoml_serve(tmp_path, bento[1], bare_env, tmp_path / "bento.log") as url:
        from_bento = ask(url)
    assert from_bento["label"].tolist() == offline["predicted"].tolist()
    assert (from_bento["probability"] - offline["probability"]).abs().max() <= 1e-4


@pytest.mark.parametrize("gate", ["passes", "fails"])
def test_the_faster_runtime_serves_only_when_it_passes_its_parity_gate(project: Path, reproduced, project_root: Path,
                                                                       tmp_path: Path, gate: str) -> None:
    """The package stage on the trained model with package.fast_path.runtime onnx (fp32). Passing the gate, it is
    what serves, and it answers the test rows as evaluate did within 1e-4; with an impossible threshold (macro-F1
    1.0 above PyTorch's) it is dropped, PyTorch serves, and /model and the model card say why."""
    import httpx
    import pandas as pd
    import yaml
    from conftest import merge

    from components import package
    from components.config import parse_params

    fast_path = {"runtime": "onnx"} | ({"max_f1_drop": -1.0} if gate == "fails" else {})
    params = parse_params(merge(yaml.safe_load((project / "params.yaml").read_text()),
                                {"package": {"model_name": f"tuneline-fast-{gate}", "fast_path": fast_path}}))
    os.chdir(project)  # the stage runs in the project, as DVC runs it (the record reads git there)
    try:
        tag = package.run(params, "models/candidate", "metrics/test.json", "metrics/gate.json",
                          tmp_path / "packaged.json", prepared_dir="data/prepared").tag
    finally:
        os.chdir(project_root)
    import bentoml

    stored = Path(bentoml.models.get(tag).path)
    card = (stored / "MODEL_CARD.md").read_text()
    offline = pd.read_csv(project / "reports/predictions.csv", keep_default_na=False)
    with bentoml_serve(project_root, "serving.service:TunelineService", os.environ | {"TUNELINE_MODEL_TAG": tag},
                       tmp_path / "serve.log") as url:
        info = httpx.get(f"{url}/model", timeout=30).json()
        answer = httpx.post(f"{url}/classify", json={"texts": offline["text"].tolist()[:100]}, timeout=120)
    assert answer.status_code == 200, answer.text
    served = pd.DataFrame(answer.json()["predictions"])
    if gate == "passes":
        assert info["runtime"] == "onnx" and info["runtime_reason"].startswith("passed the parity gate: labels agree")
        assert "- onnx: labels agree with PyTorch on 100.00% of" in card
        assert (stored / "fast" / "model.onnx").is_file()
    else:
        assert info["runtime"] == "pytorch"
        assert "no export passed the parity gate (onnx: " in info["runtime_reason"]
        assert "is not at least 1.0000 above PyTorch's" in info["runtime_reason"]
        assert f"- PyTorch: {info['runtime_reason']}" in card
        assert not (stored / "fast" / "model.onnx").exists()
    assert served["label"].tolist() == offline["predicted"].tolist()[:100]
    assert (served["probability"] - offline["probability"][:100]).abs().max() <= 1e-4


def test_flow_runs_only_stale_stages_and_leaves_dvc_clean(project: Path, reproduced, prefect_harness) -> None:
    from flows.pipeline import pipeline

    set_params(project, {"evaluate": {"min_macro_f1": 0.01}})
    first = pipeline(root=str(project))
    assert first["ran"] == {"prepare": False, "validate": False, "augment": False, "train": False,
                            "evaluate": True, "package": True}
    assert first["verdict"]["passed"] is True
    assert first["model_tag"] in stored_models()
    assert json.loads(dvc(project, "status", "--json").stdout) == {}

    second = pipeline(root=str(project))
    assert not any(second["ran"].values())
    assert second["model_tag"] == first["model_tag"]


def test_failed_gate_packages_nothing(project: Path, reproduced) -> None:
    models_before = stored_models()
    record_before = (project / "models/packaged.json").read_text()
    set_params(project, {"evaluate": {"min_macro_f1": 0.99}})
    result = dvc(project, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "failed the quality gate" in output
    assert "macro f1" in output and "is below the floor 0.9900" in output and "evaluate.min_macro_f1" in output
    assert stored_models() == models_before
    assert (project / "models/packaged.json").read_text() == record_before


def test_bad_data_is_stopped_by_validation_and_loses_nothing(project: Path, reproduced) -> None:
    set_params(project, {})
    assert dvc(project, "repro").returncode == 0
    models_before = stored_models()
    record_before = (project / "models/packaged.json").read_text()
    model_before = tree_digest(project / "models/candidate")

    rows = [f"a perfectly fine review number {i},{'good' if i % 2 else 'bad'}" for i in range(60)]
    rows += ['"   ",good', "another fine text,", "text shared across splits,good"] + ["text shared across splits,bad"]
    (project / "data/raw/bad.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    set_params(project, {"data": {"path": "data/raw/bad.csv", "max_rows": None}})
    result = dvc(project, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "validate stopped" in output
    assert "Running stage 'train'" not in output
    assert "Traceback" not in output
    assert stored_models() == models_before
    assert (project / "models/packaged.json").read_text() == record_before
    assert tree_digest(project / "models/candidate") == model_before
