"""Texts: a column of strings in a CSV, TSV, JSON Lines or Parquet file (or the built-in Rotten Tomatoes corpus),
classified by a fine-tuned transformers encoder (the pip-shipped MiniLM by default) and compared with TF-IDF +
logistic regression. Its block of params.yaml is `text` (settings.py); the pieces live beside this file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import AugmentParams, DataParams, ModelParams, Params, TrainParams
from components.modalities import Augmented, Built, Expectation, Loaded, Modality
from components.modalities.text.settings import TextParams
from components.stage import StageError

REPLACEMENT_CHARACTER = "\ufffd"


def tfidf_predictions(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> list[str]:
    """Predictions of TF-IDF (word 1-2 grams) + logistic regression trained on the same train split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
    )
    pipeline.fit(train["text"], train["label"])
    return [str(label) for label in pipeline.predict(test["text"])]


class TextModality(Modality):
    """Texts, normalised alike in training and serving; two texts are the same text by dedup_key."""

    name = "text"
    item = "text"
    items = "texts"
    column = "text"
    columns = ("text", "label", "source_row")
    checks = {"null_text": "error", "blank_text": "error", "text_length": "error", "control_characters": "error",
              "invalid_utf8": "error"}
    settings_type = TextParams
    incoming_columns = ("text", "label")
    contrastive = True
    route = "/classify"
    # fastest first where each keeps parity (bench/README.md): ONNX Runtime int8, PyTorch in bfloat16 (fast on CPUs
    # with AMX or AVX-512 BF16, slow elsewhere, which the gate's speed check sees) traced into a TorchScript graph
    # (served faster than eager: its forward pass does not wait on the HTTP handling's Python), the same eager (for a
    # model the tracer cannot follow), ONNX Runtime fp32
    fast_runtimes = ("onnx-int8", "torchscript-bf16", "torch-bf16", "onnx")
    request_example = '{"texts": ["...", ...]}'
    settings: TextParams

    def check_options(self, params: Params) -> None:
        if not params.model.pretrained:
            raise StageError("model.pretrained: false (random weights) is for image backbones; set it to true for "
                             "text")
        if params.train.method == "contrastive" and (params.train.world_size > 1 or params.model.adapter != "none"
                                                     or params.model.gradual_unfreeze):
            raise StageError("train.method contrastive tunes the whole encoder in one process, then trains the head "
                             "alone; set train.num_processes to 1, model.adapter to none and model.gradual_unfreeze "
                             "to 0, or train.method to finetune")

    def read(self, data: DataParams, work: Path) -> Loaded:
        from components.modalities.text.source import read

        return read(data, self.settings.column)

    def read_table(self, path: Path, columns: tuple[str, str], data: DataParams, name: str) -> Loaded:
        from components.modalities.text.source import read_table

        return read_table(path, columns, data, name)

    def item_key(self, frame: pd.DataFrame) -> pd.Series:
        from components.modalities.text.normalise import dedup_keys

        return dedup_keys(frame["text"])

    def identity(self, frame: pd.DataFrame) -> pd.Series:
        from components.modalities.text.normalise import character_class

        texts = frame["text"].astype("str")
        # a blank text has a check of its own; as a duplicate of another blank one it would say nothing new
        return texts.mask(texts.str.fullmatch(f"{character_class('space')}*").fillna(False).astype(bool))

    def expectations(self, labels: list[str]) -> list[Expectation]:
        from components.modalities.text.normalise import character_class

        space, control = character_class("space"), character_class("control")
        return [
            # A missing text cannot be tokenised; the row's label would teach nothing.
            Expectation("null_text", "expect_column_values_to_not_be_null", {"column": "text"}),
            # An empty or whitespace-only text holds no words (one of only control characters ends up so).
            Expectation("blank_text", "expect_column_values_to_not_match_regex",
                        {"column": "text", "regex": f"^{space}*$"}),
            # Too short to mean anything, or a runaway text (a whole file pasted into one cell).
            Expectation("text_length", "expect_column_value_lengths_to_be_between",
                        {"column": "text", "min_value": self.settings.min_chars,
                         "max_value": self.settings.max_chars}),
            # prepare turns control and format characters (\x85, zero-width spaces, BOMs, tabs) into spaces.
            Expectation("control_characters", "expect_column_values_to_not_match_regex",
                        {"column": "text", "regex": control}),
            # U+FFFD is what a decoder leaves where the bytes were not valid UTF-8: the text is damaged.
            Expectation("invalid_utf8", "expect_column_values_to_not_match_regex",
                        {"column": "text", "regex": REPLACEMENT_CHARACTER}),
        ]

    def augment(self, train: pd.DataFrame, held_out: list[pd.DataFrame], wanted: Mapping[str, int],
                params: AugmentParams, model: ModelParams, prepared_dir: Path, out_dir: Path) -> Augmented:
        from components.modalities.text.augment import augment
        from components.modalities.text.model import resolve_model
        from components.modalities.text.synonyms import build_synonyms

        ops = self.settings.augment
        synonyms: dict[str, tuple[str, ...]] = {}
        if sum(wanted.values()) and ops.uses_synonyms and not train.empty:
            model_dir, name = resolve_model(model)
            synonyms = build_synonyms(train, ops, model_dir, name)
        texts = pd.concat([frame["text"] for frame in held_out]) if held_out else []
        frame = augment(train, wanted, ops, params.seed, synonyms, texts)
        return Augmented(frame, {"synonym_words": len(synonyms)})

    def rank_candidates(self, model: ModelParams, train_params: TrainParams, train: pd.DataFrame,
                        val: pd.DataFrame, labels: list[str], device: str, cache_dir: Path | None) -> list[Any]:
        from components.modalities.text.selection import rank_candidates

        return rank_candidates(model, train_params, train, val, labels, device, cache_dir, self.settings.max_tokens,
                               self.settings.pooling, self.settings.truncation)

    def build(self, labels: list[str], model: ModelParams) -> Built:
        from components.modalities.text.model import build

        return build(labels, model, self.settings.max_tokens, self.settings.pooling, self.settings.truncation)

    def dataset(self, built: Built, frame: pd.DataFrame, folder: Path, label_ids: dict[str, int],
                train_params: TrainParams) -> Any:
        from components.modalities.text.model import EncodedTexts

        return EncodedTexts(built.extra["tokenizer"], frame, label_ids, self.settings.max_tokens,
                            pad_to_max_length=train_params.padding == "max_length",
                            truncation=self.settings.truncation)

    def collator(self, built: Built, train_params: TrainParams) -> tuple[Any, bool]:
        from transformers import DataCollatorWithPadding

        grouping = train_params.group_by_length and train_params.padding != "max_length"
        return DataCollatorWithPadding(built.extra["tokenizer"]), grouping

    def tune_contrastively(self, built: Built, train: pd.DataFrame, train_params: TrainParams,
                           device: str) -> dict[str, Any]:
        from components.modalities.text.contrastive import tune

        return tune(built, train, train_params, self.settings.max_tokens, self.settings.truncation, device)

    def head(self, built: Built) -> tuple[Any, Any]:
        from components.modalities.text.features import cacheable_head

        return cacheable_head(built.model)

    def features(self, built: Built, dataset: Any, batch_size: int, device: str,
                 cache_dir: Path | None) -> tuple[Any, bool]:
        from components.modalities.text.features import cached_vectors

        pad = built.extra["tokenizer"].pad_token_id or 0
        return cached_vectors(built.model, dataset.items, pad, batch_size, device, cache_dir)

    def inputs(self, frame: pd.DataFrame, folder: Path) -> list[Any]:
        return frame["text"].tolist()

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> tuple[str, list[str]]:
        return "TF-IDF baseline", tfidf_predictions(train, test)

    def load_model(self, model_dir: Path, device: str = "auto") -> Any:
        from components.modalities.text.predict import Classifier

        return Classifier.load(model_dir, device)

    def export_fast(self, model_dir: Path, out_dir: Path, runtime: str) -> dict[str, Any]:
        from components.modalities.text import fast

        if runtime in (fast.TORCH_BF16, fast.TORCHSCRIPT_BF16):
            return {"file": None, "seconds": 0.0, "megabytes": 0.0}  # the same weights, cast (and traced) when loaded
        if runtime == "onnx" or not (out_dir / fast.ONNX_FP32).is_file():
            figures = fast.export(model_dir, out_dir)
        if runtime == "onnx-int8":
            figures = fast.quantize(out_dir)
        return {"file": fast.FILES[runtime], **figures}

    def load_fast(self, model_dir: Path, file: Path | None, runtime: str) -> Any:
        from components.modalities.text import fast

        if runtime == fast.TORCH_BF16:
            return fast.bf16_classifier(model_dir)
        if runtime == fast.TORCHSCRIPT_BF16:
            return fast.traced_bf16_classifier(model_dir)
        import torch

        # as many threads as torch has here: one per core, or the share of one worker (serve.workers) and of one
        # of its forward passes (serve.forward_passes)
        return fast.OnnxClassifier.load_onnx(model_dir, file, threads=torch.get_num_threads())

    def decode_request(self, item: Any) -> Any:
        from components.modalities.text.normalise import normalise

        if not isinstance(item, str) or not normalise(item):
            raise ValueError("the text is empty or only whitespace and control characters; send some words")
        return item

    def warm_up_input(self, predictor: Any) -> Any:
        return "warm-up"

    def signals(self, items: list[Any], predictor: Any) -> dict[str, list[float]]:
        """Each text's length in characters and the share of its tokens the model's tokenizer does not know, both of
        the text as normalised for the model (the prepared splits hold normalised texts)."""
        from components.modalities.text.model import token_ids
        from components.modalities.text.normalise import normalise

        texts = [normalise(text) for text in items]
        ids = token_ids(predictor.tokenizer, texts) if texts else []
        unknown = predictor.tokenizer.unk_token_id
        return {"length": [float(len(text)) for text in texts],
                "unknown_tokens": [sum(i == unknown for i in row) / len(row) if row else 0.0 for row in ids]}


MODALITY = TextModality
