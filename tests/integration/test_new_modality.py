"""A new modality needs only a Modality subclass and a registry line: a toy one (fixed-length numeric vectors in a
CSV column, a tiny MLP backbone) defined here, registered, and run through the real stages (prepare with its
splits, validate with Great Expectations, augment, train with the Trainer engine, evaluate with the gate), with no
stage module edited."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components import modalities
from components.config import Block, parse_params
from components.modalities import Augmented, Built, Expectation, Loaded, Modality

pytestmark = pytest.mark.slow

LENGTH = 4


class VectorParams(Block):
    """The toy's block of params.yaml (`vectors:`)."""

    column: str = "x"
    length: int = LENGTH  # numbers per vector
    hidden: int = 16  # width of the MLP backbone
    jitter: float = 0.05  # standard deviation of the noise an augmented copy gets


def parse(text: Any) -> np.ndarray:
    """A vector cell ("0.1 2 -3") as numbers; unreadable ones as no numbers."""
    try:
        return np.array([float(v) for v in str(text).split()], dtype=np.float32)
    except ValueError:
        return np.zeros(0, dtype=np.float32)


def mlp(length: int, hidden: int, labels: int) -> Any:
    """The toy backbone (Linear + ReLU) with a new head; Trainer gets the loss from the engine's or its own."""
    import torch

    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(length, hidden), torch.nn.ReLU())
            self.classifier = torch.nn.Linear(hidden, labels)

        def forward(self, vectors: Any, labels: Any = None) -> dict[str, Any]:
            logits = self.classifier(self.backbone(vectors))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
            return out

    return Toy()


class Vectors:
    """A split as the engine's dataset: one {"vectors", "labels"} item per row."""

    def __init__(self, frame: pd.DataFrame, label_ids: dict[str, int]) -> None:
        import torch

        self.items = [{"vectors": torch.tensor(parse(v)), "labels": label_ids[label]}
                      for v, label in zip(frame["vector"], frame["label"], strict=True)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def size(self) -> int:
        return sum(len(item["vectors"]) for item in self.items)


class Predictor:
    def __init__(self, model: Any, labels: list[str]) -> None:
        self.model, self.labels, self.device = model.eval(), labels, "cpu"

    def predict_proba(self, items: list[Any], batch_size: int = 32) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.tensor(np.stack([parse(item) for item in items])))["logits"]
        return torch.softmax(logits, dim=-1).numpy().astype(np.float64)

    def predict(self, items: list[Any], batch_size: int = 32) -> list[Any]:
        from components.predict import to_predictions

        return to_predictions(self.predict_proba(items, batch_size), self.labels)


class VectorModality(Modality):
    """Numeric vectors, written as space-separated numbers in one CSV column."""

    name = "vectors"
    item = "vector"
    items = "vectors"
    column = "vector"
    columns = ("vector", "label", "source_row", "dims")
    details = ("dims",)
    checks = {"vector_length": "error"}
    settings_type = VectorParams
    route = "/classify_vectors"
    request_example = '{"vectors": ["0.1 0.2 0.3 0.4"]}'

    def read(self, data: Any, work: Path) -> Loaded:
        return self.read_table(Path(data.path), (self.settings.column, data.label_column), data, data.path)

    def read_table(self, path: Path, columns: tuple[str, str], data: Any, name: str) -> Loaded:
        from components.tables import label_string, read_source

        table = read_source(path, columns, data.delimiter, data.encoding, name=f"data.path {str(path)!r}",
                            keys=("vectors.column", "data.label_column"))
        frame = pd.DataFrame({"vector": table.item, "label": [label_string(v) for v in table.label],
                              "source_row": table.source_row, "line": table.line})
        frame["dims"] = [len(parse(v)) for v in frame["vector"]]
        return Loaded(frame, str(path), table.format, table.rows_read, table.malformed)

    def item_key(self, frame: pd.DataFrame) -> pd.Series:
        return frame["vector"].map(lambda v: " ".join(f"{x:g}" for x in parse(v)))

    def expectations(self, labels: list[str]) -> list[Expectation]:
        length = self.settings.length
        return [Expectation("vector_length", "expect_column_values_to_be_between",
                            {"column": "dims", "min_value": length, "max_value": length})]

    def detail(self, row: Mapping[str, Any]) -> str | None:
        return f"{row['dims']} numbers, expected {self.settings.length}"

    def augment(self, train: pd.DataFrame, held_out: list[pd.DataFrame], wanted: Mapping[str, int], params: Any,
                model: Any, prepared_dir: Path, out_dir: Path) -> Augmented:
        from components.copies import pick_sources

        rng = np.random.default_rng(params.seed)
        copies = []
        for label in sorted(wanted):
            rows = train[train["label"] == label].reset_index(drop=True)
            for position in pick_sources(len(rows), wanted[label], rng):
                row = rows.iloc[int(position)].to_dict()
                noisy = parse(row["vector"]) + rng.normal(0, self.settings.jitter, self.settings.length)
                copies.append({**row, "vector": " ".join(f"{x:.4f}" for x in noisy), "augmented": True})
        frame = pd.concat([train.assign(augmented=False), pd.DataFrame(copies)], ignore_index=True)
        return Augmented(frame, {"jitter": self.settings.jitter})

    def build(self, labels: list[str], model: Any) -> Built:
        from safetensors.torch import save_file

        net = mlp(self.settings.length, self.settings.hidden, len(labels))

        def save(trainer: Any, folder: Path) -> None:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))

        return Built(model=net, meta={"base_model": "toy MLP, random weights", "length": self.settings.length,
                                      "hidden": self.settings.hidden}, save=save, source="toy", unit="numbers")

    def dataset(self, built: Built, frame: pd.DataFrame, folder: Path, label_ids: dict[str, int],
                train_params: Any) -> Any:
        return Vectors(frame, label_ids)

    def collator(self, built: Built, train_params: Any) -> tuple[Any, bool]:
        from transformers import default_data_collator

        return default_data_collator, False

    def inputs(self, frame: pd.DataFrame, folder: Path) -> list[Any]:
        return frame["vector"].tolist()

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> tuple[str, list[str]]:
        from sklearn.neighbors import NearestCentroid

        fitted = NearestCentroid().fit(np.stack(train["vector"].map(parse)), train["label"])
        return "nearest centroid", [str(v) for v in fitted.predict(np.stack(test["vector"].map(parse)))]

    def load_model(self, model_dir: Path, device: str = "auto") -> Any:
        from safetensors.torch import load_file

        meta = json.loads((Path(model_dir) / "tuneline.json").read_text())
        net = mlp(meta["length"], meta["hidden"], len(meta["labels"]))
        net.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")))
        return Predictor(net, meta["labels"])

    def decode_request(self, item: Any) -> Any:
        if len(parse(item)) != self.settings.length:
            raise ValueError(f"is not {self.settings.length} numbers")
        return item

    def warm_up_input(self, predictor: Any) -> Any:
        return " ".join(["0"] * self.settings.length)


