"""Perturbed copies of train images: a random resized crop, a left-right flip, a rotation and colour jitter, each with
its probability in image.augment (kornia). Each copy is a PNG file of its own, named by its content hash; its row
keeps its original's label, source_row and file, and a copy identical to a val or test image is dropped."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.copies import pick_sources
from components.modalities.folders import link_files
from components.modalities.image.files import IMAGES_DIR, inspect_image, load_rgb, png_bytes
from components.modalities.image.settings import ImageAugmentParams


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


def augment(train: pd.DataFrame, held_out: set[str], wanted: Mapping[str, int], params: ImageAugmentParams,
            seed: int, prepared_dir: Path, out_dir: Path) -> pd.DataFrame:
    """The train split (augmented = False) followed by `wanted[label]` perturbed copies of each label's images
    (augmented = True), less those equal to a `held_out` image (by content hash). out_dir/images gets the train images
    (hard links where the file system allows) and the copies. The same seed and data give the same copies."""
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    copies = []
    (out_dir / IMAGES_DIR).mkdir()
    link_files(train["image"].dropna().unique(), prepared_dir, out_dir)
    for label in sorted(wanted):
        rows = train[train["label"] == label].reset_index(drop=True)
        for position in pick_sources(len(rows), wanted[label], rng):
            row = rows.iloc[int(position)].to_dict()
            data = png_bytes(perturb(load_rgb(prepared_dir / row["image"]), params))
            info = inspect_image(data)
            if info.sha256 in held_out:
                continue
            name = f"{IMAGES_DIR}/{info.sha256}.png"
            if not (out_dir / name).exists():
                (out_dir / name).write_bytes(data)
            copies.append({**row, "image": name, "sha256": info.sha256, "format": "PNG", "mode": info.mode,
                           "width": info.width, "height": info.height, "channels": info.channels,
                           "size_bytes": info.size_bytes, "problem": None, "augmented": True})
    return pd.concat([train.assign(augmented=False), pd.DataFrame(copies)], ignore_index=True)
