"""What every file-based modality (images, audio) does the same way: a folder per class as a source, each usable
file stored once by content hash, train files linked beside augmented copies, an unreadable file keyed by its name,
and an HTTP item decoded from base64 within a byte limit."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from components.stage import StageError

if TYPE_CHECKING:
    import pandas as pd

SOURCE_PATH = "source_path"  # where a row's file is while prepare runs (dropped from the splits)


def class_folders(root: str | Path, items: str = "files", example: str = "cats/001.jpg, dogs/002.jpg"
                  ) -> list[tuple[Path, str]]:
    """(file, label) for every file in root's sub-folders, the label being the sub-folder's name; sorted.

    Files of any suffix are listed (the modality's inspection says which it cannot use); hidden files and folders
    are skipped. `items` and `example` word the errors ("images", "cats/001.jpg, dogs/002.jpg").

    Raises:
        StageError: root is missing, not a folder, or has no sub-folder with a file in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise StageError(f"data.path {str(root)!r} is not a folder; for {items}, give a folder with one sub-folder "
                         f"per class, or a CSV/Parquet file of {items.rstrip('s')} paths and labels")
    pairs = [(path, folder.name)
             for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
             for path in sorted(folder.rglob("*"))
             if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)]
    if not pairs:
        raise StageError(f"data.path {str(root)!r} has no class sub-folders with files in them; put each class's "
                         f"{items} in a sub-folder named after the class (e.g. {example})")
    return pairs


def content_key(frame: pd.DataFrame) -> pd.Series:
    """Each row's content hash (sha256); an unreadable file, which has none, is keyed by its name."""
    import pandas as pd

    hashes = frame["sha256"] if "sha256" in frame else pd.Series(None, index=frame.index, dtype=object)
    files = frame["file"] if "file" in frame else frame["source_row"].astype(str)
    return hashes.where(hashes.notna(), "unreadable " + files.astype(str))


def store_files(frame: pd.DataFrame, folder: Path, column: str) -> pd.DataFrame:
    """Copy the file of each usable row (`column` names it inside folder, by content hash) into folder once, from
    where it lies now (SOURCE_PATH); the rows without SOURCE_PATH."""
    for name, source in zip(frame[column], frame[SOURCE_PATH], strict=True):
        if isinstance(name, str) and not (folder / name).exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(Path(source).read_bytes())
    return frame.drop(columns=SOURCE_PATH)


def link_files(names: Iterable[str], source_dir: Path, out_dir: Path) -> None:
    """Each named file of source_dir at the same name in out_dir: a hard link where the file system allows it (the
    same bytes, no second copy), else a copy."""
    for name in names:
        try:
            os.link(source_dir / name, out_dir / name)
        except OSError:
            (out_dir / name).write_bytes((source_dir / name).read_bytes())


def decode_base64(item: object, max_bytes: int, key: str) -> bytes:
    """An HTTP item's file bytes from standard base64; ValueError names the problem (and `key`, the limit's params
    key, when the file is too large)."""
    import base64
    import binascii

    try:
        data = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("is not base64 (standard alphabet, with padding); encode the file's bytes") from None
    if len(data) > max_bytes:
        raise ValueError(f"is {len(data):,} bytes, over {key} ({max_bytes:,})")
    return data
