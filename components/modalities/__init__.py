"""Modalities: what differs between texts, images (and the next kind of data) lives behind one interface, so that
every stage, flow and handler is written once.

A modality is a package under components/modalities/ whose module defines a `Modality` subclass, plus one line in
BUILTIN below (or a call to `register` for one defined elsewhere, as the tests do). The stages ask this registry:
- `for_params(params)`: the modality params.yaml asks for (data.modality), with its own block of params.yaml;
- `for_prepared(folder, params)`: the modality prepare wrote into the prepared data's summary.json;
- `for_model(folder, params)`: the modality written into a model folder's tuneline.json.
The first is read only by prepare; every later stage reads what the data or the model says it holds.

The interface carries what differs and nothing else. Importing this module imports no modality: the built-in ones
load when first asked for, so `--help` stays fast and config.py can ask for their settings without a cycle.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from components.io import META_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    import pandas as pd
    from pydantic import BaseModel

    from components.config import AugmentParams, DataParams, ModelParams, Params, TrainParams
    from components.engine import CandidateScore, ThawPlan
    from components.predict import Predictor

# Models trained before the modality was written into tuneline.json and prepared data without it held texts.
UNRECORDED = "text"
GIVEN_SPLIT = "given_split"  # a Loaded frame's column with each row's split as data.split_column gave it (raw value)


@dataclass(frozen=True)
class Malformed:
    """A source record that could not be read, and why; `line` is its line in the file (its row in Parquet)."""

    line: int
    problem: str


@dataclass(frozen=True)
class Loaded:
    """What reading a source gave: one row per record with label, source_row, line and the modality's columns (a
    `noise` column, when present, counts the characters cleaning replaced per row), the source's name and format,
    how many records were read, and those that could not be."""

    frame: pd.DataFrame
    source: str
    format: str
    rows_read: int
    malformed: list[Malformed] = field(default_factory=list)


@dataclass(frozen=True)
class Expectation:
    """One Great Expectations expectation of a split, tagged with its check name (its key in validate.severity).

    `type` is GX's snake-case name (expect_column_values_to_not_be_null), `kwargs` its arguments.
    """

    check: str
    type: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")


@dataclass
class Built:
    """A classifier ready to train: the module (freezing applied), what it adds to tuneline.json, how it is saved.

    `save(trainer, folder)` writes the trained weights (and tokenizer or processor) into folder; the train stage
    writes tuneline.json beside them. `thaw` is the gradual-unfreezing plan when model.gradual_unfreeze asks for one.
    `unit` names what a dataset's size() counts (tokens, pixels). `source` is what the weights came from (a path),
    part of the run's fingerprint.
    """

    model: Any
    meta: dict[str, Any]
    save: Callable[[Any, Path], None]
    source: str
    unit: str
    thaw: ThawPlan | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Augmented:
    """The train split (augmented = False) followed by its perturbed copies (augmented = True), and figures the
    modality adds to augment's summary.json (e.g. synonym_words)."""

    frame: pd.DataFrame
    details: dict[str, Any] = field(default_factory=dict)


