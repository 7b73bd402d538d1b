"""Stage `prepare`: read the labelled source through its modality, and split it into train/val/test
deterministically.

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
from components.modalities import Loaded, Modality
from components.stage import stage_main

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

    `keys` is the modality's item_key of each row (a text's dedup key, an image's content hash). Within each label
    the groups of equal keys are shuffled by `seed`; the first share goes to test, the next to val, the rest to
    train (which always gets at least one group). The same input and seed give the same splits.
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
        frame = loaded.frame
        summary = summarise(loaded, frame, modality)
        frame = frame.drop(columns=NOISE, errors="ignore")
        labels = label_list(frame, data.labels)
        splits = split(frame, data.val_fraction, data.test_fraction, data.seed, modality.item_key(frame).fillna(""))
        for name, part in splits.items():
            write_split(tmp, name, modality.store(part, tmp))
        write_json(tmp / LABELS_FILE, labels)
        write_json(tmp / SUMMARY_FILE, summary)
    counts = {name: len(part) for name, part in splits.items()}
    log.info("prepared %s (%s): %s rows per split, labels %s; %d record(s) read, %d malformed, %d row(s) cleaned of "
             "%d control character(s)", loaded.source, modality.items, counts, labels, loaded.rows_read,
             len(loaded.malformed), summary["noise"]["rows_changed"], summary["noise"]["characters_replaced"])
    return PrepareResult(counts=counts, labels=labels, source=loaded.source, summary=summary)


def main() -> None:
    def _run(p: Params) -> PrepareResult:
        warn_if_unwatched(p.data, p.paths.raw_dir)
        return run(p.data, modalities.for_params(p), p.paths.prepared, p.paths.accepted)

    stage_main("prepare", _run)


if __name__ == "__main__":
    main()
