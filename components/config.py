"""Typed, strict parsing of params.yaml: one model per block, every knob checked before any work starts."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.config_block import Block, Fraction, Probability
from components.config_errors import describe, merge_alternatives, moved
from components.config_schedule import ScheduleParams
from components.config_tune import Dimension, TuneParams

PARAMS_FILE = "params.yaml"
BUILTIN = "builtin"



class ConfigError(Exception):
    """params.yaml is missing, malformed, or holds a key or value Tuneline does not accept."""


class DataParams(Block):
    """Where the labelled data comes from and how it is split."""

    modality: str = "text"  # a registered modality (components/modalities): its block of params.yaml applies
    path: str = BUILTIN
    val_path: str | None = None  # the validation split as a file of its own (then path holds train and maybe test)
    test_path: str | None = None  # the test split as a file of its own: a fixed benchmark is scored on exactly it
    split_column: str | None = None  # a column of data.path saying each row's split (train / val / test)
    split_names: dict[str, Literal["train", "val", "test"]] = {}  # the file's own split names, e.g. {dev: val}
    label_column: str = "label"
    labels: list[str] | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    # random: stratified by label, reshuffled whenever rows are added; hash: each row's split follows from its item
    # and the seed alone, so adding rows never moves an old one. Files without the key keep random (their splits).
    split: Literal["random", "hash"] = "random"
    seed: int = 42
    max_rows: Annotated[int, Field(ge=10)] | None = None

    @property
    def is_builtin(self) -> bool:
        return self.path.strip() in ("", BUILTIN)

    @property
    def given_splits(self) -> dict[str, str]:
        """The splits given as files of their own (val_path, test_path): split name -> path."""
        return {name: path for name, path in (("val", self.val_path), ("test", self.test_path)) if path}

    @field_validator("modality")
    @classmethod
    def _registered_modality(cls, value: str) -> str:
        from components import modalities

        if value not in modalities.names():
            raise ValueError(f"unknown modality; the modalities are {modalities.names()}")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: object) -> object:
        # YAML reads `labels: [0, 1]` as ints; prepared labels are strings ("0", "1"), so compare them as strings.
        # Booleans (YAML's unquoted yes/no) stay as they are and fail with a message: "yes" or "True" is a guess.
        if not isinstance(value, list):
            return value
        return [str(int(v)) if isinstance(v, float) and v.is_integer() else
                str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError("must be one character such as ',', ';', '|' or \"\\t\" (tab, in double quotes), "
                             "or null to detect it")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown text encoding; use e.g. utf-8, cp1252, latin-1 or utf-16") from None
        return value

    @model_validator(mode="after")
    def _one_way_to_give_splits(self) -> DataParams:
        if self.split_column and self.given_splits:
            raise ValueError("data.split_column and data.val_path/test_path both say where rows go: use one")
        if self.split_column and self.is_builtin:
            raise ValueError("data.split_column names a column of data.path, which is builtin; point data.path at "
                             "your file or remove data.split_column")
        if self.split_names and not self.split_column:
            raise ValueError("data.split_names maps the values of data.split_column, which is not set")
        return self

    @model_validator(mode="after")
    def _fractions_leave_room_to_train(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 0.95:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves under 5% "
                "to train on; lower data.val_fraction or data.test_fraction"
            )
        return self


Severity = Literal["error", "warning", "off"]


class ValidateSeverity(BaseModel):
    """What each data check does when it fails: `error` stops the pipeline, `warning` reports and goes on, `off`
    skips the check. The keys are the check names printed in validate's messages and report: these, which hold for
    every modality, and those each modality adds (components/modalities: its `checks`), read as attributes too."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Severity]

    missing_columns: Severity = "error"
    empty_split: Severity = "error"
    null_label: Severity = "error"
    unknown_label: Severity = "error"
    min_per_class: Severity = "error"
    single_class: Severity = "error"
    leakage: Severity = "error"
    malformed_lines: Severity = "error"
    imbalance: Severity = "warning"
    exact_duplicates: Severity = "warning"
    normalised_duplicates: Severity = "warning"
    conflicting_labels: Severity = "warning"

    @model_validator(mode="before")
    @classmethod
    def _known_checks_and_yaml_off(cls, value: object) -> object:
        from components import modalities

        if value is None:
            value = {}
        if not isinstance(value, dict):
            return value
        added = modalities.severities()
        known = {*cls.model_fields, *added}
        unknown = sorted(str(key) for key in value if key not in known)
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; the checks are {sorted(known)}")
        # YAML 1.1 reads an unquoted `off` as false; that is what the user meant.
        given = {key: "off" if setting is False else setting for key, setting in value.items()}
        return {**added, **given}

    @classmethod
    def names(cls) -> list[str]:
        """Every check name: the general ones and every registered modality's."""
        from components import modalities

        return sorted({*cls.model_fields, *modalities.severities()})


