"""The fine-tuning engine on the pip-shipped MiniLM, a few steps each: heads, LoRA, gradual unfreezing, the
frozen-feature cache, model ranking, kill-and-resume, repeatability and 2-process DDP."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from components import modalities
from components.config import DataParams, ModelParams, TrainParams
from components.io import read_json, read_split, write_split
from components.modalities.text.model import resolve_model
from components.model import load_trained

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from components import prepare

    folder = tmp_path_factory.mktemp("engine") / "prepared"
    prepare.run(DataParams(max_rows=150), modalities.get("text")(), folder)
    return folder


@pytest.fixture(scope="module")
def augmented(prepared: Path) -> Path:
    folder = prepared.parent / "augmented"
    folder.mkdir()
    write_split(folder, "train", read_split(prepared, "train"))
    return folder


def base_weights() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = load_file(str(Path(resolve_model(ModelParams())[0]) / "model.safetensors"))
    return {key.removeprefix("bert."): value for key, value in state.items()}


def tuned_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {key.removeprefix("bert."): value for key, value in load_file(str(model_dir / "model.safetensors")).items()}


def train_here(augmented: Path, prepared: Path, out: Path, model: ModelParams, train: TrainParams,
               **kwargs: object):
    from components import train as train_stage

    return train_stage.run(model, train, modalities.for_prepared(prepared), augmented, prepared, out / "model",
                           out / "train.json", **kwargs)


def test_mlp_head_is_trained_saved_and_rebuilt_for_serving(augmented: Path, prepared: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from components.modalities import load_predictor

    head = {"type": "mlp", "hidden_sizes": [64, 32], "activation": "gelu", "dropout": 0.2}
    train_here(augmented, prepared, tmp_path, ModelParams(head=head),
               TrainParams(method="finetune", max_steps=3, batch_size=8, head_learning_rate=1e-2))

    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert saved["classifier.0.weight"].shape == (64, 384)
    assert saved["classifier.3.weight"].shape == (32, 64)
    assert saved["classifier.6.weight"].shape == (3, 32)
    rebuilt = load_trained(tmp_path / "model", read_json(tmp_path / "model" / "tuneline.json")["model"])
    assert [type(m).__name__ for m in rebuilt.classifier] == ["Linear", "GELU", "Dropout"] * 2 + ["Linear"]
    for key, value in rebuilt.state_dict().items():  # strict load: every saved tensor in place, nothing random
        assert torch.equal(value, saved[key]), key
    probabilities = load_predictor(tmp_path / "model").predict_proba(["a fine film", "dull"])
    assert probabilities.shape == (2, 3) and probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_lora_adapter_is_merged_into_plain_weights(augmented: Path, prepared: Path, tmp_path: Path) -> None:
    result = train_here(augmented, prepared, tmp_path, ModelParams(adapter="lora", lora={"r": 4}),
                        TrainParams(method="finetune", max_steps=4, batch_size=8, learning_rate=5e-3))

    assert result.trainable_params < result.total_params / 50  # the adapter and the head, not the backbone
    base, tuned = base_weights(), tuned_weights(tmp_path / "model")
    assert not [key for key in tuned if "lora" in key or "modules_to_save" in key]
    assert set(tuned) - {"classifier.weight", "classifier.bias"} <= set(base)
    query = "encoder.layer.3.attention.self.query.weight"
    assert not torch.equal(base[query], tuned[query])  # the adapter's update, merged in
    key = "encoder.layer.3.attention.self.key.weight"
    assert torch.equal(base[key], tuned[key])  # not a target: untouched


def test_gradual_unfreezing_thaws_top_layers_first(augmented: Path, prepared: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # Epoch 1: the head only; epoch 2: the top layer too. Lower layers and embeddings never train. No val split, so
    # the model kept is the last epoch's, not the best one's.
    caplog.set_level(logging.INFO, logger="components")  # the engine's thawing schedule
    no_val = tmp_path / "prepared"
    shutil.copytree(prepared, no_val)
    write_split(no_val, "val", read_split(prepared, "val").iloc[:0])
    train_here(augmented, no_val, tmp_path, ModelParams(gradual_unfreeze=1),
               TrainParams(method="finetune", epochs=2, batch_size=16, early_stopping_patience=0))

    thawed = [r.getMessage() for r in caplog.records if "backbone groups thawed" in r.getMessage()]
    assert thawed[0].startswith("epoch 1: 0 of 7") and thawed[-1].startswith("epoch 2: 1 of 7")

    base, tuned = base_weights(), tuned_weights(tmp_path / "model")
    assert not torch.equal(base["encoder.layer.5.output.dense.weight"], tuned["encoder.layer.5.output.dense.weight"])
    for name in ("encoder.layer.4.output.dense.weight", "encoder.layer.0.attention.self.query.weight",
                 "embeddings.word_embeddings.weight"):
        assert torch.equal(base[name], tuned[name]), name


def test_linear_probe_trains_on_cached_features(augmented: Path, prepared: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="components")  # the feature cache's messages
    work = tmp_path / "work"
    model = ModelParams(freeze_backbone=True)
    train = TrainParams(method="finetune", epochs=3, learning_rate=5e-3, batch_size=16)
    first = train_here(augmented, prepared, tmp_path / "first", model, train, work_dir=work)
    second = train_here(augmented, prepared, tmp_path / "second", model, train, work_dir=work)

    messages = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert "computed" in messages[0] and "read" in messages[1]
    assert len(list((work / "features").glob("*.safetensors"))) == 2  # train and val, kept for the next run
    assert first.best_val_macro_f1 == second.best_val_macro_f1
    assert first.trainable_params == 384 * 3 + 3
    base, tuned = base_weights(), tuned_weights(tmp_path / "first" / "model")
    shared = set(base) & set(tuned)
    assert len(shared) > 90 and all(torch.equal(base[key], tuned[key]) for key in shared)  # backbone as pretrained
    assert not (work / "checkpoints").exists() or not any((work / "checkpoints").iterdir())


def test_candidates_are_ranked_and_the_best_trains(augmented: Path, prepared: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    # A model that knows no language: the same tokenizer, random weights. The pretrained MiniLM must beat it.
    random_model = tmp_path / "random-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128)).save_pretrained(random_model)
    AutoTokenizer.from_pretrained(resolve_model(ModelParams())[0]).save_pretrained(random_model)

    model = ModelParams(candidates=[str(random_model), "builtin"], freeze_backbone=True)
    train_here(augmented, prepared, tmp_path, model, TrainParams(method="finetune", max_steps=2, batch_size=16),
               selection_path=tmp_path / "selection.json", work_dir=tmp_path / "work")

    ranking = read_json(tmp_path / "selection.json")
    assert ranking["chosen"] == "builtin"
    assert [c["name"] for c in ranking["candidates"]] == ["builtin", str(random_model)]
    assert ranking["candidates"][0]["val_macro_f1"] > ranking["candidates"][1]["val_macro_f1"]
    assert read_json(tmp_path / "model" / "tuneline.json")["model"]["name_or_path"] == "builtin"


# The stage as DVC runs it: `python -m components.train` in a project folder, with params.yaml.

def stage_project(root: Path, prepared: Path, augmented: Path, train: dict) -> Path:
    (root / "data").mkdir(parents=True)
    shutil.copytree(prepared, root / "data" / "prepared")
    shutil.copytree(augmented, root / "data" / "augmented")
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"method": "finetune", **train}}))
    return root


def start_stage(root: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "components.train"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


RESUMABLE = {"epochs": 3, "batch_size": 8, "early_stopping_patience": 0, "logging_steps": 5}


def test_killed_run_resumes_and_matches_an_uninterrupted_one(prepared: Path, augmented: Path, tmp_path: Path) -> None:
    straight = stage_project(tmp_path / "straight", prepared, augmented, RESUMABLE)
    killed = stage_project(tmp_path / "killed", prepared, augmented, RESUMABLE)
    finish(start_stage(straight))

    process = start_stage(killed)
    deadline = time.monotonic() + 300
    checkpoints = killed / ".tuneline" / "checkpoints"
    while not list(checkpoints.glob("*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2.0)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "models" / "candidate").exists()
    resumed = finish(start_stage(killed))
    per_epoch = -(-len(read_split(augmented, "train")) // 8)
    assert "resuming from" in resumed and f"checkpoint-{per_epoch}" in resumed  # the end of epoch 1

    # Bit for bit the uninterrupted run's model and figures (which also shows that training repeats exactly)
    assert read_json(killed / "metrics" / "train.json") == read_json(straight / "metrics" / "train.json")
    assert (killed / "models" / "candidate" / "model.safetensors").read_bytes() == \
        (straight / "models" / "candidate" / "model.safetensors").read_bytes()
    assert not any(checkpoints.iterdir())  # finished: nothing left to resume
    loss_curve = killed / "metrics" / "train" / "plots" / "metrics" / "loss.tsv"
    header, *rows = loss_curve.read_text().splitlines()
    assert header.split("\t") == ["step", "loss"]
    steps = [int(row.split("\t")[0]) for row in rows]
    # dvclive's curve continues across the resume: every 5 steps, each once
    assert steps == list(range(5, 3 * per_epoch + 1, 5))
    # The same values, except the first point after the resume: Trainer averages it over the steps since then.
    reference = (straight / loss_curve.relative_to(killed)).read_text().splitlines()[1:]
    first_after = min(step for step in steps if step > per_epoch)
    differing = [step for step, row, other in zip(steps, rows, reference, strict=True) if row != other]
    assert differing in ([], [first_after])


def test_two_process_ddp_on_one_node_and_on_two(prepared: Path, augmented: Path, tmp_path: Path, free_port: int) -> None:
    project = stage_project(tmp_path / "ddp", prepared, augmented,
                            {"epochs": 1, "batch_size": 8, "num_processes": 2, "launcher": "torchrun"})
    single = stage_project(tmp_path / "single", prepared, augmented, {"epochs": 1, "batch_size": 16})
    output = finish(start_stage(project))
    finish(start_stage(single))

    assert "torch.distributed.run" in output
    rows = len(read_split(augmented, "train"))
    metrics = read_json(project / "metrics" / "train.json")
    assert metrics["steps"] == -(-rows // 16)  # two processes of 8 per step: half the single-process steps
    # Two processes of 8 are one batch of 16: the validation loss lands where one process's does. (It was twice
    # as high while Trainer scaled BERT's own mean loss by the process count.)
    assert metrics["val_loss"] == pytest.approx(read_json(single / "metrics" / "train.json")["val_loss"], abs=0.05)
    from components.modalities import load_predictor

    one_node = load_predictor(project / "models" / "candidate")
    assert one_node.predict_proba(["a film"]).shape == (1, 3)

    # The same global batch from two "machines" (a folder each, as two hosts have their own checkout and data),
    # one process each, meeting through torchrun's static rendezvous on node 0's address; the same params.yaml on
    # both, the node's rank from its environment.
    two = {"epochs": 1, "batch_size": 8, "num_processes": 1, "nnodes": 2, "rdzv_endpoint": f"127.0.0.1:{free_port}"}
    nodes = [stage_project(tmp_path / f"node{rank}", prepared, augmented, two) for rank in (0, 1)]
    started = [start_stage(node, {"TUNELINE_NODE_RANK": str(rank)}) for rank, node in enumerate(nodes)]
    outputs = [finish(process) for process in started]
    assert "--nnodes 2 --node_rank 1" in outputs[1]
    assert not (nodes[1] / "models" / "candidate").exists()  # node 0 holds global rank 0: it writes the model
    two_nodes = read_json(nodes[0] / "metrics" / "train.json")
    assert two_nodes["steps"] == metrics["steps"]
    assert two_nodes["val_loss"] == pytest.approx(metrics["val_loss"], abs=0.05)
    texts = read_split(prepared, "test")["text"].tolist()[:32]
    assert load_predictor(nodes[0] / "models" / "candidate").predict_proba(texts) == \
        pytest.approx(one_node.predict_proba(texts), abs=0.05)
