"""Does augmentation help? Test macro-F1 with and without it, at 32, 128 and all train examples per class.

`python -m bench.augment_effect [--seeds N] [--copies X] [--quick]` (or `make bench-augment`). The built-in corpus
is prepared once with the data block's defaults (components.prepare.run), so every model is scored on the same test
split. For each size, that many train rows of each label (all of a smaller label) are drawn by seed, and the model
is trained twice through components.train.run with the settings below: on those rows, and on those rows plus the
copies components.augment.run makes of them (the augment and text.augment blocks' defaults). components.evaluate.run
scores both on the test split. Everything is written to a temporary folder and removed afterwards.

With the settings below one seed takes about 25 minutes on 2 quiet CPU cores (the whole-split case about 15 of
them: it trains as `make run` does); figures depend on what else runs.
`--quick` checks that the benchmark runs, in about a minute: 8 examples per class, 3 steps, 10 val and test rows
per class; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import AugmentParams, DataParams, EvaluateParams, ModelParams, Params, TrainParams
from components.modalities import Modality

SIZES: tuple[int | None, ...] = (32, 128, None)  # train examples per label; None = the whole train split
DATA = DataParams()  # the built-in corpus, split as the pipeline splits it by default
MODEL = ModelParams()  # all-MiniLM-L6-v2 from its pip package
# The copies the recipe gives fine-tuning (0.5 per row); --copies overrides it. This benchmark measures what
# augmentation does for fine-tuning at every size, so the method is fixed to finetune (train.recipe auto would tune
# contrastively, without copies, up to 512 rows per class: bench/fewshot.py measures that).
AUGMENT = AugmentParams(copies_per_example=0.5)
# A higher learning rate than the pipeline's 5e-5 and more epochs, so that 32 examples per class learn something;
# no early stopping, so both runs of a size get the same epochs (the best epoch on val is still the one kept).
TRAIN = TrainParams(method="finetune", epochs=6, learning_rate=1e-4, batch_size=16, warmup_ratio=0.1,
                    early_stopping_patience=0)
# The whole split trains as `make run` does (the pipeline's train defaults: 3 epochs at 5e-5, early stopping), so
# its row answers "does augmentation help the shipped configuration". A step cap of ~1 epoch was tried and is wrong:
# the rare `plot` class is not learned in one epoch (macro-F1 0.53 instead of 0.83), so it measured nothing.
TRAIN_BY_SIZE: dict[int | None, TrainParams] = {None: TrainParams(method="finetune")}

QUICK_SIZES: tuple[int | None, ...] = (8,)
QUICK_TRAIN = TrainParams(epochs=1, max_steps=3, batch_size=8, early_stopping_patience=0)
QUICK_HELD_OUT = 10  # val and test rows per label in --quick


@dataclass(frozen=True)
class Outcome:
    """One trained and scored model."""

    size: int | None
    seed: int
    augmented: bool
    train_rows: int
    steps: int
    macro_f1: float
    baseline_macro_f1: float
    seconds: float


def per_label(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most n rows of each label, drawn by seed (all rows when n is None), in their original order."""
    if n is None:
        return frame
    parts = [group.sample(n=min(n, len(group)), random_state=seed) for _, group in frame.groupby("label")]
    return pd.concat(parts).sort_values("source_row").reset_index(drop=True)


def prepare_once(folder: Path, quick: bool, modality: Modality) -> Path:
    """The built-in corpus prepared with DATA into folder/prepared (val and test cut down under --quick)."""
    from components import prepare
    from components.io import read_split, write_split

    prepared = folder / "prepared"
    prepare.run(DATA, modality, prepared)
    if quick:
        for split in ("val", "test"):
            write_split(prepared, split, per_label(read_split(prepared, split), QUICK_HELD_OUT, seed=0))
    return prepared


def train_and_score(prepared: Path, train: pd.DataFrame, folder: Path, augment: AugmentParams,
                    train_params: TrainParams, modality: Modality) -> tuple[int, int, float, float]:
    """Augment (or pass through), fine-tune and evaluate in folder; (train rows, steps, macro-F1, baseline's)."""
    from components import augment as augment_stage
    from components import evaluate, train as train_stage
    from components.io import LABELS_FILE, write_split

    own = folder / "prepared"
    own.mkdir(parents=True)
    write_split(own, "train", train)
    for name in ("val.jsonl", "test.jsonl", LABELS_FILE):
        shutil.copy2(prepared / name, own / name)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            augment_stage.run(augment, MODEL, modality, own, folder / "augmented")
            trained = train_stage.run(MODEL, train_params, modality, folder / "augmented", own, folder / "model",
                                      folder / "train.json")
            scored = evaluate.run(EvaluateParams(), folder / "model", own, folder / "test.json", folder / "gate.json")
    except BaseException:
        print(captured.getvalue()[-4000:], file=sys.stderr)
        raise
    shutil.rmtree(folder / "model")  # ~90 MB each
    return trained.train_rows, trained.steps, scored.macro_f1, scored.baseline_macro_f1


