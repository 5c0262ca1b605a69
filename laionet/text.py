"""Caption and lemma normalisation, one definition per matching mode, vectorised over Arrow arrays.

``paper``: every ASCII punctuation character becomes a space; nothing else changes (the reference rule).
``default``: Unicode NFKC, lower-case, and every run of characters that are not letters, digits or combining
marks becomes a word boundary. Lemmas go through exactly the same function as captions, so whatever a
lemma normalises to is what a caption must contain.
"""

from __future__ import annotations

import string
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

Mode = Literal["paper", "default"]
MODES: tuple[Mode, ...] = ("paper", "default")

# ASCII punctuation bytes never occur inside a multi-byte UTF-8 sequence, so translating raw UTF-8 bytes
# is exactly the reference's per-character replacement.
PAPER_BYTE_TABLE = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
_PAPER_STR_TABLE = str.maketrans(string.punctuation, " " * len(string.punctuation))
_NON_WORD = r"[^\p{L}\p{N}\p{M}]+"
# In the matcher's haystack, words are separated by two spaces so that a pattern ' w ' consumed by a
# non-overlapping search leaves the next word's leading space in place.
WORD_GAP = "  "


def paper_normalize(text: str) -> str:
    """The reference caption transform on one string: ASCII punctuation → space (no other change)."""
    return text.translate(_PAPER_STR_TABLE)


def default_normalize_array(texts: pa.Array, gap: str = " ") -> pa.Array:
    """Default-mode normalisation of a string array: NFKC, lower-case, non-word runs → ``gap``, stripped.

    Nulls stay null. With ``gap=WORD_GAP`` the result is the matcher's haystack form.
    """
    out = pc.utf8_normalize(texts, form="NFKC")
    out = pc.utf8_lower(out)
    out = pc.replace_substring_regex(out, pattern=_NON_WORD, replacement=" ")
    out = pc.utf8_trim_whitespace(out)
    if gap != " ":
        out = pc.replace_substring(out, pattern=" ", replacement=gap)
    return out


def default_normalize(text: str) -> str:
    """Default-mode normalisation of one string (words joined by single spaces)."""
    result = default_normalize_array(pa.array([text], type=pa.string()))[0].as_py()
    return str(result)
