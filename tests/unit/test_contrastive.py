"""train.method contrastive: the sentence pairs, the tuned encoder copied into the classifier, the normalised mean
the head then reads, and the logistic-regression head written into the model's own linear layer."""

import pandas as pd
import pytest
import torch

from components import modalities
from components.config import ConfigError, DataParams, ModelParams, Params, TrainParams, parse_params
from components.modalities.text import contrastive, pooling
from components.modalities.text.features import head_inputs
from components.modalities.text.model import EncodedTexts, build
from components.stage import StageError

TEXTS = {"pos": ["a warm and funny film", "the cast is superb", "a joy from start to end", "moving and wise"],
         "neg": ["a dull mess", "far too long and flat", "the plot makes no sense", "a waste of a fine cast"]}


def frame(texts: dict[str, list[str]] = TEXTS) -> pd.DataFrame:
    rows = [(text, label) for label, items in texts.items() for text in items]
    return pd.DataFrame(rows, columns=["text", "label"])


def test_pairs_put_a_text_with_its_own_label_and_with_another() -> None:
    three = frame({**TEXTS, "plot": ["a man returns home", "two sisters meet again", "one lone soldier"]})
    pairs = contrastive.sentence_pairs(three, per_text=3, seed=0)
    label_of = dict(zip(three["text"], three["label"]))
    assert len(pairs) == 2 * 3 * len(three)
    assert pairs["score"].value_counts().to_dict() == {1.0: 3 * len(three), 0.0: 3 * len(three)}
    same = pairs["sentence1"].map(label_of) == pairs["sentence2"].map(label_of)
    assert (same == (pairs["score"] == 1.0)).all()
    assert not (pairs["sentence1"] == pairs["sentence2"]).any()  # every label has more than one text here
    assert pairs["sentence1"].value_counts().eq(6).all()  # each text: per_text positives and as many negatives
    assert pairs.equals(contrastive.sentence_pairs(three, per_text=3, seed=0))
    assert not pairs.equals(contrastive.sentence_pairs(three, per_text=3, seed=1))


def test_pairs_need_two_labels() -> None:
    with pytest.raises(StageError, match="at least two labels.*'pos'"):
        contrastive.sentence_pairs(frame({"pos": TEXTS["pos"]}), per_text=2, seed=0)
    lone = contrastive.sentence_pairs(frame({"pos": TEXTS["pos"], "neg": ["only one"]}), per_text=1, seed=0)
    assert ((lone["sentence1"] == "only one") & (lone["score"] == 1.0)).sum() == 1  # with itself


def test_normalised_mean_feeds_the_head_unit_vectors() -> None:
    built = build(["neg", "pos"], ModelParams(), max_tokens=32)
    pooling.apply(built.model, pooling.NORMALISED_MEAN)
    encoded = EncodedTexts(built.extra["tokenizer"], frame(), {"neg": 0, "pos": 1}, 32)
    for p in built.model.base_model.parameters():
        p.requires_grad_(False)
    vectors = head_inputs(built.model, encoded.items, 0, 4, "cpu")
    assert torch.allclose(vectors.norm(dim=1), torch.ones(len(vectors)), atol=1e-5)
    assert pooling.of(built.model) == pooling.NORMALISED_MEAN
    assert len(built.model.base_model._forward_hooks) == 1


