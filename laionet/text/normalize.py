"""Caption and lemma normalisation, one definition per matching mode, vectorised over Arrow arrays.

``paper``: every ASCII punctuation character becomes a space; nothing else changes (the reference rule).
``default``: Unicode NFKC, lower-case, and every run of characters that are not letters, digits or combining
marks becomes a word boundary. Lemmas go through exactly the same function as captions, so whatever a
lemma normalises to is what a caption must contain.
"""

from __future__ import annotations

import string
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Mode = Literal["paper", "default"]
MODES: tuple[Mode, ...] = ("paper", "default")

# ASCII punctuation bytes never occur inside a multi-byte UTF-8 sequence, so translating raw UTF-8 bytes
# is exactly the reference's per-character replacement.
PAPER_BYTE_TABLE = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
_PAPER_STR_TABLE = str.maketrans(string.punctuation, " " * len(string.punctuation))
_NON_WORD = r"[^\p{L}\p{N}\p{M}]+"
ROW_SEPARATOR = b"\x00"


def _default_byte_table() -> bytes:
    """Byte table for ASCII text in default mode: A-Z → a-z, other non-alphanumeric ASCII → space, NUL kept (it
    separates rows in the matcher's haystack), bytes ≥ 0x80 unchanged."""
    table = bytearray(range(256))
    for b in range(128):
        ch = chr(b)
        if ch.isupper():
            table[b] = ord(ch.lower())
        elif not ch.isalnum() and b != 0:
            table[b] = ord(" ")
    return bytes(table)


DEFAULT_BYTE_TABLE = _default_byte_table()


def paper_normalize(text: str) -> str:
    """The reference caption transform on one string: ASCII punctuation → space (no other change)."""
    return text.translate(_PAPER_STR_TABLE)


def default_normalize_array(texts: pa.Array) -> pa.Array:
    """Default-mode normalisation of a string array: NFKC, lower-case, runs of non-word characters → one space,
    stripped. Nulls stay null. This is the definition; ``default_normalize_fast`` computes the same words faster.
    """
    out = pc.utf8_normalize(texts, form="NFKC")
    out = pc.utf8_lower(out)
    out = pc.replace_substring_regex(out, pattern=_NON_WORD, replacement=" ")
    return pc.utf8_trim_whitespace(out)


def default_normalize(text: str) -> str:
    """Default-mode normalisation of one string (words joined by single spaces)."""
    result = default_normalize_array(pa.array([text], type=pa.string()))[0].as_py()
    return str(result)


def default_haystack(texts: pa.Array) -> bytes:
    """All captions in default-mode normal form as one buffer: ``' w1 w2 … \x00'`` per row, single spaces.

    Same words as ``default_normalize_array``, but only rows with non-ASCII characters pay for the Unicode
    kernels (NFKC, lower-case, regex); ASCII rows are lower-cased and split by one byte-table translation.
    Row ``i`` is the text between the ``i``-th and ``i+1``-th NUL; nulls give empty rows.
    """
    ascii_mask = pc.fill_null(pc.string_is_ascii(texts), True)
    if not pc.all(ascii_mask).as_py():
        unicode_mask = pc.invert(ascii_mask)
        fixed = default_normalize_array(pc.filter(texts, unicode_mask))
        texts = pc.replace_with_mask(texts, unicode_mask, fixed)
    joined = pc.binary_join_element_wise(" ", texts, " \x00", "")
    joined = pc.fill_null(joined, " \x00").cast(pa.large_string())
    data_buf = joined.buffers()[2]
    start, stop = (
        int(x) for x in np.frombuffer(joined.buffers()[1], np.int64)[[joined.offset, joined.offset + len(joined)]]
    )
    data = b"" if data_buf is None else data_buf.to_pybytes()[start:stop]
    if data.count(b"\x00") != len(texts):  # a NUL inside a caption would split its row: it is a space there
        return default_haystack(pc.replace_substring(texts, "\x00", " "))
    buf = np.frombuffer(b" " + data.translate(DEFAULT_BYTE_TABLE) + b" ", dtype=np.uint8)
    # a space that follows a space is dropped, so whitespace runs collapse to one (np.delete of the few positions
    # is ~5x faster than a boolean mask over the whole buffer)
    space = buf == 32
    return np.delete(buf, np.flatnonzero(space[1:] & space[:-1]) + 1).tobytes()