def measure(sizes: tuple[int | None, ...], seeds: int, augment: AugmentParams, train_params: TrainParams,
            quick: bool) -> list[Outcome]:
    """Train and score without and with augmentation for every size and seed."""
    from components import modalities

    outcomes = []
    # DATA's modality (texts) with its block's defaults, as params.yaml ships them: text.augment (how a copy is
    # made) and text.max_tokens 128.
    modality = modalities.for_params(Params(data=DATA))
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-augment-") as tmp:
        work = Path(tmp)
        prepared = prepare_once(work, quick, modality)
        from components.io import read_split

        full_train = read_split(prepared, "train")
        for seed in range(seeds):
            for size in sizes:
                rows = per_label(full_train, size, seed)
                base = train_params if quick else TRAIN_BY_SIZE.get(size, train_params)
                settings = base.model_copy(update={"seed": base.seed + seed})
                for augmented in (False, True):
                    params = augment.model_copy(update={"enabled": augmented, "seed": augment.seed + seed})
                    started = time.perf_counter()
                    name = f"{size or 'all'}-{seed}-{'with' if augmented else 'without'}"
                    train_rows, done, f1, baseline = train_and_score(prepared, rows, work / name, params, settings,
                                                                     modality)
                    outcome = Outcome(size, seed, augmented, train_rows, done, f1, baseline,
                                      time.perf_counter() - started)
                    outcomes.append(outcome)
                    print(f"  {size or 'all'} per class, seed {seed}, {'with' if augmented else 'without'} "
                          f"augmentation: {train_rows} rows, {done} steps, macro-F1 {f1:.4f} "
                          f"({outcome.seconds:.0f} s)", flush=True)
    return outcomes


def _figure(values: list[float], signed: bool = False) -> str:
    text = f"{np.mean(values):+.4f}" if signed else f"{np.mean(values):.4f}"
    return text + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")


def table(outcomes: list[Outcome], sizes: tuple[int | None, ...]) -> str:
    """Markdown: one row per size; macro-F1 without / with augmentation and the difference (mean ± sd over seeds)."""
    lines = ["| examples per class | train rows without → with | macro-F1 without | macro-F1 with | difference "
             "| TF-IDF baseline |", "|---|---|---|---|---|---|"]
    for size in sizes:
        without = sorted((o for o in outcomes if o.size == size and not o.augmented), key=lambda o: o.seed)
        with_ = sorted((o for o in outcomes if o.size == size and o.augmented), key=lambda o: o.seed)
        rows = f"{round(np.mean([o.train_rows for o in without]))} → {round(np.mean([o.train_rows for o in with_]))}"
        differences = [b.macro_f1 - a.macro_f1 for a, b in zip(without, with_, strict=True)]
        lines.append(f"| {size or 'all'} | {rows} | {_figure([o.macro_f1 for o in without])} | "
                     f"{_figure([o.macro_f1 for o in with_])} | {_figure(differences, signed=True)} | "
                     f"{_figure([o.baseline_macro_f1 for o in without])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.augment_effect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds per size (rows drawn, training, copies); default 1")
    parser.add_argument("--copies", type=float, default=None,
                        help=f"copies_per_example of the augmented runs (default {AUGMENT.copies_per_example})")
    parser.add_argument("--quick", action="store_true", help="a one-minute check that the benchmark runs")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    from components.env import configure_environment

    configure_environment()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    augment = AUGMENT
    if args.copies is not None:
        from components.config import ConfigError, parse_params

        try:
            cap = max(AUGMENT.max_copies_per_example, args.copies)
            raw = {**AUGMENT.model_dump(), "copies_per_example": args.copies, "max_copies_per_example": cap}
            augment = parse_params({"augment": raw}, source="--copies").augment
        except ConfigError as exc:
            parser.error(str(exc))
    sizes, train_params = (QUICK_SIZES, QUICK_TRAIN) if args.quick else (SIZES, TRAIN)

    print(f"Augmentation effect on the built-in corpus: {args.seeds} seed(s), sizes "
          f"{[s or 'all' for s in sizes]} per class, {augment.copies_per_example:g} copies per example"
          f"{' (quick: figures mean nothing)' if args.quick else ''}", flush=True)
    started = time.perf_counter()
    outcomes = measure(sizes, args.seeds, augment, train_params, args.quick)
    elapsed = time.perf_counter() - started
    print()
    print(table(outcomes, sizes))
    print(f"\nTest macro-F1 on the same {'cut-down ' if args.quick else ''}test split for every model; "
          f"difference = with - without (mean ± sd over seeds when --seeds > 1). "
          f"Took {elapsed // 60:.0f} min {elapsed % 60:.0f} s.")


if __name__ == "__main__":
    main()