class ValidateParams(Block):
    """Thresholds of the data checks, and the severity of each check (error stops the pipeline)."""

    min_per_class: Annotated[int, Field(ge=1)] = 2
    max_imbalance_ratio: Annotated[float, Field(ge=1.0)] = 10.0
    max_failed_rows_shown: Annotated[int, Field(ge=1, le=100)] = 5
    # a factory: building it asks the modality registry for their checks, which import this module
    severity: ValidateSeverity = Field(default_factory=ValidateSeverity)


Multiplier = Annotated[float, Field(ge=0.0, le=100.0)]


class AugmentParams(Block):
    """Label-preserving augmentation of the train split: how many copies of which rows. The perturbations that make
    them are the modality's (text.augment, image.augment)."""

    enabled: bool = True
    copies_per_example: Literal["auto"] | Multiplier = "auto"  # auto: train.recipe decides (components/recipe.py)
    per_class: dict[str, Multiplier] = {}
    balance: bool = False
    max_copies_per_example: Multiplier = 4.0
    seed: int = 13

    @field_validator("per_class", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: object) -> object:
        # YAML reads `1: 2.0` with an int key; prepared labels are strings ("1"), so compare them as strings.
        if isinstance(value, dict):
            return {str(int(k)) if isinstance(k, float) and k.is_integer() else str(k): v for k, v in value.items()}
        return {} if value is None else value

    @model_validator(mode="after")
    def _multipliers_under_the_cap(self) -> AugmentParams:
        given = {} if self.copies_per_example == "auto" else {"copies_per_example": self.copies_per_example}
        multipliers = {**given, **{f"per_class.{label}": m for label, m in self.per_class.items()}}
        over = {key: m for key, m in multipliers.items() if m > self.max_copies_per_example}
        if over:
            shown = ", ".join(f"{key} = {value:g}" for key, value in over.items())
            raise ValueError(f"{shown} above max_copies_per_example = {self.max_copies_per_example:g}; "
                             "lower it or raise augment.max_copies_per_example")
        return self


class HeadParams(Block):
    """The new classification head: one linear layer, or an MLP (hidden layers, activation, dropout) before it."""

    type: Literal["linear", "mlp"] = "linear"
    hidden_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = [1024]  # mlp only: width of each hidden layer
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"  # mlp only
    dropout: Probability = 0.1  # mlp only: after each hidden layer

    @model_validator(mode="after")
    def _mlp_has_layers(self) -> HeadParams:
        if self.type == "mlp" and not self.hidden_sizes:
            raise ValueError("head.type mlp needs at least one entry in head.hidden_sizes, e.g. [1024]")
        return self


class LoraParams(Block):
    """A LoRA adapter (peft) on the backbone's attention projections; merged into the weights for serving."""

    r: Annotated[int, Field(ge=1, le=1024)] = 8
    alpha: Annotated[float, Field(gt=0.0)] = 16.0
    dropout: Probability = 0.1
    target_modules: list[str] = ["query", "value"]

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one module to adapt, e.g. [query, value]")
        return value


