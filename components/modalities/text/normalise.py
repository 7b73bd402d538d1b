"""Text normalisation shared by prepare (training data) and serving (requests), so both see the same strings, and
the key under which two texts count as the same (splits, duplicates, leakage)."""

from __future__ import annotations

import functools
import re
import string
import unicodedata

import pandas as pd

_WHITESPACE = re.compile(r"\s+")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


# Tabs and line breaks are control characters too, but ordinary layout: replaced like the rest, never counted.
_LAYOUT = frozenset("\t\n\r\v\f")


def _is_noise(char: str) -> bool:
    # Control (Cc) and format (Cf) characters such as \x85 or zero-width spaces carry no meaning for a classifier.
    return unicodedata.category(char) in ("Cc", "Cf")


def normalise_counting(text: str) -> tuple[str, int]:
    """normalise(text), and how many control or format characters (tabs and line breaks aside) it replaced.

    The count is what the prepare stage reports as noise (stray C1 codes such as \x85, zero-width spaces, BOMs).
    """
    text = unicodedata.normalize("NFC", text)
    replaced = 0
    # isprintable() is False for every Cc/Cf character, so most texts skip the per-character pass.
    if not text.isprintable():
        chars = []
        for char in text:
            if _is_noise(char):
                replaced += char not in _LAYOUT
                char = " "
            chars.append(char)
        text = "".join(chars)
    return _WHITESPACE.sub(" ", text).strip(), replaced


def normalise(text: str) -> str:
    """NFC-normalise, turn control characters into spaces, collapse whitespace, strip the ends."""
    return normalise_counting(text)[0]


def dedup_key(text: str) -> str:
    """The key under which two texts count as duplicates: case, whitespace and punctuation ignored."""
    return _WHITESPACE.sub(" ", normalise(text).lower().translate(_PUNCTUATION)).strip()


@functools.cache
def character_class(kind: str) -> str:
    """A regex character class of every control/format character, or every whitespace character, as Python sees it.

    Written so that both Python's `re` (object columns) and RE2 (pandas' pyarrow strings) read it the same way:
    ASCII as \\xNN escapes, everything else as literal characters, as ranges.
    """
    if kind == "control":
        wanted = lambda c: unicodedata.category(c) in ("Cc", "Cf")  # noqa: E731 - what normalise() replaces
    else:
        wanted = str.isspace
    ranges: list[list[int]] = []
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF or not wanted(chr(code)):
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])

    def literal(code: int) -> str:
        return f"\\x{code:02x}" if code < 0x80 else chr(code)

    return "[" + "".join(literal(a) if a == b else f"{literal(a)}-{literal(b)}" for a, b in ranges) + "]"


_ASCII_PRINTABLE = r"[\x20-\x7e]*"
_ASCII_PUNCTUATION = r"[\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]+"  # exactly string.punctuation


def dedup_keys(texts: pd.Series) -> pd.Series:
    """dedup_key of every text (null stays null), without a Python call per row where possible.

    For printable-ASCII texts (most English data) the key is computed with vectorised string operations that give
    exactly dedup_key's result: lower-case, drop string.punctuation, collapse spaces, strip. Any other text goes
    through dedup_key itself, so Unicode case, NFC and whitespace rules stay dedup_key's.
    """
    texts = texts.astype("str")
    simple = texts.str.fullmatch(_ASCII_PRINTABLE).fillna(False).astype(bool)
    fast = texts[simple].str.lower().str.replace(_ASCII_PUNCTUATION, "", regex=True)
    spaced = fast.str.contains("  ", regex=False).fillna(False).astype(bool)
    fast[spaced] = fast[spaced].str.replace(" {2,}", " ", regex=True)
    keys = pd.Series(pd.NA, index=texts.index, dtype="str")
    keys[simple] = fast.str.strip(" ")
    other = ~simple & texts.notna()
    if other.any():
        keys[other] = texts[other].map(dedup_key)
    return keys
