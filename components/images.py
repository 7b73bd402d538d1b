"""Images as labelled data: where they come from, and what each one is.

The first piece of the image modality (issue 8). prepare and validate will build on it: a source gives
(file, label) pairs, and `inspect_image` says what each file holds (format, size, channels, content hash) or why it
cannot be used. Nothing here trains or serves.

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
from typing import TYPE_CHECKING, Any

from components.config import AugmentParams, DataParams, ImageAugmentParams, ImageParams
from components.stage import StageError

if TYPE_CHECKING:
    from components.augment import AugmentResult
    from components.prepare import PrepareResult

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


def class_folders(root: str | Path) -> list[tuple[Path, str]]:
    """(file, label) for every file in root's sub-folders, the label being the sub-folder's name; sorted.

    Files of any suffix are listed (inspect_image says which are no images); hidden files and folders are skipped.

    Raises:
        StageError: root is missing, not a folder, or has no sub-folder with a file in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise StageError(f"data.path {str(root)!r} is not a folder; for images, give a folder with one sub-folder "
                         "per class, or a CSV/Parquet file of image paths and labels")
    pairs = [(path, folder.name)
             for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
             for path in sorted(folder.rglob("*"))
             if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)]
    if not pairs:
        raise StageError(f"data.path {str(root)!r} has no class sub-folders with files in them; put each class's "
                         "images in a sub-folder named after the class (e.g. cats/001.jpg, dogs/002.jpg)")
    return pairs


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


# ---------------------------------------------------------------------------------------------------------------
# prepare, for data.modality: image

IMAGES_DIR = "images"  # inside the prepared folder: each usable image once, named by its content hash
IMAGE_FORMAT = "images"  # summary.json's format for image data, which tells every later stage what it holds
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif"}


def holds_images(prepared_dir: str | Path) -> bool:
    """Whether the prepared folder holds image data (prepare's summary.json says so), not text."""
    from components.io import read_summary

    summary = read_summary(prepared_dir)
    return summary is not None and summary.get("format") == IMAGE_FORMAT


def source_pairs(data: DataParams, work: Path) -> tuple[list[tuple[Path, str | None, int]], str, list[Any]]:
    """The source's (file, label, line) triples, its name for messages, and the table records it could not read.

    `line` is the record's line in a table source (its 1-based row for Parquet), or the pair's 1-based position
    for the built-in digits and a class-folder source.
    """
    from components.prepare import read_source

    if data.is_builtin:
        return ([(path, label, i + 1) for i, (path, label) in enumerate(write_digits(work / "digits"))],
                "builtin:scikit-learn load_digits", [])
    path = Path(data.path)
    if path.is_dir():
        return [(file, label, i + 1) for i, (file, label) in enumerate(class_folders(path))], str(path), []
    table = read_source(path, (data.image_column, data.label_column), data.delimiter, data.encoding)
    triples = [(path.parent / name.strip() if isinstance(name, str) and name.strip() else path.parent, label, line)
               for name, label, line in zip(table.text, table.label, table.line, strict=True)]
    return triples, str(path), table.malformed


def describe(file: Path, limits: ImageParams) -> ImageInfo:
    """inspect_image of the file, or the reason it cannot be read, with the configured size limits applied."""
    if not file.is_file():
        return ImageInfo("", 0, problem=f"{file} does not exist or is not a file")
    size = file.stat().st_size
    if size > limits.max_file_bytes:
        return ImageInfo("", size, problem=f"is {size:,} bytes, over image.max_file_bytes ({limits.max_file_bytes:,})")
    return inspect_image(file.read_bytes(), max_pixels=limits.max_pixels)


def prepare_images(data: DataParams, limits: ImageParams, out_dir: str | Path) -> PrepareResult:
    """The image counterpart of prepare.run: every source image inspected, the usable ones copied, split by content.

    Each row of a split: image (its path inside the prepared folder, or null when unusable), label, source_row,
    line, file (where it came from), sha256, format, width, height, channels, size_bytes and problem (why it is
    unusable; null when usable). Unusable images stay in the splits with their problem, so the validate stage
    reports each with its file; identical images (same bytes) always land in the same split.

    Raises:
        StageError: the source is missing or has no image at all.
    """
    import tempfile

    import pandas as pd

    from components.io import LABELS_FILE, SUMMARY_FILE, atomic_dir, write_json, write_split
    from components.prepare import PrepareResult, label_list, split, subsample

    with tempfile.TemporaryDirectory(prefix="tuneline-images-") as work, atomic_dir(out_dir) as tmp:
        triples, source, malformed = source_pairs(data, Path(work))
        rows = []
        for index, (file, label, line) in enumerate(triples):
            info = describe(file, limits)
            image = None
            if info.problem is None:
                image = f"{IMAGES_DIR}/{info.sha256}{EXTENSIONS[info.format]}"
                (tmp / IMAGES_DIR).mkdir(exist_ok=True)
                if not (tmp / image).exists():
                    (tmp / image).write_bytes(file.read_bytes())
            where = file.relative_to(work).as_posix() if file.is_relative_to(work) else str(file)
            rows.append({"image": image, "label": None if label is None else str(label), "source_row": index,
                         "line": line, "file": where, **{k: v for k, v in vars(info).items() if k != "sha256"},
                         "sha256": info.sha256 or None})
        if not rows:
            raise StageError(f"data.path {source!r} holds no images; it needs labelled image files")
        frame = subsample(pd.DataFrame(rows), data.max_rows, data.seed)
        keys = frame["sha256"].fillna(frame["file"])  # unreadable files are keyed by their name
        labels = label_list(frame, data.labels)
        splits = split(frame, data.val_fraction, data.test_fraction, data.seed, keys=keys)
        for name, part in splits.items():
            write_split(tmp, name, part)
        unusable = int(frame["problem"].notna().sum())
        summary = {"source": source, "format": IMAGE_FORMAT, "rows_read": len(rows), "rows_kept": len(frame),
                   "malformed_count": len(malformed),
                   "malformed_lines": [{"line": m.line, "problem": m.problem} for m in malformed[:100]],
                   "noise": {"rows_changed": 0, "characters_replaced": 0}, "unusable_images": unusable}
        write_json(tmp / LABELS_FILE, labels)
        write_json(tmp / SUMMARY_FILE, summary)
        # unusable images are pruned from disk but kept as rows: validate names each with its problem
        kept = {row for _, part in splits.items() for row in part["image"].dropna()}
        for stored in (tmp / IMAGES_DIR).glob("*") if (tmp / IMAGES_DIR).is_dir() else []:
            if f"{IMAGES_DIR}/{stored.name}" not in kept:
                stored.unlink()
    counts = {name: len(part) for name, part in splits.items()}
    log.info("prepared %s: %s images per split, labels %s; %d image(s) read, %d unusable", source, counts, labels,
             len(rows), unusable)
    return PrepareResult(counts=counts, labels=labels, source=source, summary=summary)


