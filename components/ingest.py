"""Take the labelled files dropped into paths.incoming: validate each alone, keep the new rows of the good ones, set
the bad ones aside with their report.

A file is read as prepare reads data.path (CSV/TSV, JSON Lines or Parquet, the modality's column and
data.label_column) and checked by validate's own Great Expectations suite and duplicate checks, at
validate.severity's severities. The checks that judge a whole data set (class counts, imbalance, leakage between
splits) wait for the validate stage. Only a modality that keeps incoming rows (its incoming_columns: texts and audio
do) takes files; for the others they stay where they are, and the run says so.

- A good file: its rows whose item (by the modality's item_key) is not in the data set yet are written to
  paths.accepted/<UTC time>-<n>-<name>.parquet, where prepare appends them; the file itself moves to
  paths.incoming/.taken/.
- A bad file (unreadable, or an error check failed): it moves to paths.quarantine/<UTC time>-<name>, beside
  <that name>.report.json (the reason and the full validation report) and .report.html. The data set stays as it
  was, and the next file is still taken.

Files whose name starts with "." or ends with .part, .tmp or .partial are left alone: write a file under such a name
and rename it when complete, so that no run takes half a file. Audio comes as a folder with one sub-folder per class
(the same rule applies to the folder's name); its new clips are copied beside the accepted table, which lists them.
"""

from __future__ import annotations

import datetime
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Params
from components.io import LABELS_FILE, read_json, write_json, write_text
from components.modalities import Modality
from components.prepare import NOISE, accepted_files, summarise
from components.stage import StageError

log = logging.getLogger(__name__)

TAKEN_DIR = ".taken"  # inside paths.incoming: files already taken, kept for reference
IN_PROGRESS = (".part", ".tmp", ".partial")
# Checks that judge a whole data set, not one file: the validate stage runs them on the merged splits.
DATA_SET_CHECKS = ("leakage", "min_per_class", "single_class", "imbalance")


@dataclass(frozen=True)
class Taken:
    """A good incoming file: its rows, how many were new, and where they were written (None when none were)."""

    file: str
    rows: int
    new_rows: int
    duplicates: int
    written: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Quarantined:
    """A bad incoming file: where it went, its report, and why."""

    file: str
    moved_to: str
    report: str
    reason: str


@dataclass(frozen=True)
class IngestResult:
    """What one pass over paths.incoming did."""

    taken: list[Taken]
    quarantined: list[Quarantined]

    @property
    def new_rows(self) -> int:
        return sum(item.new_rows for item in self.taken)

    def to_json(self) -> dict[str, Any]:
        return {"taken": [vars(item) for item in self.taken],
                "quarantined": [vars(item) for item in self.quarantined], "new_rows": self.new_rows}


def incoming_files(folder: str | Path) -> list[Path]:
    """The complete files (and folders: a folder per class of audio files) waiting in `folder`, by name; hidden
    and in-progress names excluded."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if (path.is_file() or path.is_dir()) and not path.name.startswith(".")
                  and not path.name.endswith(IN_PROGRESS))


def current_labels(params: Params) -> list[str] | None:
    """The labels an incoming row may carry: data.labels, else the prepared data's labels.json, else None (any)."""
    if params.data.labels:
        return list(params.data.labels)
    labels_file = Path(params.paths.prepared) / LABELS_FILE
    return list(read_json(labels_file)) if labels_file.is_file() else None