class Modality(ABC):
    """One kind of data (texts, images, ...): everything the stages need that differs from one kind to another.

    An instance carries its block of params.yaml (`settings`, of type `settings_type`), the block named after it.
    """

    name: ClassVar[str]  # data.modality, and "modality" in summary.json and tuneline.json
    item: ClassVar[str]  # what one row holds, for messages and check names: "text", "image"
    items: ClassVar[str]  # the same, plural: "texts", "images"
    column: ClassVar[str]  # the split column holding each row's item (the text, the image's file)
    columns: ClassVar[tuple[str, ...]]  # every column its splits must carry (validate's missing_columns)
    details: ClassVar[tuple[str, ...]] = ()  # columns a validation message shows beside a row (width, problem)
    checks: ClassVar[Mapping[str, str]] = {}  # the validate.severity keys it adds, with their default severity
    settings_type: ClassVar[type[BaseModel]]  # its block of params.yaml
    incoming_columns: ClassVar[tuple[str, ...]] = ()  # what scheduled runs keep of an incoming row; () = none taken
    contrastive: ClassVar[bool] = False  # whether tune_contrastively works (train.method auto may then choose it)
    route: ClassVar[str]  # the HTTP route that classifies it
    fast_runtimes: ClassVar[tuple[str, ...]] = ()  # faster runtimes a trained model exports to, fastest first
    request_example: ClassVar[str]  # the body that route takes, for messages

    def __init__(self, settings: BaseModel | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_type()

    @property
    def source_column(self) -> str:
        """The item column of a table source: its block's `column` (text.column, image.column), else `column`."""
        return getattr(self.settings, "column", self.column)

    # -- every stage

    def check_options(self, params: Params) -> None:
        """Refuse, with a StageError naming the key, what params asks for that this modality cannot do."""

    # -- prepare

    @abstractmethod
    def read(self, data: DataParams, work: Path) -> Loaded:
        """The rows of data.path (or the built-in data set); `work` is a scratch folder that is deleted after."""

    @abstractmethod
    def read_table(self, path: Path, columns: tuple[str, str], data: DataParams, name: str) -> Loaded:
        """The rows of one table file whose `columns` are (item, label): incoming and accepted files."""

    @abstractmethod
    def item_key(self, frame: pd.DataFrame) -> pd.Series:
        """What makes two rows the same item (splits, duplicates, leakage); NA or "" for a row that has none."""

    def split_key(self, frame: pd.DataFrame) -> pd.Series:
        """What decides a row's split: rows sharing it share a split. By default the item key; a source whose rows
        come in groups that must not straddle splits (one prompt recorded in five languages) returns the group."""
        return self.item_key(frame)

    def store(self, frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
        """Copy what a split's rows point at into the prepared folder (image files) and return the rows as the split
        keeps them; texts live in the rows."""
        return frame

    def incoming_rows(self, frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
        """The new rows of an incoming file as the accepted table keeps them (incoming_columns). Files they point at
        are copied into `folder`, which sits beside that table; their paths are written relative to the table."""
        return frame[list(self.incoming_columns)].reset_index(drop=True)

    def summary(self, frame: pd.DataFrame) -> dict[str, Any]:
        """What prepare's summary.json adds for this modality (e.g. unusable_images)."""
        return {}

    # -- validate

    def identity(self, frame: pd.DataFrame) -> pd.Series:
        """What two rows share when they are exact duplicates (NA: not compared); by default the item key."""
        return self.item_key(frame)

    def validation_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A split with the columns its expectations read (e.g. an image's short and long side) added."""
        return frame

    @abstractmethod
    def expectations(self, labels: list[str]) -> list[Expectation]:
        """The expectations of its own checks, every split, in report order (those switched off included)."""

    def detail(self, row: Mapping[str, Any]) -> str | None:
        """How a row failing one of its own checks reads after its place (e.g. '3x20 pixels, 1 channel(s)')."""
        return None

    # -- augment

    @abstractmethod
    def augment(self, train: pd.DataFrame, held_out: list[pd.DataFrame], wanted: Mapping[str, int],
                params: AugmentParams, model: ModelParams, prepared_dir: Path, out_dir: Path) -> Augmented:
        """`wanted[label]` perturbed copies of that label's train rows, never equal to a held-out item; files they
        need go into out_dir."""

    # -- train

    def rank_candidates(self, model: ModelParams, train_params: TrainParams, train: pd.DataFrame,
                        val: pd.DataFrame, labels: list[str], device: str,
                        cache_dir: Path | None) -> list[CandidateScore]:
        """model.candidates ranked best first (check_options refuses candidates where this is not overridden)."""
        return []

    @abstractmethod
    def build(self, labels: list[str], model: ModelParams) -> Built:
        """The pretrained backbone with a new head for `labels`, frozen as model.* asks."""

    @abstractmethod
    def dataset(self, built: Built, frame: pd.DataFrame, folder: Path, label_ids: dict[str, int],
                train_params: TrainParams) -> Any:
        """A split as the Trainer's dataset: items of model inputs with `labels`, and size() in built.unit."""

    @abstractmethod
    def collator(self, built: Built, train_params: TrainParams) -> tuple[Any, bool]:
        """The Trainer's data collator, and whether batches may be grouped by length."""

    def tune_contrastively(self, built: Built, train: pd.DataFrame, train_params: TrainParams,
                           device: str) -> dict[str, Any]:
        """train.method contrastive: tune built.model's backbone in place on pairs of train items of the same and of
        other labels; returns figures for the train summary. Only where `contrastive` is True (check_options refuses
        train.method contrastive elsewhere)."""
        raise NotImplementedError(f"train.method contrastive is for texts so far; set train.method to finetune for "
                                  f"{self.items}")

    def head(self, built: Built) -> tuple[Any, Any]:
        """(dropout, head): the modules fed by one frozen-backbone vector per item; NotCacheable when there are none."""
        from components.features import NotCacheable

        raise NotCacheable(f"{self.name} models have no frozen-feature cache")

    def features(self, built: Built, dataset: Any, batch_size: int, device: str,
                 cache_dir: Path | None) -> tuple[Any, bool]:
        """The frozen backbone's vector per item of `dataset` (cached by weights and data); (vectors, was_cached)."""
        from components.features import NotCacheable

        raise NotCacheable(f"{self.name} models have no frozen-feature cache")

    # -- evaluate and serve

    @abstractmethod
    def inputs(self, frame: pd.DataFrame, folder: Path) -> list[Any]:
        """What a predictor takes for each row of a split (the text; the image file's path)."""

    @abstractmethod
    def baseline(self, train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> tuple[str, list[str]]:
        """(its name, its test predictions): the simple model the gate asks the candidate to beat."""

    @abstractmethod
    def load_model(self, model_dir: Path, device: str = "auto") -> Predictor:
        """A trained model folder ready to predict, its probabilities as the network gives them."""

    def load_predictor(self, model_dir: Path, device: str = "auto") -> Predictor:
        """A trained model folder ready to predict, with the temperature training fitted (tuneline.json)."""
        from components.predict import Calibrated, read_meta

        return Calibrated(self.load_model(model_dir, device), read_meta(model_dir).get("temperature", 1.0))

    def export_fast(self, model_dir: Path, out_dir: Path, runtime: str) -> dict[str, Any]:
        """Write model_dir's network for `runtime` (one of fast_runtimes) into out_dir; {"file": its name in
        out_dir (None when it needs none), "seconds": what it took, "megabytes": its size}. Raises components.fastpath.ExportError when the
        export fails (the package stage then tries the next runtime, or keeps PyTorch)."""
        raise NotImplementedError(f"{self.items} have no faster runtime")

    def load_fast(self, model_dir: Path, file: Path | None, runtime: str) -> Predictor:
        """model_dir's predictor with its forward pass run by `runtime` on the exported `file` (None for a runtime
        whose export wrote no file); probabilities as the network gives them (the caller applies the temperature)."""
        raise NotImplementedError(f"{self.items} have no faster runtime")

    @abstractmethod
    def decode_request(self, item: Any) -> Any:
        """One item of an HTTP request as the predictor's input; ValueError says what is wrong with it."""

    @abstractmethod
    def warm_up_input(self, predictor: Predictor) -> Any:
        """An input for the server's first forward pass, before it reports ready."""

    def signals(self, items: list[Any], predictor: Predictor) -> dict[str, list[float]]:
        """Numbers per input that monitoring compares between served and training data (components/monitor.py).

        `items` are what `inputs` gives for a split's rows or `decode_request` for a request's; none by default
        (the predicted labels and confidences are monitored for every modality).
        """
        return {}


# name -> the module that defines it (imported when first asked for); `register` adds more.
BUILTIN = {
    "text": "components.modalities.text",
    "image": "components.modalities.image",
    "audio": "components.modalities.audio",
}
_registered: dict[str, type[Modality]] = {}


def register(modality: type[Modality]) -> type[Modality]:
    """Make a Modality subclass available under its name (usable as a class decorator)."""
    _registered[modality.name] = modality
    return modality


def unregister(name: str) -> None:
    """Forget a modality added with `register` (the built-in ones stay)."""
    _registered.pop(name, None)


def names() -> list[str]:
    """Every modality data.modality may name, sorted."""
    return sorted({*BUILTIN, *_registered})


def get(name: str) -> type[Modality]:
    """The Modality class registered under `name`.

    Raises:
        KeyError: no modality has that name (the message lists those that do).
    """
    if name not in _registered and name in BUILTIN:
        module = importlib.import_module(BUILTIN[name])
        _registered[name] = module.MODALITY
    if name not in _registered:
        raise KeyError(f"no modality {name!r}; the modalities are {names()}")
    return _registered[name]


def _bound(name: str, params: Params | None) -> Modality:
    modality = get(name)
    return modality(params.settings(name) if params is not None else None)


def for_params(params: Params) -> Modality:
    """The modality params.yaml asks for (data.modality), with its block of params.yaml."""
    return _bound(params.data.modality, params)


def recorded(folder: str | Path, file: str) -> str | None:
    """The "modality" a summary.json or tuneline.json in folder records: None without the file."""
    path = Path(folder) / file
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("modality") or UNRECORDED


def for_prepared(folder: str | Path, params: Params | None = None) -> Modality:
    """The modality prepare wrote into `folder`'s summary.json, with params' block for it (defaults without)."""
    return _bound(recorded(folder, SUMMARY_FILE) or UNRECORDED, params)


def for_model(folder: str | Path, params: Params | None = None) -> Modality:
    """The modality a model folder's tuneline.json records, with params' block for it (defaults without)."""
    name = recorded(folder, META_FILE)
    if name is None:
        raise FileNotFoundError(f"{Path(folder) / META_FILE} not found: {folder} is not a model folder written by "
                                "the train stage")
    return _bound(name, params)


def load_predictor(model_dir: str | Path, device: str = "auto") -> Predictor:
    """A trained model folder of any modality ready to predict."""
    return for_model(model_dir).load_predictor(Path(model_dir), device)


def severities() -> dict[str, str]:
    """Every registered modality's checks with their default severity (the validate.severity keys they add)."""
    out: dict[str, str] = {}
    for name in names():
        out.update(get(name).checks)
    return out
