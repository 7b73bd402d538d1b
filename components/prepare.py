"""Stage `prepare`: read the labelled source through its modality, and split it into train/val/test
deterministically: data.split random (stratified, drawn again as rows are added) or hash (a row's split from its
item and the seed alone), unless the user gives the splits (data.val_path / data.test_path files, or a
data.split_column).

Every row keeps where it came from: `source_row` (its 0-based index among the source's records) and `line` (the
line of the source file where the record starts; for Parquet, its 1-based row). A record that cannot be read (a CSV
line with the wrong number of fields, a JSONL line that is not a JSON object) is skipped and listed in summary.json,
which the validate stage turns into a failure: nothing vanishes silently. summary.json also records the modality,
which every later stage reads.

Rows that scheduled runs took from incoming files (components/ingest.py) lie as Parquet files in paths.accepted,
named in the order they were taken; they are appended after the source (after data.max_rows, which thins the source
only), so their source_row continues the source's, and their `line` is their 1-based row in that file.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components import modalities
from components.config import DataParams, Params
from components.io import LABELS_FILE, SPLITS, SUMMARY_FILE, atomic_dir, write_json, write_split
from components.modalities import GIVEN_SPLIT, Loaded, Modality
from components.stage import StageError, stage_main

log = logging.getLogger(__name__)

MALFORMED_LISTED = 100  # malformed lines listed in summary.json (all are counted)
NOISE = "noise"  # a Loaded frame's per-row count of characters cleaning replaced, dropped before the splits


@dataclass(frozen=True)
class Splits:
    """The three splits, each with columns label, source_row, line and the modality's."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [(name, getattr(self, name)) for name in SPLITS]


@dataclass(frozen=True)
class PrepareResult:
    """What prepare wrote: row counts per split, the label list, the source's name and summary.json's content."""

    counts: dict[str, int]
    labels: list[str]
    source: str
    summary: dict[str, Any] = field(default_factory=dict)


def accepted_files(accepted_dir: str | Path | None) -> list[Path]:
    """The Parquet files of rows taken from incoming files, in the order they were taken (their names sort so)."""
    if accepted_dir is None or not Path(accepted_dir).is_dir():
        return []
    return sorted(Path(accepted_dir).glob("*.parquet"))


def append_accepted(loaded: Loaded, accepted_dir: str | Path | None, modality: Modality,
                    data: DataParams) -> Loaded:
    """The loaded source followed by every accepted file's rows, source_row continuing; the source names them."""
    files = accepted_files(accepted_dir)
    if not files:
        return loaded
    frames, offset, rows_read = [loaded.frame], loaded.rows_read, 0
    for path in files:
        frame = modality.read_table(path, modality.incoming_columns, data, f"accepted file {str(path)!r}").frame
        frame["source_row"] += offset
        offset += len(frame)
        rows_read += len(frame)
        frames.append(frame)
    return Loaded(frame=pd.concat(frames, ignore_index=True),
                  source=f"{loaded.source} + {len(files)} accepted file(s) in {accepted_dir} ({rows_read} rows)",
                  format=loaded.format, rows_read=loaded.rows_read + rows_read, malformed=loaded.malformed)


def combine(loaded: Loaded, more: list[Loaded]) -> Loaded:
    """One Loaded of the source and the given split files, for summary.json: rows, sources and malformed lines of
    all (a malformed line of a split file says the file)."""
    if not more:
        return loaded
    malformed = list(loaded.malformed)
    for part in more:
        malformed += [replace(m, problem=f"{part.source}: {m.problem}") for m in part.malformed]
    return Loaded(frame=pd.concat([loaded.frame, *(part.frame for part in more)], ignore_index=True),
                  source=" + ".join([loaded.source, *(part.source for part in more)]), format=loaded.format,
                  rows_read=loaded.rows_read + sum(part.rows_read for part in more), malformed=malformed)


def summarise(loaded: Loaded, kept: pd.DataFrame, modality: Modality) -> dict[str, Any]:
    """summary.json: the modality, what was read, kept and skipped, and the noise cleaning removed from the kept
    rows (components.io.read_summary lists the keys)."""
    noise = kept[NOISE] if NOISE in kept else pd.Series(dtype=np.int64)
    return {
        "modality": modality.name,
        "source": loaded.source,
        "format": loaded.format,
        "rows_read": loaded.rows_read,
        "rows_kept": len(kept),
        "malformed_count": len(loaded.malformed),
        "malformed_lines": [{"line": m.line, "problem": m.problem} for m in loaded.malformed[:MALFORMED_LISTED]],
        "noise": {"rows_changed": int((noise > 0).sum()), "characters_replaced": int(noise.sum())},
        **modality.summary(kept),
    }