# ---------------------------------------------------------------------------------------------------------------
# augment, for data.modality: image


def perturb(image: Any, params: ImageAugmentParams) -> Any:
    """One perturbed copy of `image` (a float tensor 1x3xHxW in [0, 1]), the same size; torch's RNG draws."""
    import kornia.augmentation as K  # noqa: N812 - kornia's own short name

    height, width = image.shape[-2:]
    pipeline = K.AugmentationSequential(
        K.RandomResizedCrop((height, width), scale=tuple(params.crop_scale), p=params.p_crop),
        K.RandomHorizontalFlip(p=params.p_flip),
        K.RandomRotation(degrees=params.max_degrees, p=params.p_rotate),
        K.ColorJitter(brightness=params.brightness, contrast=params.contrast, saturation=params.saturation,
                      p=params.p_color),
        data_keys=["input"],
    )
    return pipeline(image).clamp(0.0, 1.0)


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


def augment_images(params: AugmentParams, prepared_dir: str | Path, out_dir: str | Path) -> AugmentResult:
    """The image counterpart of augment.run: perturbed copies of train images (kornia), train split only.

    As for text, augment.copies_per_example (per_class, balance, max_copies_per_example) sets how many copies each
    class gets; augment.image sets the perturbations. out_dir gets images/ (the train images and the copies) and
    train.jsonl, each copy's row keeping its original's source_row and file; a copy identical to a val or test
    image is dropped. The same seed and data give the same copies.
    """
    import os

    import numpy as np
    import pandas as pd
    import torch

    from components.augment import AugmentResult, copies_per_class, pick_sources
    from components.io import SUMMARY_FILE, atomic_dir, read_split, write_json, write_split

    prepared_dir = Path(prepared_dir)
    train = read_split(prepared_dir, "train")
    held_out = set(pd.concat([read_split(prepared_dir, name)["sha256"] for name in ("val", "test")]).dropna())
    wanted = copies_per_class(train["label"].value_counts().to_dict(), params)
    rng = np.random.default_rng(params.seed)
    torch.manual_seed(params.seed)
    copies, rejected = [], 0
    with atomic_dir(out_dir) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        for image in train["image"].dropna().unique():
            try:  # a hard link where the file system allows it: the same bytes, no second copy
                os.link(prepared_dir / image, tmp / image)
            except OSError:
                (tmp / image).write_bytes((prepared_dir / image).read_bytes())
        for label in sorted(wanted):
            rows = train[train["label"] == label].reset_index(drop=True)
            for position in pick_sources(len(rows), wanted[label], rng):
                row = rows.iloc[int(position)].to_dict()
                data = png_bytes(perturb(load_rgb(prepared_dir / row["image"]), params.image))
                info = inspect_image(data)
                if info.sha256 in held_out:
                    rejected += 1
                    continue
                name = f"{IMAGES_DIR}/{info.sha256}.png"
                if not (tmp / name).exists():
                    (tmp / name).write_bytes(data)
                copies.append({**row, "image": name, "sha256": info.sha256, "format": "PNG", "mode": info.mode,
                               "width": info.width, "height": info.height, "channels": info.channels,
                               "size_bytes": info.size_bytes, "problem": None, "augmented": True})
        augmented = pd.concat([train.assign(augmented=False), pd.DataFrame(copies)], ignore_index=True)
        added = pd.Series([row["label"] for row in copies], dtype=object).value_counts().to_dict()
        result = AugmentResult(original_rows=len(train), added_rows=len(copies),
                               added_per_class={label: int(added.get(label, 0)) for label in sorted(wanted)},
                               rejected=rejected, synonym_words=0)
        write_split(tmp, "train", augmented)
        write_json(tmp / SUMMARY_FILE, {"original_rows": result.original_rows, "added_rows": result.added_rows,
                                        "added_per_class": result.added_per_class,
                                        "rows_per_class": augmented["label"].value_counts().sort_index().to_dict(),
                                        "rejected": result.rejected, "synonym_words": 0, "format": IMAGE_FORMAT})
    log.info("augmented train images: %d + %d perturbed copies %s; %d dropped (equal to a val/test image)",
             result.original_rows, result.added_rows, result.added_per_class, result.rejected)
    return result
