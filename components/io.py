"""Atomic file output and the on-disk format of data splits shared by every stage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

SPLITS = ("train", "val", "test")
LABELS_FILE = "labels.json"
# Written by prepare beside the splits: rows read and kept, malformed source lines, noise removed from texts.
SUMMARY_FILE = "summary.json"
# A trained model folder's record: modality, labels, base model, the params it was trained with.
META_FILE = "tuneline.json"


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` only if the block finishes without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON with sorted keys and no timestamps, atomically, so diffs between runs mean something."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (a temp file beside it, then a rename), as write_json does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by write_json."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def split_path(folder: str | Path, split: str) -> Path:
    """The file that holds one split inside a prepared or augmented data folder."""
    return Path(folder) / f"{split}.jsonl"


def write_split(folder: str | Path, split: str, frame: pd.DataFrame) -> None:
    """Write one split as JSON Lines (readable, diffable, exact for text)."""
    frame.to_json(split_path(folder, split), orient="records", lines=True, force_ascii=False)


def read_split(folder: str | Path, split: str) -> pd.DataFrame:
    """Read one split written by write_split; labels always come back as strings.

    Splits carry text, label, source_row (the row's 0-based index among the source's records) and line (where
    the row starts in the source: its line in a CSV or JSONL file, its 1-based row in a Parquet file). A split
    written without `line` (by hand, or before prepare wrote it) reads as it is.
    """
    path = split_path(folder, split)
    frame = pd.read_json(path, orient="records", lines=True, dtype={"text": str, "label": str})
    if frame.empty:
        frame = pd.DataFrame(columns=["text", "label", "source_row", "line"])
    return frame


def read_labels(folder: str | Path) -> list[str]:
    """The ordered label list written by the prepare stage."""
    return list(read_json(Path(folder) / LABELS_FILE))


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    """The prepare stage's summary.json, or None when the folder has none (written by hand or by an older prepare).

    Keys: modality (what the rows hold: text, image, ...), source, format (csv | jsonl | parquet | folders),
    rows_read (records in the source, malformed ones included), rows_kept (rows in the splits, after data.max_rows),
    malformed_count, malformed_lines (the first 100, each {"line", "problem"}; "line" is the 1-based row for
    Parquet), noise {rows_changed, characters_replaced} (control/format characters normalise replaced in the kept
    texts; tabs and line breaks are not counted), split_files (only with data.val_path / test_path: split -> its
    file; train is data.path, which also holds the splits not given), and what the modality adds (images:
    unusable_images).
    """
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return None
    return dict(read_json(path))
