"""The model registry: which stored model is the champion (the one served), every promotion and rollback logged.

Models live in the BentoML model store (BENTOML_HOME); the champion pointer and its history live beside it, in
`$BENTOML_HOME/tuneline/<model name>.json`, so a store and its champion travel together and tests with a temporary
store get a temporary registry. Writes are atomic: a crash leaves the previous champion in place.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.stage import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredModel:
    """One model in the store, with the figures its package record carries."""

    tag: str
    created: str
    test_macro_f1: float | None
    decision: str | None
    base_model: str | None
    champion: bool


def registry_file(model_name: str) -> Path:
    """Where the champion pointer and history of `model_name` live."""
    home = os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")
    return Path(home) / "tuneline" / f"{model_name}.json"


def _read(model_name: str) -> dict[str, Any]:
    path = registry_file(model_name)
    if not path.is_file():
        return {"champion": None, "history": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _write(model_name: str, state: dict[str, Any]) -> None:
    path = registry_file(model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)


def champion(model_name: str) -> str | None:
    """The champion's tag, or None when nothing was promoted yet."""
    return _read(model_name)["champion"]


def history(model_name: str) -> list[dict[str, Any]]:
    """Every promotion and rollback, oldest first."""
    return list(_read(model_name)["history"])


def _stored_tag(tag: str) -> str:
    import bentoml

    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        raise StageError(f"no model {tag!r} in the BentoML store at {os.environ.get('BENTOML_HOME')}; "
                         "`tuneline models` lists the stored ones") from None


def set_champion(model_name: str, tag: str, event: str, reason: str) -> str | None:
    """Make `tag` the champion of `model_name`, log the event; return the previous champion."""
    tag = _stored_tag(tag)
    if not tag.startswith(f"{model_name}:"):
        raise StageError(f"{tag} is not a {model_name} model; package.model_name is {model_name!r}")
    state = _read(model_name)
    previous = state["champion"]
    state["champion"] = tag
    state["history"].append({"event": event, "tag": tag, "previous": previous, "reason": reason,
                             "at": datetime.now(UTC).isoformat(timespec="seconds"), "by": _user()})
    _write(model_name, state)
    log.info("%s: %s is the champion of %s (was %s): %s", event, tag, model_name, previous, reason)
    return previous


def rollback(model_name: str, tag: str | None = None) -> str:
    """Make an earlier model the champion again: `tag`, or the one the current champion replaced. Returns the tag."""
    state = _read(model_name)
    current = state["champion"]
    if tag is None:
        # The champion the current one replaced when it was promoted: rolling back twice steps back twice, rather
        # than bouncing between two models.
        earlier = [event["previous"] for event in reversed(state["history"])
                   if event["event"] == "promote" and event["tag"] == current and event["previous"]
                   and event["previous"] != current]
        if not earlier:
            raise StageError(f"{model_name} has no earlier champion to roll back to; name one: "
                             "`tuneline rollback TAG` (`tuneline models` lists them)")
        tag = earlier[0]
    set_champion(model_name, tag, "rollback", f"rolled back from {current}")
    return _stored_tag(tag)


def stored_models(model_name: str) -> list[StoredModel]:
    """Every stored `model_name` model, newest first, the champion marked."""
    import bentoml

    current = champion(model_name)
    models = []
    try:
        stored = bentoml.models.list(model_name)
    except bentoml.exceptions.NotFound:  # BentoML's answer when the store holds no model of that name
        return []
    for model in stored:
        metadata = model.info.metadata
        macro = metadata.get("test_macro") or {}
        models.append(StoredModel(
            tag=str(model.tag),
            created=model.info.creation_time.isoformat(timespec="seconds"),
            test_macro_f1=macro.get("f1"),
            decision=metadata.get("decision"),
            base_model=metadata.get("base_model"),
            champion=str(model.tag) == current,
        ))
    return sorted(models, key=lambda m: m.created, reverse=True)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return "unknown"
