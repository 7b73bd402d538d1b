"""The `image` block of params.yaml: where the image paths are, what an image file may be, the size the model sees,
and the perturbations that make augmented copies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from components.config import Block, Probability


class ImageAugmentParams(Block):
    """Perturbations of train images, each drawn with its probability (kornia)."""

    p_flip: Probability = 0.0  # mirror left-right: 0.5 suits photos; a mirrored digit or letter changes meaning
    p_crop: Probability = 0.5  # crop a random part (crop_scale of the area) and resize it back
    crop_scale: Annotated[list[Annotated[float, Field(gt=0.0, le=1.0)]], Field(min_length=2, max_length=2)] = [
        0.8, 1.0]
    p_rotate: Probability = 0.3
    max_degrees: Annotated[float, Field(ge=0.0, le=180.0)] = 10.0
    p_color: Probability = 0.3  # brightness, contrast and saturation jitter
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    saturation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2

    @model_validator(mode="after")
    def _scale_in_order(self) -> ImageAugmentParams:
        if self.crop_scale[0] > self.crop_scale[1]:
            raise ValueError(f"image.augment.crop_scale {self.crop_scale} must be [smaller, larger]")
        return self


class ImageParams(Block):
    """Image data (data.modality: image): what an image file may be, and the size the model sees."""

    column: str = "image"  # a table source's column of image paths, relative to the table file
    size: Annotated[int, Field(ge=8, le=1024)] = 64  # pixels per side the model sees (EfficientNet-Lite0: 224)
    min_side: Annotated[int, Field(ge=1)] = 8  # a smaller width or height is refused
    max_side: Annotated[int, Field(ge=1)] = 8192
    max_pixels: Annotated[int, Field(ge=1)] = 40_000_000  # width x height; larger files are refused undecoded
    max_file_bytes: Annotated[int, Field(ge=1)] = 50_000_000
    channels: list[Literal[1, 2, 3, 4]] = [1, 3, 4]  # grey, RGB, RGBA (the alpha channel is dropped for the model)
    augment: ImageAugmentParams = ImageAugmentParams()

    @model_validator(mode="after")
    def _sides_in_order(self) -> ImageParams:
        if self.min_side > self.max_side:
            raise ValueError(f"image.min_side ({self.min_side}) is above image.max_side ({self.max_side})")
        return self
