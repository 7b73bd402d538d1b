"""The fine-tuning engine's pure pieces on a tiny random BERT: heads, gradual unfreezing, checkpoints, run
fingerprints, dvclive curves, launching, the frozen-feature cache and the linear probe."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import ConfigError, HeadParams, ModelParams, TrainParams, parse_params
from components.engine import ThawPlan, last_checkpoint, run_fingerprint, truncate_curves
from components.features import NotCacheable
from components.modalities.text.features import cache_key, cacheable_head, head_inputs
from components.model import attach_head, freeze, head_attribute, mlp_head
from components.stage import StageError
from components.train import launch_command


@pytest.fixture
def tiny():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    return BertForSequenceClassification(config)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"model": {"head": {"type": "mlp", "hidden_sizes": []}}}, "head.type mlp needs at least one"),
        ({"model": {"head": {"activation": "swish"}}}, "model.head.activation"),
        ({"model": {"adapter": "lora", "freeze_layers": 2}}, "adapter lora freezes the whole backbone"),
        ({"model": {"freeze_backbone": True, "gradual_unfreeze": 1}}, "choose one"),
        ({"model": {"lora": {"target_modules": []}}}, "name at least one module"),
        ({"train": {"padding": "longest"}}, "train.padding"),
        ({"train": {"num_processes": 0}}, "train.num_processes"),
        ({"train": {"launcher": "mpirun"}}, "train.launcher"),
    ],
)
def test_bad_engine_params_are_named(block, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(block)


def test_mlp_head_is_the_classic_dense_relu_head() -> None:
    head = mlp_head(384, 3, HeadParams(type="mlp", hidden_sizes=[1024], activation="relu", dropout=0.2))
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (384, 1024, 3)
    assert head[2].p == 0.2


def test_attach_head_replaces_only_the_linear_classifier(tiny) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items() if not k.startswith("classifier")}
    attach_head(tiny, HeadParams(type="mlp", hidden_sizes=[8], activation="tanh"))
    assert isinstance(tiny.classifier, torch.nn.Sequential) and tiny.classifier[0].in_features == 16
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items() if k in before)
    assert tiny(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3)
    assert attach_head(tiny, HeadParams()) is tiny  # linear: left as it is


def test_a_model_without_a_head_is_named() -> None:
    with pytest.raises(StageError, match="no `classifier` or `score` head"):
        head_attribute(torch.nn.Linear(2, 2))


def test_gradual_unfreezing_thaws_top_down(tiny) -> None:
    freeze(tiny, ModelParams(freeze_layers=1))
    plan = ThawPlan.for_base_model(tiny.base_model, ModelParams(freeze_layers=1, gradual_unfreeze=1))

    def trainable_layers() -> set[str]:
        return {n.split(".")[3] if ".layer." in n else n.split(".")[1] for n, p in tiny.named_parameters()
                if p.requires_grad and n.startswith("bert.") and not n.startswith("bert.pooler")}

    plan.apply(0, tiny)
    assert trainable_layers() == set() and tiny.classifier.weight.requires_grad
    plan.apply(1, tiny)
    assert trainable_layers() == {"2"}
    plan.apply(2, tiny)
    assert trainable_layers() == {"2", "1"}
    plan.apply(9, tiny)
    assert trainable_layers() == {"2", "1", "embeddings"}  # layer 0 stays frozen: freeze_layers: 1
    plan.thaw_all()
    assert not tiny.bert.encoder.layer[0].output.dense.weight.requires_grad


def test_last_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    for step, complete in ((9, True), (10, True), (11, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
            (folder / "rng_state.pth").write_bytes(b"")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 10 > 9 as numbers, not as text
    assert not (tmp_path / "checkpoint-11").exists()  # killed while saving: removed
    assert last_checkpoint(tmp_path / "missing") is None


def test_run_fingerprint_follows_params_and_data_not_logging() -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    base = run_fingerprint(ModelParams(), TrainParams(), "src", frame)
    assert run_fingerprint(ModelParams(), TrainParams(resume=False, logging_steps=3), "src", frame) == base
    assert run_fingerprint(ModelParams(), TrainParams(learning_rate=1e-4), "src", frame) != base
    assert run_fingerprint(ModelParams(freeze_layers=1), TrainParams(), "src", frame) != base
    assert run_fingerprint(ModelParams(), TrainParams(), "src", frame, settings={"text": {"max_tokens": 64}}) != base
    assert run_fingerprint(ModelParams(), TrainParams(), "src", frame.assign(label=["y", "x"])) != base


def test_truncate_curves_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    curve = tmp_path / "plots" / "metrics" / "loss.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step\tloss\n5\t1.0\n10\t0.9\n15\t0.8\n")
    truncate_curves(tmp_path, 10)
    assert curve.read_text() == "step\tloss\n5\t1.0\n10\t0.9\n"


def test_launch_commands() -> None:
    torchrun = launch_command(TrainParams(num_processes=2, device="cpu"))
    assert torchrun[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                            "components.train"]
    accelerate = launch_command(TrainParams(num_processes=3, launcher="accelerate", device="cpu"))
    assert accelerate[2] == "accelerate.commands.launch" and accelerate[-2:] == ["-m", "components.train"]
    assert accelerate[accelerate.index("--num_processes") + 1] == "3"


def encoded(rows: list[list[int]]) -> list[dict]:
    return [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in rows]


def test_head_inputs_are_the_pooled_vectors_in_input_order(tiny) -> None:
    freeze(tiny, ModelParams(freeze_backbone=True))
    items = encoded([[1, 5, 7, 2], [1, 9, 2], [1, 4, 4, 4, 4, 2]])
    features = head_inputs(tiny, items, pad_token_id=0, batch_size=2, device="cpu")
    tiny.eval()
    for row, item in zip(features, items, strict=True):
        pooled = tiny.bert(input_ids=torch.tensor([item["input_ids"]])).pooler_output[0]
        assert torch.allclose(row, pooled, atol=1e-5)
        assert torch.allclose(tiny.classifier(row), tiny(input_ids=torch.tensor([item["input_ids"]])).logits[0],
                              atol=1e-5)


def test_features_are_not_cached_when_the_backbone_trains(tiny) -> None:
    with pytest.raises(NotCacheable, match="outside the head"):
        cacheable_head(tiny)


def test_cache_key_follows_frozen_weights_and_tokens_not_the_head(tiny) -> None:
    items = encoded([[1, 5, 2]])
    key = cache_key(tiny, items)
    with torch.no_grad():
        tiny.classifier.weight.add_(1.0)
    assert cache_key(tiny, items) == key
    assert cache_key(tiny, encoded([[1, 6, 2]])) != key
    with torch.no_grad():
        tiny.bert.encoder.layer[2].output.dense.bias.add_(1e-3)
    assert cache_key(tiny, items) != key


def test_linear_probe_score_separates_what_is_separable() -> None:
    from components.modalities.text.selection import probe_score

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    informative = rng.normal(size=(120, 8)) + y[:, None] * 3.0
    noise = rng.normal(size=(120, 8))
    good, _ = probe_score(informative[::2], y[::2], informative[1::2], y[1::2], seed=0)
    bad, _ = probe_score(noise[::2], y[::2], noise[1::2], y[1::2], seed=0)
    assert good > 0.95 and bad < 0.6


@pytest.mark.parametrize("forward_tokens", [0.0, 25.0])
def test_token_batches_cut_by_count_and_padded_size(forward_tokens: float) -> None:
    from components.modalities.text.predict import token_batches

    lengths = [10, 3, 50, 3, 200, 20, 20, 20]
    batches = token_batches(lengths, batch_size=3, max_batch_tokens=60, forward_tokens=forward_tokens)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))  # every item, once
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * longest <= 60)
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat)  # shortest first
    assert [4] in batches  # longer than the whole budget: alone


def _cut_cost(lengths: list[int], batches: list[list[int]], forward_tokens: float) -> float:
    return sum(forward_tokens + len(batch) * max(lengths[i] for i in batch) for batch in batches)


def test_token_batches_with_a_pass_cost_give_a_long_text_its_own_pass() -> None:
    from components.modalities.text.predict import token_batches

    lengths = [10] * 7 + [60]
    # Filling: one batch of 8 padded to 60 (480 tokens). With a pass worth 100 tokens: 7 x 10 + 100, then 60 + 100.
    assert token_batches(lengths, batch_size=32, max_batch_tokens=512) == [list(range(8))]
    assert token_batches(lengths, batch_size=32, max_batch_tokens=512, forward_tokens=100) == [list(range(7)), [7]]


def test_token_batches_with_a_pass_cost_find_the_cheapest_cuts() -> None:
    """Against every way of cutting the sorted items into runs, for small random inputs."""
    import itertools

    from components.modalities.text.predict import token_batches

    rng = np.random.default_rng(0)
    for _ in range(60):
        lengths = [int(n) for n in rng.integers(1, 80, size=int(rng.integers(1, 9)))]
        batch_size, budget = int(rng.integers(1, 6)), int(rng.integers(40, 300))
        forward_tokens = float(rng.integers(1, 150))
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        feasible = []
        for cuts in itertools.product([False, True], repeat=len(order) - 1):
            batches, current = [], [order[0]]
            for index, cut in zip(order[1:], cuts, strict=True):
                if cut:
                    batches.append(current)
                    current = []
                current.append(index)
            batches.append(current)
            if all(len(b) <= batch_size and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget)
                   for b in batches):
                feasible.append(_cut_cost(lengths, batches, forward_tokens))
        found = token_batches(lengths, batch_size, budget, forward_tokens)
        assert sorted(i for batch in found for i in batch) == list(range(len(lengths)))
        assert _cut_cost(lengths, found, forward_tokens) == pytest.approx(min(feasible))


def test_ranked_labels_most_likely_first_with_ties_in_label_order() -> None:
    import numpy as np

    from components.predict import ranked_labels, to_predictions

    row = np.array([0.2, 0.5, 0.2, 0.1])
    labels = ["a", "b", "c", "d"]
    assert ranked_labels(row, labels, 3) == [("b", 0.5), ("a", 0.2), ("c", 0.2)]
    assert ranked_labels(row, labels, 10) == [("b", 0.5), ("a", 0.2), ("c", 0.2), ("d", 0.1)]
    prediction = to_predictions(row[None, :], labels)[0]
    assert (prediction.label, prediction.probability) == ("b", 0.5)
    assert prediction.probabilities == {"a": 0.2, "b": 0.5, "c": 0.2, "d": 0.1}
