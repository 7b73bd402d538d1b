"""Train SetFit on one train file and predict a test file: the anchor of `python -m bench.fewshot`.

Runs in SetFit's own venv (bench/.venv-setfit, `make bench-fewshot` makes it), never in the project's: setfit pulls
sentence-transformers and datasets, which the pipeline does not need. It reads and writes plain JSON, so it imports
nothing of the project. SetFit's recipe as its README gives it: contrastive pairs from the train labels tune the
sentence-transformer body (CosineSimilarityLoss), then a logistic-regression head fits on the tuned embeddings.

    python bench/setfit_run.py --model DIR --train train.jsonl --test test.jsonl --out predictions.json \
        [--iterations 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def read_rows(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["text"] for row in rows], [str(row["label"]) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a sentence-transformers checkpoint folder")
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--test", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--iterations", type=int, default=20, help="SetFit num_iterations (pairs per row)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128, help="tokens of each text (Tuneline's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import tempfile

    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    texts, labels = read_rows(args.train)
    test_texts, _ = read_rows(args.test)
    names = sorted(set(labels))
    started = time.perf_counter()
    model = SetFitModel.from_pretrained(args.model)
    model.model_body.max_seq_length = args.max_length
    with tempfile.TemporaryDirectory(prefix="setfit-") as output:
        training = TrainingArguments(output_dir=output, batch_size=args.batch_size, num_epochs=1,
                                     num_iterations=args.iterations, seed=args.seed, report_to="none",
                                     save_strategy="no", show_progress_bar=False)
        data = Dataset.from_dict({"text": texts, "label": [names.index(label) for label in labels]})
        Trainer(model=model, args=training, train_dataset=data).train()
    trained = time.perf_counter() - started
    predicted = [names[int(i)] for i in model.predict(test_texts, batch_size=64, as_numpy=True)]
    args.out.write_text(json.dumps({"predicted": predicted, "train_seconds": trained}), encoding="utf-8")


if __name__ == "__main__":
    main()
