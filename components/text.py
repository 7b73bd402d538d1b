"""Text normalisation shared by prepare (training data) and serving (requests), so both see the same strings."""

from __future__ import annotations

import re
import string
import unicodedata

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
