"""How params.yaml's mistakes are told: the keys that moved, and one line per bad key naming what is allowed."""

from __future__ import annotations

# Keys that moved into a modality's block (issue 16); an old params.yaml gets told where each went.
MOVED = {
    "data.text_column": "text.column",
    "data.image_column": "image.column",
    "validate.min_text_length": "text.min_chars",
    "validate.max_text_length": "text.max_chars",
    "model.max_length": "text.max_tokens",
    "augment.image": "image.augment",
    **{f"augment.{key}": f"text.augment.{key}" for key in (
        "p_synonym", "p_insert", "p_swap", "p_delete", "p_char", "synonym_top_k", "synonym_min_similarity",
        "synonym_max_label_shift")},
}


def moved(raw: dict) -> tuple[dict, list[dict]]:
    """raw without the keys that now live elsewhere, and one error per such key naming where it went."""
    kept, errors = dict(raw), []
    for old, new in MOVED.items():
        block, key = old.split(".", 1)
        if isinstance(kept.get(block), dict) and key in kept[block]:
            kept[block] = {k: v for k, v in kept[block].items() if k != key}
            errors.append({"type": "moved", "loc": (block, key), "msg": f"moved to {new}; move the setting there",
                           "input": {}})
    return kept, errors


def _is_branch(part: object) -> bool:
    """A location part pydantic adds for one alternative of a union (literal['auto'], constrained-float, ...)."""
    return isinstance(part, str) and (not part.isidentifier() or part in {"float", "int", "str", "bool", "none"})


def merge_alternatives(errors: list[dict]) -> list[dict]:
    """One error per key: a value that fits no alternative of a union (train.epochs: auto or a number) gets one
    line naming every alternative, not one line per alternative."""
    merged: dict[tuple, dict] = {}
    for error in errors:
        loc = tuple(error["loc"])
        cut = next((i for i, part in enumerate(loc) if _is_branch(part)), len(loc))
        key = loc[:cut]
        if key in merged and cut < len(loc):
            if error["msg"] not in merged[key]["msg"]:
                merged[key] = {**merged[key], "msg": f"{merged[key]['msg']}; or: {error['msg']}"}
        else:
            merged[key if cut < len(loc) else loc + (id(error),)] = {**error, "loc": key}
    return list(merged.values())


def describe(error: dict) -> str:
    """One line per pydantic error: the dotted key, what was wrong, and what is allowed."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; remove it or check its spelling against params.yaml's documented keys"
    given = error.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{key}: {error['msg']}{shown}"
