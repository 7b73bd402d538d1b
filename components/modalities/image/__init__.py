"""Images: a folder per class, a table of image paths, or scikit-learn's bundled digits, classified by
EfficientNet-Lite0 with ImageNet weights (or a local transformers image checkpoint) and compared with logistic
regression on 8x8 grey thumbnails. Its block of params.yaml is `image` (settings.py); the pieces live beside it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import AugmentParams, DataParams, ModelParams, Params, TrainParams
from components.modalities import Augmented, Built, Expectation, Loaded, Modality
from components.modalities.image.settings import ImageParams
from components.stage import StageError

# prepare's record of each file; validate compares images by content hash, so identical files count as one
COLUMNS = ("image", "label", "source_row", "file", "sha256", "width", "height", "channels", "problem")
SIZE_CHECKS = ("image_too_small", "image_too_large", "image_channels")


class ImageModality(Modality):
    """Image files, decoded completely by prepare and copied once each; two images are the same by their bytes."""

    name = "image"
    item = "image"
    items = "images"
    column = "image"
    columns = COLUMNS
    details = ("problem", "width", "height", "channels")
    checks = {"unreadable_image": "error", "image_too_small": "error", "image_too_large": "error",
              "image_channels": "error"}
    settings_type = ImageParams
    route = "/classify_image"
    request_example = '{"images": ["<base64 file>", ...]}'
    settings: ImageParams

    def check_options(self, params: Params) -> None:
        if params.model.adapter != "none" or params.model.candidates:
            raise StageError("model.adapter and model.candidates are for text models; set them to none and [] for "
                             "images")
        if params.train.world_size > 1:
            raise StageError("train.num_processes > 1 (DDP) is for text models so far; set it to 1 for images")
        if params.train.method == "contrastive":
            raise StageError("train.method contrastive is for text models so far; set it to finetune or auto for "
                             "images")
        if params.data.split_column:
            raise StageError("data.split_column is read from text tables so far; give images' splits as "
                             "data.val_path / data.test_path (a folder per class or a table each), or remove it")

    def read(self, data: DataParams, work: Path) -> Loaded:
        from components.modalities.image.files import read

        return read(data, self.settings, work)

    def read_table(self, path: Path, columns: tuple[str, str], data: DataParams, name: str) -> Loaded:
        from components.modalities.image.files import read

        return read(data.model_copy(update={"path": str(path)}),
                    self.settings.model_copy(update={"column": columns[0]}), path.parent)

    def item_key(self, frame: pd.DataFrame) -> pd.Series:
        from components.modalities.folders import content_key

        return content_key(frame)

    def store(self, frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
        from components.modalities.image.files import store

        return store(frame, folder)

    def summary(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {"unusable_images": int(frame["problem"].notna().sum())}

    def validation_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        sides = frame.reindex(columns=["width", "height"]).astype(float)
        return frame.assign(short_side=sides.min(axis=1), long_side=sides.max(axis=1))

    def expectations(self, labels: list[str]) -> list[Expectation]:
        limits = self.settings
        return [
            # prepare decoded every byte of every file; its problem says why one could not be used (not an image, a
            # format outside the list, truncated or corrupt, too many pixels or bytes)
            Expectation("unreadable_image", "expect_column_values_to_be_null", {"column": "problem"}),
            # a thumbnail or a sliver teaches nothing; a poster-sized scan costs memory for nothing
            Expectation("image_too_small", "expect_column_values_to_be_between",
                        {"column": "short_side", "min_value": limits.min_side}),
            Expectation("image_too_large", "expect_column_values_to_be_between",
                        {"column": "long_side", "max_value": limits.max_side}),
            # grey (1), RGB (3) or RGBA (4) by default: a two-channel or CMYK file is a surprise worth stopping on
            Expectation("image_channels", "expect_column_values_to_be_in_set",
                        {"column": "channels", "value_set": list(limits.channels)}),
        ]

    def detail(self, row: Mapping[str, Any]) -> str | None:
        if any(row.get(key) is None for key in ("width", "height", "channels")):
            return None
        return f"{int(row['width'])}x{int(row['height'])} pixels, {int(row['channels'])} channel(s)"

    def augment(self, train: pd.DataFrame, held_out: list[pd.DataFrame], wanted: Mapping[str, int],
                params: AugmentParams, model: ModelParams, prepared_dir: Path, out_dir: Path) -> Augmented:
        from components.modalities.image.augment import augment

        hashes = set(pd.concat([frame["sha256"] for frame in held_out]).dropna()) if held_out else set()
        return Augmented(augment(train, hashes, wanted, self.settings.augment, params.seed, prepared_dir, out_dir))

    def build(self, labels: list[str], model: ModelParams) -> Built:
        from components.modalities.image.model import build_image_model

        return build_image_model(labels, model, self.settings.size)

    def dataset(self, built: Built, frame: pd.DataFrame, folder: Path, label_ids: dict[str, int],
                train_params: TrainParams) -> Any:
        from components.modalities.image.model import ImageRows

        return ImageRows(frame, folder, label_ids, self.settings.size, tuple(built.meta["image_mean"]),
                         tuple(built.meta["image_std"]))

    def collator(self, built: Built, train_params: TrainParams) -> tuple[Any, bool]:
        from transformers import default_data_collator

        return default_data_collator, False

    def head(self, built: Built) -> tuple[Any, Any]:
        from components.modalities.image.model import cacheable_head

        return cacheable_head(built.model)

    def features(self, built: Built, dataset: Any, batch_size: int, device: str,
                 cache_dir: Path | None) -> tuple[Any, bool]:
        from components.modalities.image.model import cached_features

        return cached_features(built.model.backbone, dataset, batch_size, device, cache_dir)

    def inputs(self, frame: pd.DataFrame, folder: Path) -> list[Any]:
        return [str(Path(folder) / image) for image in frame["image"]]

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> tuple[str, list[str]]:
        from components.modalities.image.model import thumbnail_baseline

        return "thumbnail logistic regression", thumbnail_baseline(
            [Path(folder) / image for image in train["image"]], train["label"].tolist(),
            [Path(folder) / image for image in test["image"]])

    def load_model(self, model_dir: Path, device: str = "auto") -> Any:
        from components.modalities.image.model import ImagePredictor

        return ImagePredictor.load(model_dir, device)

    def decode_request(self, item: Any) -> Any:
        """A base64 image decoded and checked as training checked its images: readable, within image.* limits."""
        from components.modalities.folders import decode_base64
        from components.modalities.image.files import inspect_image, limit_problem

        limits = self.settings
        data = decode_base64(item, limits.max_file_bytes, "image.max_file_bytes")
        info = inspect_image(data, max_pixels=limits.max_pixels)
        problem = info.problem or limit_problem(info, limits)
        if problem is not None:
            raise ValueError(problem)
        return data

    def warm_up_input(self, predictor: Any) -> Any:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (predictor.size, predictor.size)).save(buffer, format="PNG")
        return buffer.getvalue()


MODALITY = ImageModality