class ModelParams(Block):
    """The pretrained backbone and the new classification head."""

    name_or_path: str = BUILTIN
    pretrained: bool = True  # images: false = the same architecture with random weights (what pretraining buys)
    candidates: list[str] = []  # several checkpoints: a linear probe ranks them on val macro-F1; the best trains
    classifier_dropout: Probability = 0.1
    head: HeadParams = HeadParams()
    freeze_embeddings: bool = False
    freeze_layers: Annotated[int, Field(ge=0)] = 0
    freeze_backbone: bool = False  # train only the head: a linear probe
    gradual_unfreeze: Annotated[int, Field(ge=0)] = 0  # start with the head only; unfreeze N more layers per epoch
    adapter: Literal["none", "lora"] = "none"
    lora: LoraParams = LoraParams()

    @property
    def is_builtin(self) -> bool:
        return self.name_or_path.strip() in ("", BUILTIN)

    @model_validator(mode="after")
    def _one_way_to_limit_training(self) -> ModelParams:
        if self.adapter == "lora" and (self.freeze_backbone or self.freeze_layers or self.freeze_embeddings
                                       or self.gradual_unfreeze):
            raise ValueError("adapter lora freezes the whole backbone and trains the adapter and head; set "
                             "freeze_embeddings/freeze_layers/freeze_backbone/gradual_unfreeze off, or adapter none")
        if self.freeze_backbone and self.gradual_unfreeze:
            raise ValueError("freeze_backbone keeps the backbone frozen, gradual_unfreeze thaws it: choose one")
        return self


