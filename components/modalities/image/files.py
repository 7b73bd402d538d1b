"""Images as labelled data: where they come from, and what each one is.

A source gives (file, label) pairs; `inspect_image` says what each file holds (format, size, channels, content hash)
or why it cannot be used. Every usable image is copied into the prepared folder once, named by its content hash; an
unusable one stays a row with its problem, so validate names it.

Sources:
- `builtin`: scikit-learn's bundled digits (1,797 grey 8x8 images of the digits 0-9), written out as PNG files;
- a folder with one sub-folder per class, named after its label;
- a CSV, TSV, JSON Lines or Parquet file with an image-path column and a label column, paths relative to that file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataParams
from components.modalities import Loaded
from components.modalities.folders import SOURCE_PATH, class_folders, store_files
from components.modalities.image.settings import ImageParams
from components.stage import StageError
from components.tables import label_string, read_source

log = logging.getLogger(__name__)

# Formats Pillow decodes that a training set may hold; anything else (PDF, SVG, PSD, ...) is refused by name.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# Pillow's modes and their channel counts; a mode not listed (CMYK, I;16, ...) is converted before use or refused.
CHANNELS = {"1": 1, "L": 1, "P": 1, "LA": 2, "RGB": 3, "RGBA": 4}


@dataclass(frozen=True)
class ImageInfo:
    """What one image file holds; `problem` says why it cannot be used (None: it decoded completely)."""

    sha256: str
    size_bytes: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    channels: int | None = None
    problem: str | None = None


def inspect_image(data: bytes, max_pixels: int = 40_000_000) -> ImageInfo:
    """Decode `data` completely and describe it.

    Args:
        data: the file's bytes.
        max_pixels: width x height above which the image is refused undecoded (a decompression bomb, or simply too
            big for a training set).

    Returns:
        Its content hash, format, size, mode and channels, or the problem that stops its use: not an image, a
        format outside FORMATS, truncated or corrupt data, or too many pixels.
    """
    from PIL import Image, UnidentifiedImageError

    digest, size = hashlib.sha256(data).hexdigest(), len(data)
    if not data:
        return ImageInfo(digest, size, problem="the file is empty")
    found = ImageInfo(digest, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            found = ImageInfo(digest, size, image.format, image.width, image.height, image.mode,
                              CHANNELS.get(image.mode, len(image.getbands())))
            if image.format not in FORMATS:
                return _with(found, f"is {image.format} data; use one of {', '.join(FORMATS)}")
            if image.width * image.height > max_pixels:
                return _with(found, f"has {image.width}x{image.height} pixels, over the limit of {max_pixels:,}")
            image.load()  # decodes every byte: a truncated or corrupt file fails here, not in training
    except UnidentifiedImageError:
        return ImageInfo(digest, size, problem="is not an image Pillow can read (wrong format, or not an image)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageInfo(digest, size, problem=f"is too large to decode safely ({exc})")
    except (OSError, SyntaxError, ValueError) as exc:
        return _with(found, f"could not be decoded completely ({exc}); a truncated or corrupt file?")
    return found


def limit_problem(info: ImageInfo, limits: ImageParams) -> str | None:
    """Why a decoded image breaks the image block's limits (sides, channels), or None; validate's GX suite checks
    the same for training data (image_too_small, image_too_large, image_channels)."""
    if min(info.width, info.height) < limits.min_side or max(info.width, info.height) > limits.max_side:
        return (f"is {info.width}x{info.height} pixels; each side must be {limits.min_side} to {limits.max_side} "
                "(image.min_side, image.max_side)")
    if info.channels not in limits.channels:
        return f"has {info.channels} channel(s); the model takes {list(limits.channels)} (image.channels)"
    return None


def _with(info: ImageInfo, problem: str) -> ImageInfo:
    return ImageInfo(info.sha256, info.size_bytes, info.format, info.width, info.height, info.mode, info.channels,
                     problem)


def write_digits(out_dir: str | Path) -> list[tuple[Path, str]]:
    """Write scikit-learn's bundled digits as 8x8 grey PNG files under out_dir/<digit>/; (file, label) per image."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out_dir = Path(out_dir)
    pairs = []
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = str(int(target))
        path = out_dir / label / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # values 0-16 (ink) -> 0-255 grey; PNG without a timestamp, so the same digits give the same bytes
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).save(path, format="PNG")
        pairs.append((path, label))
    return pairs


