"""A folder per class: the source layout every file-based modality (images, audio) reads the same way."""

from __future__ import annotations

from pathlib import Path

from components.stage import StageError


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