def known_keys(params: Params, modality: Modality) -> set[str]:
    """The item keys of every row in the data set now: the source (all of it) and the accepted files."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tuneline-ingest-") as work:
        frames = [modality.read(params.data, Path(work)).frame]
    frames += [modality.read_table(path, modality.incoming_columns, params.data, f"accepted file {str(path)!r}").frame
               for path in accepted_files(params.paths.accepted)]
    return set(modality.item_key(pd.concat(frames, ignore_index=True)).dropna())


def check_file(path: Path, params: Params, labels: list[str] | None, modality: Modality) -> tuple[pd.DataFrame, Any]:
    """Read one incoming file and validate it alone.

    Returns:
        The rows (the modality's columns, label, source_row, line; cleaned as prepare cleans them) and validate's
        ValidateResult.

    Raises:
        StageError: the file cannot be read at all (its message names the file, the problem and the fix).
    """
    from components.validate import validate

    loaded = modality.read_table(path, (modality.source_column, params.data.label_column), params.data,
                                 f"incoming file {path.name!r}")
    frame = loaded.frame
    summary = summarise(loaded, frame, modality)
    frame = frame.drop(columns=NOISE, errors="ignore")
    severity = params.validate_params.severity.model_copy(update=dict.fromkeys(DATA_SET_CHECKS, "off"))
    checks = params.validate_params.model_copy(update={"severity": severity})
    found = sorted(frame["label"].dropna().unique().tolist())
    return frame, validate({"incoming": frame}, labels if labels is not None else found, checks, modality, summary)


def _stamp(now: datetime.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S%fZ")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "file"


def quarantine(path: Path, folder: Path, stamp: str, reason: str, report: dict[str, Any] | None) -> Quarantined:
    """Move `path` into `folder` beside a JSON (and, with a validation report, HTML) report saying why."""
    from components.validation_report import render_html

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stamp}-{_safe(path.name)}"
    report_path = target.with_name(target.name + ".report.json")
    write_json(report_path, {"file": path.name, "quarantined": stamp, "reason": reason, "validation": report,
                             "fix": "correct the file and drop it into the incoming folder again"})
    if report is not None:
        write_text(target.with_name(target.name + ".report.html"), render_html(report))
    shutil.move(path, target)
    log.warning("quarantined %s: %s (report: %s)", path.name, reason, report_path)
    return Quarantined(file=path.name, moved_to=str(target), report=str(report_path), reason=reason)


def ingest(params: Params, now: datetime.datetime | None = None) -> IngestResult:
    """Take every complete file in paths.incoming, oldest name first; paths are relative to the project root (cwd).

    Returns:
        The files taken (with their new-row counts) and the files quarantined (with their reasons).
    """
    from components import modalities

    now = now or datetime.datetime.now(datetime.UTC)
    files = incoming_files(params.paths.incoming)
    modality = modalities.for_params(params)
    if files and not modality.incoming_columns:
        log.warning("%d file(s) wait in %s, but %s data takes no incoming files yet; they stay there",
                    len(files), params.paths.incoming, modality.name)
        return IngestResult(taken=[], quarantined=[])
    if not files:
        return IngestResult(taken=[], quarantined=[])
    labels = current_labels(params)
    keys = known_keys(params, modality)
    accepted, taken_dir = Path(params.paths.accepted), Path(params.paths.incoming) / TAKEN_DIR
    taken: list[Taken] = []
    quarantined: list[Quarantined] = []
    for index, path in enumerate(files):
        stamp = f"{_stamp(now)}-{index:03d}"
        try:
            frame, result = check_file(path, params, labels, modality)
        except StageError as exc:
            quarantined.append(quarantine(path, Path(params.paths.quarantine), stamp, str(exc), None))
            continue
        if not result.success:
            reason = f"failed {len(result.failures)} validation check(s): " + "; ".join(result.failures)
            quarantined.append(quarantine(path, Path(params.paths.quarantine), stamp, reason, result.report))
            continue
        file_keys = modality.item_key(frame)
        new = ~file_keys.isin(keys) & ~file_keys.duplicated() & file_keys.notna()
        written = None
        if new.any():
            accepted.mkdir(parents=True, exist_ok=True)
            target = accepted / f"{stamp}-{_safe(Path(path.name).stem)}.parquet"
            partial = target.with_name(f".{target.name}.partial")
            kept = modality.incoming_rows(frame.loc[new], target.with_suffix(""))  # files it points at go beside
            kept.to_parquet(partial, index=False)
            partial.replace(target)
            keys.update(file_keys[new])
            written = str(target)
        taken_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(path, taken_dir / f"{stamp}-{_safe(path.name)}")
        item = Taken(file=path.name, rows=len(frame), new_rows=int(new.sum()), duplicates=int((~new).sum()),
                     written=written, warnings=list(result.warnings))
        log.info("took %s: %d row(s), %d new, %d already in the data set or repeated%s", path.name, item.rows,
                 item.new_rows, item.duplicates, f" -> {written}" if written else "")
        taken.append(item)
    return IngestResult(taken=taken, quarantined=quarantined)


def track(accepted_dir: str | Path) -> None:
    """`dvc add` the accepted rows' folder (from the project root), so each version of it is in the DVC cache."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        repo.add(str(accepted_dir))