IMAGES_DIR = "images"  # inside the prepared folder: each usable image once, named by its content hash
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif"}
COLUMN_KEYS = ("image.column", "data.label_column")  # the params keys that name a table's two columns


def source_files(data: DataParams, settings: ImageParams,
                 work: Path) -> tuple[list[tuple[Path, str | None, int]], str, str, list[Any]]:
    """The source's (file, label, line) triples, its name and format for messages, and the table records it could
    not read.

    `line` is the record's line in a table source (its 1-based row for Parquet), or the pair's 1-based position
    for the built-in digits and a class-folder source.
    """
    if data.is_builtin:
        return ([(path, label, i + 1) for i, (path, label) in enumerate(write_digits(work / "digits"))],
                "builtin:scikit-learn load_digits", "folders", [])
    path = Path(data.path)
    if path.is_dir():
        listed = class_folders(path, "images")
        return [(file, label, i + 1) for i, (file, label) in enumerate(listed)], str(path), "folders", []
    table = read_source(path, (settings.column, data.label_column), data.delimiter, data.encoding, keys=COLUMN_KEYS)
    triples = [(path.parent / name.strip() if isinstance(name, str) and name.strip() else path.parent, label, line)
               for name, label, line in zip(table.item, table.label, table.line, strict=True)]
    return triples, str(path), table.format, table.malformed


def read(data: DataParams, settings: ImageParams, work: Path) -> Loaded:
    """Every source image inspected, one row each: image (its name in the prepared folder, or null when unusable),
    label, source_row, line, file (where it came from), size_bytes, format, width, height, mode, channels, problem
    (why it is unusable; null when usable) and sha256, plus where the file is now (SOURCE_PATH, for `store`).

    Raises:
        StageError: the source is missing or has no image at all.
    """
    triples, source, kind, malformed = source_files(data, settings, work)
    rows = []
    for index, (file, label, line) in enumerate(triples):
        info = describe(file, settings)
        image = f"{IMAGES_DIR}/{info.sha256}{EXTENSIONS[info.format]}" if info.problem is None else None
        where = file.relative_to(work).as_posix() if file.is_relative_to(work) else str(file)
        rows.append({"image": image, "label": label_string(label), "source_row": index, "line": line, "file": where,
                     **{k: v for k, v in vars(info).items() if k != "sha256"}, "sha256": info.sha256 or None,
                     SOURCE_PATH: str(file)})
    if not rows:
        raise StageError(f"data.path {source!r} holds no images; it needs labelled image files")
    return Loaded(frame=pd.DataFrame(rows), source=source, format=kind, rows_read=len(rows), malformed=malformed)


def store(frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Copy each usable image of a split into folder/images (once, by content hash); the rows without SOURCE_PATH."""
    return store_files(frame, folder, "image")


def describe(file: Path, limits: ImageParams) -> ImageInfo:
    """inspect_image of the file, or the reason it cannot be read, with the configured size limits applied."""
    if not file.is_file():
        return ImageInfo("", 0, problem=f"{file} does not exist or is not a file")
    size = file.stat().st_size
    if size > limits.max_file_bytes:
        return ImageInfo("", size, problem=f"is {size:,} bytes, over image.max_file_bytes ({limits.max_file_bytes:,})")
    return inspect_image(file.read_bytes(), max_pixels=limits.max_pixels)


def load_rgb(path: str | Path) -> Any:
    """An image file as a float tensor 1x3xHxW in [0, 1] (grey and RGBA become RGB)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def png_bytes(image: Any) -> bytes:
    """A float tensor 1x3xHxW in [0, 1] as PNG bytes (no timestamp: the same pixels give the same bytes)."""
    import numpy as np
    from PIL import Image

    pixels = (image[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