def subsample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """Keep at most max_rows rows, the same share of each label, chosen by seed."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    share = max_rows / len(frame)
    keys = frame["label"].fillna("")
    parts = [group.sample(n=max(1, round(len(group) * share)), random_state=seed) for _, group in frame.groupby(keys)]
    return pd.concat(parts).sort_values("source_row").reset_index(drop=True)


def split(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int, keys: pd.Series) -> Splits:
    """Stratified, seeded split that keeps rows sharing a key together, so no item lands in two splits.

    `keys` is the modality's split_key of each row (its item key: a text's dedup key, an image's content hash; or
    the row's group). Within each label the groups of equal keys are shuffled by `seed`; the first share goes to
    test, the next to val, the rest to train (which always gets at least one group). The same input and seed give
    the same splits.
    """
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


def hash_split(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int, keys: pd.Series) -> Splits:
    """Each row's split from a hash of its item key and `seed` alone: a point in [0, 1) below test_fraction is
    test, below test_fraction + val_fraction val, else train.

    Rows sharing a key share a split, and a row's split never depends on the other rows, so adding rows (a scheduled
    run's incoming files) leaves every earlier row where it was: the champion and a candidate are scored on a test
    set that only grows, and never on rows either trained on. The shares per label are the fractions on average,
    not exactly (a class of a few rows can miss a split; validate's min_per_class and empty_split checks say so).
    """
    salt = f"tuneline-split|{seed}|".encode()
    point = np.array([int.from_bytes(hashlib.sha256(salt + str(key).encode()).digest()[:8], "big") / 2.0**64
                      for key in keys], dtype=np.float64)
    where = np.where(point < test_fraction, "test", np.where(point < test_fraction + val_fraction, "val", "train"))
    parts = {name: frame[where == name].reset_index(drop=True) for name in SPLITS}
    return Splits(**parts)


SPLITTERS = {"random": split, "hash": hash_split}  # data.split


def given_splits(data: DataParams, modality: Modality, work: Path, offset: int) -> dict[str, Loaded]:
    """The splits data.val_path / data.test_path give, each read as data.path is, source_row continuing from
    `offset` (the rows before them) so that every row of the project keeps one number."""
    given = {}
    for name, path in data.given_splits.items():
        try:
            part = modality.read(data.model_copy(update={"path": path}), work / name)
        except StageError as exc:  # the modality's reader names data.path; this file is the split's own key
            raise StageError(str(exc).replace("data.path", f"data.{name}_path")) from None
        part.frame["source_row"] += offset
        offset += part.rows_read
        given[name] = replace(part, source=f"data.{name}_path {path}")
    return given


SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}  # data.split_column's values understood as they are


def column_splits(frame: pd.DataFrame, data: DataParams) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The rows data.split_column puts in a split, by split, and the rest (rows scheduled runs took from incoming
    files, which have no such column). Values are matched ignoring case, through data.split_names first.

    Raises:
        StageError: a row of data.path has a blank split or one that is no split's name; the message names the
            values, their lines, and the fix.
    """
    if GIVEN_SPLIT not in frame:
        return frame, {}
    raw = frame[GIVEN_SPLIT]
    names = {**SPLIT_NAMES, **{key.strip().lower(): value for key, value in data.split_names.items()}}
    given = raw.notna()
    wanted = raw[given].astype(str).str.strip().str.lower().map(names)
    bad = wanted[wanted.isna()].index
    if len(bad):
        values = sorted(set(raw[bad]))
        lines = ", ".join(str(line) for line in frame.loc[bad, "line"].head(5))
        raise StageError(f"data.split_column {data.split_column!r} holds {len(bad)} value(s) that are no split, "
                         f"{values[:10]} (line {lines}{', ...' if len(bad) > 5 else ''}); give every row train, val or "
                         "test, or map your names in data.split_names, e.g. {dev: val}")
    where = pd.Series(None, index=frame.index, dtype=object)
    where[given] = wanted
    parts = {name: frame[where == name].drop(columns=GIVEN_SPLIT).reset_index(drop=True) for name in SPLITS}
    return frame[~given].drop(columns=GIVEN_SPLIT).reset_index(drop=True), parts


def assign(frame: pd.DataFrame, data: DataParams, keys: pd.Series, given: dict[str, pd.DataFrame],
           by_column: dict[str, pd.DataFrame] | None = None) -> Splits:
    """The splits: data.split's assignment of `frame` into the splits not given as files, then the given files;
    rows data.split_column placed (by_column) join their split."""
    fractions = {name: 0.0 if name in given else getattr(data, f"{name}_fraction") for name in ("val", "test")}
    splits = replace(SPLITTERS[data.split](frame, fractions["val"], fractions["test"], data.seed, keys), **given)
    joined = {name: pd.concat([getattr(splits, name), part]).sort_values("source_row", kind="stable")
              .reset_index(drop=True) for name, part in (by_column or {}).items()}
    return replace(splits, **joined)


def label_list(frame: pd.DataFrame, configured: list[str] | None) -> list[str]:
    """The configured label list, or the sorted distinct labels found in the data."""
    if configured:
        return list(configured)
    return sorted(frame["label"].dropna().unique().tolist())


def warn_if_unwatched(params: DataParams, raw_dir: str | Path) -> None:
    """Warn when data.path (or a given split's file) lies outside the folder dvc.yaml watches: DVC would not see
    that file change."""
    files = {} if params.is_builtin else {"path": params.path}
    files.update({f"{name}_path": path for name, path in params.given_splits.items()})
    for key, path in files.items():
        if not Path(path).resolve().is_relative_to(Path(raw_dir).resolve()):
            log.warning(
                "data.%s %s is outside %s, which dvc.yaml watches: `dvc repro` will not notice when that file "
                "changes. Move or copy it into %s/ and point data.%s there.", key, path, raw_dir, raw_dir, key
            )


def run(data: DataParams, modality: Modality, out_dir: str | Path,
        accepted_dir: str | Path | None = None) -> PrepareResult:
    """Read and split the source; write the splits, labels.json and summary.json atomically.

    Args:
        data: the data block of params.yaml.
        modality: data.modality's, with its block of params.yaml (components.modalities.for_params).
        out_dir: the prepared-data folder (paths.prepared).
        accepted_dir: rows taken from incoming files (paths.accepted), appended to the source; None = none.

    Returns:
        Row counts per split, the label list, the source's name and the summary written.

    Raises:
        StageError: the source is missing, unreadable, empty, not what its extension says, lacks the configured
            columns, or has no readable record. Malformed records alone do not raise: they are skipped and listed
            in summary.json, and the validate stage stops on them.
    """
    with tempfile.TemporaryDirectory(prefix="tuneline-prepare-") as work, atomic_dir(out_dir) as tmp:
        loaded = modality.read(data, Path(work))
        loaded = replace(loaded, frame=subsample(loaded.frame, data.max_rows, data.seed))
        loaded = append_accepted(loaded, accepted_dir, modality, data)
        given = given_splits(data, modality, Path(work), offset=loaded.rows_read)
        everything = combine(loaded, list(given.values()))
        summary = summarise(everything, everything.frame, modality)
        if given:  # where each split's rows lie, for validate's message
            summary["split_files"] = {"train": data.path, **data.given_splits}
        frame, by_column = column_splits(loaded.frame.drop(columns=NOISE, errors="ignore"), data)
        given_frames = {name: part.frame.drop(columns=NOISE, errors="ignore") for name, part in given.items()}
        labels = label_list(everything.frame, data.labels)
        splits = assign(frame, data, modality.split_key(frame).fillna(""), given_frames, by_column)
        for name, part in splits.items():
            write_split(tmp, name, modality.store(part, tmp))
        write_json(tmp / LABELS_FILE, labels)
        write_json(tmp / SUMMARY_FILE, summary)
    counts = {name: len(part) for name, part in splits.items()}
    log.info("prepared %s (%s): %s rows per split, labels %s; %d record(s) read, %d malformed, %d row(s) cleaned of "
             "%d control character(s)", everything.source, modality.items, counts, labels, everything.rows_read,
             len(everything.malformed), summary["noise"]["rows_changed"], summary["noise"]["characters_replaced"])
    return PrepareResult(counts=counts, labels=labels, source=everything.source, summary=summary)


def main() -> None:
    def _run(p: Params) -> PrepareResult:
        warn_if_unwatched(p.data, p.paths.raw_dir)
        return run(p.data, modalities.for_params(p), p.paths.prepared, p.paths.accepted)

    stage_main("prepare", _run)


if __name__ == "__main__":
    main()
