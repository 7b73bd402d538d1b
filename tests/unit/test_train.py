"""The training recipe's pure pieces: freezing, class weights, the loss, and the head's learning rate."""

import pytest
import torch

from components.config import ModelParams, TrainParams, parse_params
from components.engine import class_weight_vector, cross_entropy_loss, split_head_learning_rate
from components.model import freeze
from components.stage import StageError


@pytest.fixture(scope="module")
def tiny_config():
    from transformers import BertConfig

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    return config


def fresh(config):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(config)


@pytest.mark.parametrize(
    ("params", "frozen_prefixes"),
    [
        (ModelParams(), []),
        (ModelParams(freeze_embeddings=True), ["bert.embeddings."]),
        (ModelParams(freeze_layers=2), ["bert.encoder.layer.0.", "bert.encoder.layer.1."]),
        (ModelParams(freeze_backbone=True), ["bert."]),
    ],
)
def test_freezing_leaves_exactly_the_rest_trainable(tiny_config, params, frozen_prefixes) -> None:
    model = fresh(tiny_config)
    trainable, total = freeze(model, params)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (not any(name.startswith(p) for p in frozen_prefixes)), name
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in model.parameters())
    if params.freeze_backbone:
        assert trainable == sum(p.numel() for p in model.classifier.parameters())


def test_freezing_more_layers_than_exist_is_named(tiny_config) -> None:
    with pytest.raises(StageError, match="freeze_layers = 5, but the model has 3 layers"):
        freeze(fresh(tiny_config), ModelParams(freeze_layers=5))


def test_class_weights() -> None:
    labels = ["a", "b", "c"]
    train = ["a"] * 6 + ["b"] * 3 + ["c"]
    assert class_weight_vector(train, labels, "none") is None
    assert class_weight_vector(train, labels, "balanced") == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert class_weight_vector(train, labels, {"c": 4.0}) == [1.0, 1.0, 4.0]
    with pytest.raises(StageError, match="not labels"):
        class_weight_vector(train, labels, {"z": 2.0})
    with pytest.raises(StageError, match="no train rows"):
        class_weight_vector(["a", "b"], labels, "balanced")


def test_class_weights_param_is_strict() -> None:
    assert parse_params({"train": {"class_weights": {"pos": 2}}}).train.class_weights == {"pos": 2.0}
    with pytest.raises(Exception, match="train.class_weights"):
        parse_params({"train": {"class_weights": "inverse"}})


def test_loss_matches_torch_and_respects_accumulation() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    plain = cross_entropy_loss(None, 0.0)
    assert plain({"logits": logits}, labels) == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    # Two halves of an accumulated batch, each divided by the whole batch's count, add up to the full mean.
    halves = [plain({"logits": logits[i:i + 4]}, labels[i:i + 4], num_items_in_batch=8) for i in (0, 4)]
    assert sum(halves).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    weighted = cross_entropy_loss([1.0, 2.0, 3.0], 0.1)({"logits": logits}, labels)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2.0, 3.0]),
                                                 label_smoothing=0.1)
    assert weighted.item() == pytest.approx(expected.item())


def test_head_gets_its_own_learning_rate(tiny_config) -> None:
    model = fresh(tiny_config)
    decay = {"params": [p for n, p in model.named_parameters() if "bias" not in n], "weight_decay": 0.01}
    no_decay = {"params": [p for n, p in model.named_parameters() if "bias" in n], "weight_decay": 0.0}
    optimizer = split_head_learning_rate(torch.optim.AdamW([decay, no_decay], lr=5e-5), model, 1e-3)
    head = {id(p) for p in model.classifier.parameters()}
    seen = 0
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= head or not ids & head  # no group mixes head and backbone
        assert group["lr"] == (1e-3 if ids <= head else 5e-5)
        seen += len(group["params"])
    assert seen == len(list(model.parameters()))
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}


def test_default_train_params_keep_the_models_own_loss() -> None:
    params = TrainParams()
    assert params.class_weights == "none" and params.label_smoothing == 0.0 and params.head_learning_rate is None


def test_training_arguments_carry_the_train_block(tmp_path) -> None:
    from components.engine import native_cpu_bf16, training_arguments

    params = TrainParams(epochs=2, learning_rate=5e-5, method="finetune", gradient_accumulation_steps=4,
                         batch_size=8, lr_scheduler="cosine", warmup_ratio=0.2)
    args = training_arguments(params, str(tmp_path), "cpu", has_val=True)
    assert args.gradient_accumulation_steps == 4 and args.per_device_train_batch_size == 8
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.2
    assert args.metric_for_best_model == "macro_f1" and args.load_best_model_at_end
    assert args.bf16 == native_cpu_bf16() and not args.fp16 and args.num_train_epochs == 2  # precision auto


def test_augmented_data_from_another_run_than_the_prepared_labels_is_named(tmp_path) -> None:
    import pandas as pd

    from components.engine import training_data
    from components.io import write_json, write_split

    prepared, augmented = tmp_path / "prepared", tmp_path / "augmented"
    rows = pd.DataFrame({"text": ["a good one", "a bad one"], "label": ["good", "bad"]})
    for folder in (prepared, augmented):
        folder.mkdir()
        write_split(folder, "train", rows)
    write_split(prepared, "val", rows)
    write_json(prepared / "labels.json", ["bad", "good"])
    assert training_data(augmented, prepared, TrainParams())[0] == ["bad", "good"]

    write_split(augmented, "train", rows.assign(label=["good", "plot"]))  # an older augment of other data
    with pytest.raises(StageError, match=r"labels \['plot'\] .* dvc repro augment"):
        training_data(augmented, prepared, TrainParams())