@pytest.mark.parametrize("labels", [["neg", "pos"], ["neg", "plot", "pos"]])
def test_the_logistic_regression_becomes_the_models_own_head(labels) -> None:
    from sklearn.linear_model import LogisticRegression

    texts = {**TEXTS, "plot": ["a man returns home", "two sisters meet again", "one lone soldier"]}
    rows = frame({label: texts[label] for label in labels})
    built = build(labels, ModelParams(), max_tokens=32)
    pooling.apply(built.model, pooling.NORMALISED_MEAN)
    assert contrastive.fit_head(built, rows, 32, "head", 4, "cpu")
    assert all(p.requires_grad for p in built.model.parameters())  # the flags are as they were
    encoded = EncodedTexts(built.extra["tokenizer"], rows, {label: i for i, label in enumerate(labels)}, 32)
    for p in built.model.base_model.parameters():
        p.requires_grad_(False)
    vectors = head_inputs(built.model, encoded.items, 0, 4, "cpu").numpy()
    expected = LogisticRegression(C=contrastive.HEAD_C, max_iter=1000).fit(
        vectors, [labels.index(label) for label in rows["label"]]).predict_proba(vectors)
    batch = built.extra["tokenizer"](rows["text"].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = built.model.eval()(**batch).logits.softmax(-1).numpy()
    assert probabilities == pytest.approx(expected, abs=1e-4)


def test_an_mlp_head_or_a_label_without_rows_keeps_the_head_as_built() -> None:
    mlp = build(["neg", "pos"], parse_params({"model": {"head": {"type": "mlp", "hidden_sizes": [8]}}}).model, 32)
    assert not contrastive.fit_head(mlp, frame(), 32, "head", 4, "cpu")
    missing = build(["neg", "plot", "pos"], ModelParams(), 32)
    before = missing.model.classifier.weight.clone()
    assert not contrastive.fit_head(missing, frame(), 32, "head", 4, "cpu")
    assert torch.equal(missing.model.classifier.weight, before)


def test_the_tuned_encoder_must_fit_the_classifier() -> None:
    from transformers import BertConfig, BertModel

    target = build(["neg", "pos"], ModelParams(), 32).model.base_model
    same = BertModel(target.config)
    contrastive.copy_encoder(same, target)
    assert torch.equal(target.encoder.layer[0].attention.self.query.weight,
                       same.encoder.layer[0].attention.self.query.weight)
    other = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32))
    with pytest.raises(StageError, match="does not fit the classifier.*set train.method to finetune"):
        contrastive.copy_encoder(other, target)


@pytest.mark.parametrize(("loss", "used"), [("cosent", "CoSENTLoss"), ("cosine", "CosineSimilarityLoss"),
                                           ("auto", "CoSENTLoss")])  # auto: CoSENT for two labels
def test_tuning_changes_the_encoder_and_records_the_pooling(loss: str, used: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="components")
    built = build(["neg", "pos"], ModelParams(), max_tokens=32)
    before = built.model.base_model.encoder.layer[0].output.dense.weight.clone()
    rows = frame().assign(augmented=False)
    rows = pd.concat([rows, rows.assign(text=rows["text"] + " indeed", augmented=True)], ignore_index=True)
    figures = contrastive.tune(built, rows, TrainParams(contrastive_pairs=1, batch_size=4, contrastive_loss=loss),
                               32, "head", "cpu")
    assert f"({used}), 1 pass over the pairs" in caplog.text  # contrastive_epochs auto: 4 rows per class
    assert figures["contrastive_pairs"] == 2 * 8  # the original rows only
    assert figures["contrastive_steps"] == 4
    assert not torch.equal(built.model.base_model.encoder.layer[0].output.dense.weight, before)
    assert built.meta["pooling"] == pooling.NORMALISED_MEAN


def test_contrastive_is_refused_where_it_cannot_run() -> None:
    image = modalities.get("image")()
    with pytest.raises(StageError, match="train.method contrastive is for text models so far"):
        image.check_options(Params(data=DataParams(modality="image"), train=TrainParams(method="contrastive")))
    text = modalities.get("text")()
    with pytest.raises(StageError, match="set train.num_processes to 1"):
        text.check_options(Params(train=TrainParams(method="contrastive", num_processes=2)))
    text.check_options(Params(train=TrainParams(method="contrastive")))
    with pytest.raises(ConfigError, match="train.method: Input should be 'auto', 'finetune' or 'contrastive'"):
        parse_params({"train": {"method": "setfit"}})