class TrainParams(Block):
    """Fine-tuning hyperparameters (transformers Trainer, AdamW)."""

    # auto: the rule of components/recipe.py picks each `auto` key below from the train rows per class;
    # fixed: each `auto` key takes the one value it had before the rule (finetune, 3 epochs, 5e-5)
    recipe: Literal["auto", "fixed"] = "auto"
    method: Literal["auto", "finetune", "contrastive"] = "auto"  # contrastive (texts): SetFit's pairs, then the head
    learning_rate: Literal["auto"] | Annotated[float, Field(gt=0.0, le=1.0)] = "auto"
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    epochs: Literal["auto"] | Annotated[float, Field(gt=0.0, le=100.0)] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 16
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    head_learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    class_weights: Literal["none", "balanced"] | dict[str, Annotated[float, Field(gt=0.0)]] = "none"
    early_stopping_patience: Annotated[int, Field(ge=0)] = 2
    max_steps: Annotated[int, Field(ge=1)] | None = None
    max_train_samples: Annotated[int, Field(ge=2)] | None = None
    padding: Literal["dynamic", "max_length"] = "dynamic"  # dynamic = pad each batch to its longest text
    group_by_length: bool = True  # batches of similar length (less padding)
    feature_cache: bool = True  # frozen backbone: compute its outputs once per data version, train the head on them
    checkpoint_steps: Annotated[int, Field(ge=1)] | None = None  # evaluate + checkpoint every N steps, or each epoch
    resume: bool = True  # a killed run starts again from its last checkpoint
    num_processes: Annotated[int, Field(ge=1, le=256)] = 1  # >1 = data-parallel (DDP) processes
    launcher: Literal["torchrun", "accelerate"] = "torchrun"
    # past one machine: num_processes per node on `nnodes` nodes meeting at rdzv_endpoint (host:port on node 0);
    # node_rank (or the environment's TUNELINE_NODE_RANK) says which node this is; null = elastic c10d rendezvous
    nnodes: Annotated[int, Field(ge=1, le=1024)] = 1
    node_rank: Annotated[int, Field(ge=0)] | None = 0
    rdzv_endpoint: str | None = None
    logging_steps: Annotated[int, Field(ge=1)] = 25  # loss and learning rate logged (dvclive) every N steps
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # autocast while training (the weights stay fp32): auto = bf16 on a CUDA GPU that has it, else fp16 there; on the
    # CPU bf16 where it has native bf16 (AVX-512 BF16 or AMX), else fp32: README, Training speed
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    calibrate: bool = True  # fit a temperature on the val split after training; evaluate and serving apply it
    # rounds of pairs per train text: auto = 20 (SetFit's) up to 64 rows per class, fewer above (components/recipe.py)
    contrastive_pairs: Literal["auto"] | Annotated[int, Field(ge=1, le=1000)] = "auto"
    contrastive_epochs: Literal["auto"] | Annotated[float, Field(gt=0.0, le=100.0)] = "auto"  # passes over the pairs
    contrastive_learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-5
    contrastive_loss: Literal["auto", "cosent", "cosine"] = "auto"  # sentence-transformers' CoSENTLoss / SetFit's

    @property
    def world_size(self) -> int:
        """Training processes in all: num_processes on each of nnodes nodes."""
        return self.num_processes * self.nnodes

    @model_validator(mode="after")
    def _precision_fits_the_device(self) -> TrainParams:
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("train.precision fp16 needs a CUDA GPU, and train.device is cpu; set train.precision to "
                             "bf16 (CPUs with AVX-512 BF16 or AMX run it fastest) or fp32")
        return self

    @model_validator(mode="after")
    def _nodes_meet_somewhere(self) -> TrainParams:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"train.nnodes is {self.nnodes}, but train.rdzv_endpoint is not set; give node 0's "
                             "host:port (e.g. 10.0.0.1:29500), the same on every node")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"train.rdzv_endpoint {self.rdzv_endpoint!r} is not host:port; give node 0's "
                                 "address and a free port, e.g. 10.0.0.1:29500")
        if self.node_rank is not None and self.node_rank >= self.nnodes:
            raise ValueError(f"train.node_rank {self.node_rank} is not a node of train.nnodes {self.nnodes}; "
                             f"give 0 to {self.nnodes - 1} (or set TUNELINE_NODE_RANK on each node)")
        if self.nnodes > 1 and self.launcher == "accelerate" and self.node_rank is None:
            raise ValueError("train.launcher accelerate needs a train.node_rank on every node (no elastic "
                             "rendezvous); give one or use train.launcher: torchrun")
        return self


class EvaluateParams(Block):
    """The quality gate: floors a candidate must clear, and how it must compare with the champion."""

    min_macro_precision: Probability = 0.5
    min_macro_recall: Probability = 0.5
    min_macro_f1: Probability = 0.5
    min_class_recall: Probability = 0.0  # every class's recall must reach this
    min_margin_over_baseline: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.0
    max_prediction_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95  # collapse: one class takes this much
    val_loss_below_chance: bool = True  # collapse: the validation loss must end below a constant predictor's
    when_indistinguishable: Literal["promote", "keep"] = "keep"  # candidate vs champion within noise
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95  # of the bootstrap intervals
    bootstrap_resamples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    seed: int = 0
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32


class FastPathParams(Block):
    """A faster runtime exported at package time, served only if it passes the parity gate on the test split."""

    # auto: the modality's runtimes fastest first (texts: onnx-int8, torchscript-bf16, torch-bf16, onnx), the first
    # that passes the parity gate and beats PyTorch's speed on the test split is kept;
    # one name: only that one; none: serve PyTorch, export nothing.
    runtime: Literal["auto", "onnx-int8", "torchscript-bf16", "torch-bf16", "onnx", "none"] = "auto"
    min_agreement: Probability = 0.995  # share of test rows whose predicted label equals PyTorch's
    # how far its macro-F1 may fall below PyTorch's; a negative value demands it be higher by that much
    max_f1_drop: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.005


class PackageParams(Block):
    """How a model that passed the gate is stored in the BentoML model store."""

    model_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")] = "tuneline-text"
    fast_path: FastPathParams = FastPathParams()


