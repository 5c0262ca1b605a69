"""The text-in-image rule and how the OCR stage reads an image for it (``laionet.images.ocr`` runs the stage):
``shows_name``, the paper's rule on a recognised text; ``read_texts``, the engine's quick reading with an exact
re-reading of near misses (``could_show_name``); ``READING``, the version of that reading that part records carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from laionet.images.ocr_engine import OcrEngine
from laionet.text.normalize import paper_normalize


def shows_name(name: str, text: str) -> bool:
    """The paper's rule: the punctuation-normalised class name, space-padded, occurs in the lower-cased text."""
    needle = " " + " ".join(paper_normalize(name.lower()).split()) + " "
    haystack = " " + " ".join(paper_normalize(text.lower()).split()) + " "
    return needle.strip() != "" and needle in haystack


# How the stage reads an image for its flag. Part records hold it (through the part hash), so a re-run after the reading
# changes OCRs every shard again rather than keeping some shards' flags from the old reading beside the new ones'.
# 2: the fast engine's quick pass (bf16 where the CPU has it natively) plus the exact fp32 re-reading of possible
# flags (2026-12-01). 3: the same, but a quick reading that shows the name settles its image (``read_texts``).
READING = 3


def could_show_name(name: str, text: str) -> bool:
    """Whether ``text`` might show ``name`` when read again more carefully: the name's letters and digits occur in
    the text's, spaces and punctuation ignored, up to one edit for a name of four or more of them. A quick reading
    that misses the name only by its spacing ('mailbox76', 'thecandle') or by one letter ('Lemo', 'ptetzel') is
    one; the rule itself (``shows_name``) stays exact."""
    needle = _letters(name)
    if not needle:
        return False
    hay = _letters(text)
    if needle in hay:
        return True
    if len(needle) < 4:
        return False
    half = len(needle) // 2  # one edit leaves one half untouched: without either half in the text, no DP is needed
    return (needle[:half] in hay or needle[half:] in hay) and _edits_to_a_substring(needle, hay) <= 1


def _letters(text: str) -> str:
    return "".join(c for c in paper_normalize(text.lower()) if c.isalnum())


def _edits_to_a_substring(needle: str, hay: str) -> int:
    """The fewest edits (insertions, deletions, substitutions) that turn ``needle`` into some substring of ``hay``
    (Sellers' dynamic programme: the match may start anywhere in ``hay``)."""
    previous = [0] * (len(hay) + 1)
    for i, c in enumerate(needle, 1):
        current = [i] + [0] * len(hay)
        for j, h in enumerate(hay, 1):
            current[j] = min(previous[j - 1] + (c != h), previous[j] + 1, current[j - 1] + 1)
        previous = current
    return min(previous)


def read_texts(engine: OcrEngine, images: list[Any], names: Sequence[str | None], keep_shown: bool = True) -> list[str]:
    """The texts the rule decides on for ``images`` of classes ``names``: the engine's reading (``read_many`` where
    it has one), then, where the engine is not ``exact`` (the fast engine's quick detector input) and offers
    ``read_exact``, an exact re-reading of the images whose quick text comes near the class name
    (``could_show_name``) without showing it (``shows_name``). The quick reading thus settles an image either way
    when it shows the name (flagged) or nothing like it (not flagged); a near miss ('mailbox76', 'thecandle', 'Lemo')
    is decided on the library's own reading. ``keep_shown=False`` re-reads the images that show the name too, so
    every possible flag is the library's (``READING`` 2). Why not by default: on 3,000 generated images of known text
    (``benchmarks/bench_ocr.py``, three seeds), all 36 that the quick reading showed the name in and the library's did
    not ('the candle' read 'thecandle', 'bagel 49' read 'bagel49') had the name drawn on them. This rule flagged 887
    of the 1,200 drawn names, the library's reading 855, neither any undrawn one; re-reading only near misses was
    1.6x faster there (2026-12-01 night).
    An engine without these attributes is taken as it reads."""
    texts = list(engine.read_many(images)) if hasattr(engine, "read_many") else [engine.read(i) for i in images]
    if getattr(engine, "exact", True) or not hasattr(engine, "read_exact"):
        return texts
    again = [
        i
        for i, (name, text) in enumerate(zip(names, texts, strict=True))
        if name and could_show_name(name, text) and not (keep_shown and shows_name(name, text))
    ]
    if again:
        for i, text in zip(again, engine.read_exact([images[i] for i in again]), strict=True):
            texts[i] = text
    return texts
