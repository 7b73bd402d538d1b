"""Reading labelled tables: CSV/TSV, JSON Lines and Parquet files (optionally .gz/.bz2/.xz/.zip compressed), two
columns each (an item and its label), every record with the line where it starts.

A record that cannot be read (a CSV line with the wrong number of fields, a JSONL line that is not a JSON object) is
skipped and listed; a file that cannot be read at all (empty, binary, the wrong format for its extension, not
decodable, a missing column) raises a StageError that names the file, the problem and the fix. prepare reads
data.path with it, ingest the files dropped into paths.incoming; which columns are read is the modality's business.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import difflib
import gzip
import io
import json
import lzma
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from components.modalities import Malformed
from components.stage import StageError

READERS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zip")
DELIMITERS = (",", ";", "\t", "|")
# The params keys naming the two columns, for messages; each modality passes its own (text.column, image.column).
COLUMN_KEYS = ("text.column", "data.label_column")
HEAD_BYTES = 64 * 1024  # enough to recognise a file's real format and read a CSV header
FIELD_LIMIT = 64 * 1024 * 1024  # characters in one CSV field (the csv module's default, 128 KiB, is too small)

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
class Table:
    """The two columns a modality reads (its item: a text, an image's path; and the label), and any more asked for
    (data.split_column), as read from the source, with where each record starts."""

    format: str
    item: list[Any]
    label: list[Any]
    line: list[int]
    source_row: list[int]
    rows_read: int
    malformed: list[Malformed]
    extra: dict[str, list[Any]] = field(default_factory=dict)  # any columns asked for after the two, by name


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


def _missing_columns(name: str, wanted: Sequence[str], found: Sequence[str], where: str = "",
                     keys: Sequence[str] = COLUMN_KEYS) -> str | None:
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
            f"found {shown}{hint}; set {' / '.join(keys)} in params.yaml to your file's column names")


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


def read_csv(path: Path, compression: str | None, head: bytes, name: str, columns: Sequence[str],
             delimiter: str | None, encoding: str, keys: Sequence[str] = COLUMN_KEYS) -> Table:
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
    indices: list[int] = []
    width = 0
    header: list[str] | None = None
    values: list[list[Any]] = [[] for _ in columns]
    lines, rows, malformed = [], [], []
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
                problem = _missing_columns(name, columns, header, where, keys)
                if problem:
                    split_problem = _delimiter_problem(header, delimiter, chosen)
                    if split_problem:
                        problem = f"{name}: expected the columns {list(dict.fromkeys(columns))}{where}, {split_problem}"
                    raise StageError(problem)
                indices, width = [header.index(column) for column in columns], len(header)
                continue
            rows_read += 1
            if len(fields) != width:
                malformed.append(Malformed(start, _field_count_problem(len(fields), width, delimiter, start, end)))
                continue
            for column, index in zip(values, indices, strict=True):
                column.append(fields[index])
            values[0][-1] = values[0][-1] or None  # an empty item is a missing one
            lines.append(start)
            rows.append(rows_read - 1)
    if header is None:
        raise StageError(f"{name} is empty (no header line); it needs a header and labelled rows")
    return _table("csv", columns, values, lines, rows, rows_read, malformed)


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


def read_jsonl(path: Path, compression: str | None, name: str, columns: Sequence[str], encoding: str,
               keys: Sequence[str] = COLUMN_KEYS) -> Table:
    """Read JSON Lines: one object per line; any other line is skipped and recorded as malformed."""
    values: list[list[Any]] = [[] for _ in columns]
    lines, rows, malformed = [], [], []
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
            for found, column in zip(values, columns, strict=True):
                found.append(record.get(column))
            lines.append(number)
            rows.append(rows_read - 1)
    if values[0] and len(present) < len(set(columns)):
        problem = _missing_columns(name, columns, [*keys, *(c for c in present if c not in keys)],
                                   where=" as keys of its objects", keys=keys)
        raise StageError(str(problem))
    return _table("jsonl", columns, values, lines, rows, rows_read, malformed)


def read_parquet(path: Path, compression: str | None, name: str, columns: Sequence[str],
                 keys: Sequence[str] = COLUMN_KEYS) -> Table:
    """Read the two columns of a Parquet file; its records are numbered by row (1-based) instead of line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if compression is None:
            source: Any = path
        else:
            with _open_binary(path, compression) as handle:
                source = io.BytesIO(handle.read())
        problem = _missing_columns(name, columns, pq.read_schema(source).names, keys=keys)
        if problem:
            raise StageError(problem)
        frame = pq.read_table(source, columns=list(dict.fromkeys(columns))).to_pandas()
    except (pa.ArrowException, ValueError, OSError, EOFError) as exc:
        raise StageError(f"{name} could not be read as Parquet ({exc}); a truncated or partly written file? "
                         f"Write it again, or {_EXPORT}") from None
    count = len(frame)
    rows = list(range(count))
    return _table("parquet", columns, [frame[column].tolist() for column in columns], [r + 1 for r in rows], rows,
                  count, [])


def _table(kind: str, columns: Sequence[str], values: list[list[Any]], lines: list[int], rows: list[int],
           rows_read: int, malformed: list[Malformed]) -> Table:
    """A Table of the values read for `columns` (item, label, then any extra ones), in that order."""
    return Table(kind, values[0], values[1], lines, rows, rows_read, malformed,
                 extra={column: found for column, found in zip(columns[2:], values[2:], strict=True)})


def read_source(path: Path, columns: Sequence[str] = ("text", "label"), delimiter: str | None = None,
                encoding: str = "utf-8", name: str | None = None, keys: Sequence[str] = COLUMN_KEYS) -> Table:
    """Read a CSV/TSV, JSON Lines or Parquet file (optionally .gz/.bz2/.xz/.zip compressed).

    Args:
        path: the file.
        columns: the item and label column names, then any more to read (they land in Table.extra).
        delimiter: a CSV's field separator; None detects it from the header.
        encoding: of a CSV or JSONL file.
        name: how messages name the file (default: data.path 'PATH').
        keys: the params keys that name the two columns, for the message when one is missing.

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
            return read_parquet(path, compression, name, columns, keys)
        try:
            if kind == "csv":
                table = read_csv(path, compression, head, name, columns, delimiter, encoding, keys)
            else:
                table = read_jsonl(path, compression, name, columns, encoding, keys)
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
    if not table.item:
        shown = "; ".join(f"line {m.line}: {m.problem}" for m in table.malformed[:3])
        hint = ""
        if table.format == "jsonl":
            hint = "; if it is a CSV file, rename it to .csv"
        raise StageError(f"{name}: none of its {table.rows_read} records could be read ({shown}){hint}")


def is_missing(value: object) -> bool:
    """None, pandas' NA or a float NaN: a cell that holds nothing."""
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def label_string(value: object) -> str | None:
    """A label as the splits hold it: a stripped string, or None when missing or blank."""
    # Numeric labels read from JSON or Parquet (1, 1.0) become "1", matching what a CSV gives.
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None