class ServeParams(Block):
    """The HTTP service."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 3000
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_latency_ms: Annotated[int, Field(ge=1)] = 200
    max_texts_per_request: Annotated[int, Field(ge=1)] = 256
    max_text_chars: Annotated[int, Field(ge=1)] = 200_000
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4_000_000
    batching: bool = True
    runtime: Literal["auto", "pytorch"] = "auto"  # auto: the faster runtime package kept, if any; pytorch: never
    workers: Annotated[int, Field(ge=1, le=64)] = 1  # HTTP worker processes (single: each with its own model copy)
    layout: Literal["auto", "single", "split"] = "auto"  # split: API workers in front of one model process; auto:
    # split on a CUDA machine, single otherwise
    batch_gather: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    # forward passes at once per process holding the model, each on an equal share of its cores; auto: 2 on a CPU
    # where the process has 2 or more cores and the runtime's pass runs without the interpreter lock, else 1
    forward_passes: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = "auto"
    top_k: Annotated[int, Field(ge=1)] = 3
    access_log: bool = True

    @field_validator("host")
    @classmethod
    def _host_is_an_address(cls, host: str) -> str:
        # BentoML binds to an IP address and fails on a name with a message that names no key.
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                "must be an IP address: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
            ) from None
        return host


class MonitorParams(Block):
    """Watching the served model (components/monitor.py): what the service logs, and how `tuneline monitor` tests it."""

    log: bool = True  # the service logs each sampled request's rows (BentoML's monitoring API, JSON lines)
    sample: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0  # share of requests logged
    log_text: bool = False  # also log the text itself (off: served texts are the users' data)
    dir: str = "monitoring"  # where the rows go (relative = the server's working directory, the project root)
    window_hours: Annotated[float | None, Field(gt=0.0)] = 24.0  # served rows compared; null = every logged row
    min_rows: Annotated[int, Field(ge=1)] = 100  # fewer served rows in the window: no verdict
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01  # family-wise, split over the signals (Bonferroni)
    min_effect: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1  # KS statistic / total variation distance for drift
    report: str = "reports/monitor.html"
    verdict: str = "metrics/monitor.json"


class PathsParams(Block):
    """Every file the pipeline writes; dvc.yaml reads the same keys through ${paths.*}."""

    raw_dir: str = "data/raw"
    accepted: str = "data/raw/accepted"  # rows taken from incoming files (DVC-tracked; prepare appends them)
    incoming: str = "data/incoming"  # labelled files dropped here are taken by the next scheduled run
    quarantine: str = "data/quarantine"  # incoming files that failed validation, each with its report
    runs: str = "runs"  # one JSON record per scheduled run
    prepared: str = "data/prepared"
    validation: str = "reports/validation.json"
    validation_html: str = "reports/validation.html"
    augmented: str = "data/augmented"
    model: str = "models/candidate"
    train_metrics: str = "metrics/train.json"
    metrics: str = "metrics/test.json"
    verdict: str = "metrics/gate.json"
    predictions: str = "reports/predictions.csv"  # every test row: label, predicted, probability, text
    per_class: str = "reports/per_class.csv"
    reliability: str = "reports/reliability.csv"  # the reliability diagram of the probabilities served
    reliability_uncalibrated: str = "reports/reliability_uncalibrated.csv"  # and before temperature scaling
    evaluation_report: str = "reports/evaluation.md"
    packaged: str = "models/packaged.json"
    train_live: str = "metrics/train"  # dvclive: loss, learning rate and validation metrics per step
    model_selection: str = "metrics/model_selection.json"
    work_dir: str = ".tuneline"  # checkpoints of unfinished runs and the frozen-feature cache (not versioned)
    tune: str = "metrics/tune.json"  # `tuneline tune`: the best trial, and how many ran, were pruned, failed
    tune_trials: str = "reports/tune_trials.csv"  # every trial: its params, val macro-F1 per evaluation, state
    tune_report: str = "reports/tune.md"
    scratch: str = "metrics/scratch.json"  # images: `tuneline scratch`, the model against the same network untrained


class Params(Block):
    """The whole of params.yaml: one block per stage, and one per modality (text, image, ...), named after it."""

    data: DataParams = DataParams()
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    package: PackageParams = PackageParams()
    serve: ServeParams = ServeParams()
    schedule: ScheduleParams = ScheduleParams()
    monitor: MonitorParams = MonitorParams()
    tune: TuneParams = TuneParams()
    paths: PathsParams = PathsParams()

    # The modality blocks are extra keys, each checked by its modality's own model (components/modalities).
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @property
    def validate_params(self) -> ValidateParams:
        return self.validate_

    def settings(self, modality: str) -> BaseModel:
        """The block of params.yaml named after `modality` (its defaults when the file has none)."""
        return (self.__pydantic_extra__ or {})[modality]

    @model_validator(mode="before")
    @classmethod
    def _modality_blocks(cls, raw: object) -> object:
        # Every registered modality gets its block, checked by its own model; any other unknown key is an error.
        if not isinstance(raw, dict):
            return raw
        from components import modalities

        known = {*cls.model_fields, "validate"}
        unknown = sorted(str(key) for key in raw if key not in known and key not in modalities.names())
        if unknown:
            raise ValueError(f"unknown block(s) {unknown}; the blocks are {sorted(known - {'validate_'})} and one per "
                             f"modality {modalities.names()}")
        blocks = {name: modalities.get(name).settings_type.model_validate(raw.get(name) or {})
                  for name in modalities.names()}
        return {**raw, **blocks}

    @model_validator(mode="after")
    def _accepted_inside_raw_dir(self) -> Params:
        # dvc.yaml's prepare stage watches paths.raw_dir; accepted rows outside it would change no data version.
        if not Path(self.paths.accepted).is_relative_to(Path(self.paths.raw_dir)):
            raise ValueError(f"paths.accepted ({self.paths.accepted}) must lie inside paths.raw_dir "
                             f"({self.paths.raw_dir}), the folder dvc.yaml's prepare stage watches")
        return self


def _modality_errors(raw: dict) -> tuple[dict, list[dict]]:
    """raw with each modality block replaced by its checked model, and the errors of those that failed (their
    locations prefixed with the block's name) and of unknown blocks."""
    from components import modalities

    checked, errors = dict(raw), []
    for key in [key for key in raw if key not in {*Params.model_fields, "validate", *modalities.names()}]:
        errors.append({"type": "extra_forbidden", "loc": (key,), "msg": "unknown block", "input": raw[key]})
        checked.pop(key)
    for name in modalities.names():
        if name not in raw:
            continue
        try:
            checked[name] = modalities.get(name).settings_type.model_validate(raw[name] or {})
        except ValidationError as exc:
            errors += [{**error, "loc": (name, *error["loc"])} for error in exc.errors()]
            checked.pop(name)
    return checked, errors


def parse_params(raw: object, source: str = PARAMS_FILE) -> Params:
    """Turn a parsed YAML document into Params, or raise ConfigError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of blocks (data, train, ...), got {type(raw).__name__}")
    raw, errors = moved(raw)
    checked, invalid = _modality_errors(raw)
    errors += invalid
    try:
        params = Params.model_validate(checked)
    except ValidationError as exc:
        errors = [*errors, *exc.errors()]
    errors = merge_alternatives(errors)
    if errors:
        lines = "\n  ".join(describe(err) for err in errors)
        raise ConfigError(f"{source} has {len(errors)} invalid setting(s):\n  {lines}") from None
    return params


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and check params.yaml.

    Args:
        path: the params file; relative paths resolve against the working directory, as DVC runs stages.

    Returns:
        The typed parameters.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds unknown keys or bad values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run from the project root, where params.yaml lives") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))