def test_the_launch_command_for_one_node_and_for_several(monkeypatch) -> None:
    from components.train import launch_command

    monkeypatch.delenv("TUNELINE_NODE_RANK", raising=False)
    assert "--standalone" in launch_command(TrainParams(num_processes=2))
    static = TrainParams(num_processes=4, nnodes=3, node_rank=2, rdzv_endpoint="10.0.0.1:29500")
    command = " ".join(launch_command(static))
    assert "--nnodes 3 --node_rank 2 --master_addr 10.0.0.1 --master_port 29500 --nproc_per_node 4" in command
    elastic = " ".join(launch_command(static.model_copy(update={"node_rank": None})))
    assert "--rdzv_backend c10d --rdzv_endpoint 10.0.0.1:29500" in elastic and "--node_rank" not in elastic
    monkeypatch.setenv("TUNELINE_NODE_RANK", "1")  # the node's environment says which node it is
    assert "--node_rank 1 " in " ".join(launch_command(static))
    accelerate = " ".join(launch_command(static.model_copy(update={"launcher": "accelerate"})))
    assert "--num_processes 12 --num_machines 3 --machine_rank 1 --main_process_ip 10.0.0.1" in accelerate
    monkeypatch.setenv("TUNELINE_NODE_RANK", "3")
    with pytest.raises(StageError, match="TUNELINE_NODE_RANK='3' is not a node of train.nnodes 3"):
        launch_command(static)


@pytest.mark.parametrize(("train", "words"), [
    ({"nnodes": 2}, "train.rdzv_endpoint is not set"),
    ({"nnodes": 2, "rdzv_endpoint": "10.0.0.1"}, "is not host:port"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:29500", "node_rank": 2}, "train.node_rank 2 is not a node"),
])
def test_multi_node_params_that_cannot_meet_are_refused(train, words) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=words):
        TrainParams(**train)


def test_precision_auto_on_the_cpu_is_bf16_only_where_it_is_native_and_reaches_the_trainer(monkeypatch,
                                                                                           tmp_path) -> None:
    from components import engine

    fixed = {"epochs": 1, "learning_rate": 5e-5, "method": "finetune"}
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(engine, "native_cpu_bf16", lambda native=native: native)
        assert engine.mixed_precision(TrainParams(**fixed), "cpu") == expected
        assert engine.mixed_precision(TrainParams(**fixed, precision="fp32"), "cpu") == "fp32"  # the user's choice
        args = engine.training_arguments(TrainParams(**fixed), str(tmp_path), "cpu", has_val=False)
        assert (args.bf16, args.fp16, args.use_cpu) == (native, False, True)
    args = engine.training_arguments(TrainParams(**fixed, precision="bf16"), str(tmp_path), "cpu", has_val=False)
    assert args.bf16 and not args.fp16 and args.use_cpu  # bf16 asked for reaches the Trainer, native or not


def test_precision_the_device_cannot_run_is_named_before_training(monkeypatch, caplog) -> None:
    from components import engine
    from components.config import ConfigError

    with pytest.raises(StageError, match="fp16 needs a CUDA GPU.*set train.precision to bf16"):
        engine.mixed_precision(TrainParams(precision="fp16"), "cpu")
    with pytest.raises(ConfigError, match="train.precision fp16 needs a CUDA GPU, and train.device is cpu"):
        parse_params({"train": {"precision": "fp16", "device": "cpu"}})
    monkeypatch.setattr(engine, "native_cpu_bf16", lambda: False)
    engine._warn_emulated_bf16.cache_clear()  # warned once per process: another test may have warned first
    with caplog.at_level("WARNING", logger="components.engine"):
        assert engine.mixed_precision(TrainParams(precision="bf16"), "cpu") == "bf16"
    assert "no native bf16" in caplog.text and "set train.precision to auto or fp32" in caplog.text


def test_bf16_training_on_the_cpu_computes_in_bf16_and_keeps_fp32_weights(tiny_config, tmp_path) -> None:
    """train.precision bf16 on the CPU: the Trainer runs the forward pass under bf16 autocast (a linear layer's output
    is bf16), the weights it updates stay fp32, and the loss is finite."""
    from transformers import Trainer

    from components.engine import training_arguments

    model = fresh(tiny_config)
    seen: list[torch.dtype] = []
    model.classifier.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    rows = [{"input_ids": torch.tensor([1, 5 + i % 7, 9, 2]), "labels": torch.tensor(i % 3)} for i in range(16)]
    before = model.classifier.weight.detach().clone()
    params = TrainParams(epochs=1, learning_rate=1e-3, method="finetune", precision="bf16", batch_size=8)
    trainer = Trainer(model=model, args=training_arguments(params, str(tmp_path), "cpu", has_val=False),
                      train_dataset=rows)
    output = trainer.train()
    assert seen and set(seen) == {torch.bfloat16}
    assert model.classifier.weight.dtype == torch.float32
    assert not torch.equal(model.classifier.weight.detach(), before)
    assert torch.isfinite(torch.tensor(output.training_loss))
