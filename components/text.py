"""Text normalisation shared by prepare (training data) and serving (requests), so both see the same strings."""

from __future__ import annotations

import re
import string
import unicodedata

_WHITESPACE = re.compile(r"\s+")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _is_noise(char: str) -> bool:
    # Control (Cc) and format (Cf) characters such as \x85 or zero-width spaces carry no meaning for a classifier.
    return unicodedata.category(char) in ("Cc", "Cf")


def normalise(text: str) -> str:
    """NFC-normalise, turn control characters into spaces, collapse whitespace, strip the ends."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if _is_noise(char) else char for char in text)
    return _WHITESPACE.sub(" ", text).strip()


def dedup_key(text: str) -> str:
    """The key under which two texts count as duplicates: case, whitespace and punctuation ignored."""
    return _WHITESPACE.sub(" ", normalise(text).lower().translate(_PUNCTUATION)).strip()