@pytest.fixture
def registered() -> Iterator[None]:
    modalities.register(VectorModality)  # the registry line
    yield
    modalities.unregister(VectorModality.name)


def write_vectors(path: Path, bad_row: int | None = None) -> Path:
    """160 vectors in four clusters around (+-2, +-2, 0, 0): label "same" where the first two numbers share a sign,
    "opposite" where they do not (an XOR, which no nearest centroid separates); at bad_row, one of the wrong
    length."""
    rng = np.random.default_rng(0)
    lines = ["x,label"]
    for i in range(160):
        signs = np.array([1 if i % 2 else -1, 1 if i % 4 < 2 else -1, 0, 0])
        vector = rng.normal(2.0 * signs, 0.5)
        label = "same" if signs[0] == signs[1] else "opposite"
        if i == bad_row:
            vector = vector[:3]
        lines.append(" ".join(f"{v:.4f}" for v in vector) + f",{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_registered_toy_modality_runs_through_the_real_stages(registered: None, tmp_path: Path) -> None:
    from components import augment, evaluate, prepare, train, validate

    params = parse_params({
        "data": {"modality": "vectors", "path": str(write_vectors(tmp_path / "vectors.csv"))},
        "vectors": {"hidden": 8},
        "validate": {"severity": {"vector_length": "error"}},  # its check is a validate.severity key like any
        "train": {"epochs": 20, "learning_rate": 0.05, "batch_size": 16, "early_stopping_patience": 0},
    })
    assert "vectors" in modalities.names() and params.settings("vectors").hidden == 8
    prepared, augmented, model = tmp_path / "prepared", tmp_path / "augmented", tmp_path / "model"

    result = prepare.run(params.data, modalities.for_params(params), prepared)
    assert result.labels == ["opposite", "same"] and sum(result.counts.values()) == 160
    assert json.loads((prepared / "summary.json").read_text())["modality"] == "vectors"
    toy = modalities.for_prepared(prepared, params)
    assert isinstance(toy, VectorModality)

    checked = validate.run(params.validate_params, toy, prepared, tmp_path / "validation.json")
    assert checked.success
    report = json.loads((tmp_path / "validation.json").read_text())
    names = {c["check"]: c for c in report["splits"]["train"]["checks"]}
    assert names["vector_length"]["result"] == "pass" and names["exact_duplicates"]["expectation"] == \
        "expect_vectors_to_be_unique"

    copies = augment.run(params.augment, params.model, toy, prepared, augmented)
    assert copies.added_rows > 0 and copies.details == {"jitter": 0.05}

    trained = train.run(params.model, params.train, toy, augmented, prepared, model, tmp_path / "train.json")
    assert trained.unit == "numbers" and trained.train_units == LENGTH * trained.train_rows
    assert json.loads((model / "tuneline.json").read_text())["modality"] == "vectors"

    scored = evaluate.run(params.evaluate, model, prepared, tmp_path / "test.json", tmp_path / "gate.json",
                          predictions_path=tmp_path / "predictions.csv")
    assert scored.macro_f1 >= 0.9 and scored.passed  # the clusters are eight standard deviations apart
    metrics = json.loads((tmp_path / "test.json").read_text())
    assert metrics["baseline_name"] == "nearest centroid" and metrics["baseline"]["macro"]["f1"] < 0.8
    assert "vector" in pd.read_csv(tmp_path / "predictions.csv").columns


def test_the_toy_modality_s_own_check_stops_a_bad_row(registered: None, tmp_path: Path) -> None:
    from components import prepare, validate
    from components.validate import ValidationFailed

    params = parse_params({"data": {"modality": "vectors",
                                    "path": str(write_vectors(tmp_path / "vectors.csv", bad_row=7))}})
    prepare.run(params.data, modalities.for_params(params), tmp_path / "prepared")
    with pytest.raises(ValidationFailed, match=r"\[vector_length\] .* line 9: 3 numbers, expected 4"):
        validate.run(params.validate_params, modalities.for_prepared(tmp_path / "prepared", params),
                     tmp_path / "prepared", tmp_path / "validation.json")
