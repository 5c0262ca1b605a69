"""Offline WordNet 3.0 for nltk: locate it, install it from Debian's files, and open it.

nltk looks for ``corpora/wordnet`` under each entry of ``nltk.data.path`` (which includes
``<sys.prefix>/nltk_data``, i.e. the virtualenv). Debian's ``wordnet-base`` package ships the database
in ``/usr/share/wordnet`` but not the ``lexnames`` file nltk opens at start-up; we write it from the
table below (WordNet 3.0's lexicographer file names, from the ``lexnames(5WN)`` manual page).
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

_LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]  # fmt: skip
_POS_CODE = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
_REQUIRED_FILES = ("data.noun", "index.noun", "noun.exc", "index.sense")


class WordNetUnavailableError(RuntimeError):
    """WordNet 3.0 could not be found for nltk."""


def lexnames_text() -> str:
    """Return the content of WordNet 3.0's ``lexnames`` file (45 tab-separated lines)."""
    return "".join(f"{i:02d}\t{name}\t{_POS_CODE[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


def default_data_dir() -> Path:
    """The nltk data directory inside the running Python environment (``<sys.prefix>/nltk_data``)."""
    return Path(sys.prefix) / "nltk_data"


def install_from_debian(
    data_dir: Path | None = None, source_dir: Path = DEBIAN_WORDNET_DIR, force: bool = False
) -> Path:
    """Copy Debian's WordNet 3.0 database into ``<data_dir>/corpora/wordnet`` and add ``lexnames``.

    Returns:
        The ``corpora/wordnet`` directory that was written (or already complete).
    """
    data_dir = data_dir or default_data_dir()
    target = data_dir / "corpora" / "wordnet"
    if not force and all((target / f).is_file() for f in (*_REQUIRED_FILES, "lexnames")):
        return target
    missing = [f for f in _REQUIRED_FILES if not (source_dir / f).is_file()]
    if missing:
        raise WordNetUnavailableError(
            f"WordNet source {source_dir} lacks {missing}; install Debian's wordnet-base and wordnet-sense-index "
            "(apt-get install wordnet-base wordnet-sense-index) or run nltk.download('wordnet') where a network exists"
        )
    tmp = target.with_name("wordnet.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src in source_dir.iterdir():
        if src.is_file():  # regular files only; nltk refuses symlinks that escape its data path
            shutil.copyfile(src, tmp / src.name)
    (tmp / "lexnames").write_text(lexnames_text())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def ensure_on_path(data_dir: Path | None = None) -> None:
    """Put ``data_dir`` (or ``$LAIONET_NLTK_DATA``) first on nltk's search path."""
    import nltk

    candidates = [data_dir, os.environ.get("LAIONET_NLTK_DATA"), default_data_dir()]
    for cand in candidates:
        if cand and str(cand) not in nltk.data.path:
            nltk.data.path.insert(0, str(cand))


@lru_cache(maxsize=1)
def open_wordnet() -> Any:
    """Return nltk's WordNet corpus reader, loaded and checked to be WordNet 3.0.

    Raises:
        WordNetUnavailableError: with the set-up command to run, if nltk cannot find WordNet.
    """
    ensure_on_path()
    from nltk.corpus import wordnet as wn

    try:
        wn.ensure_loaded()
        version = wn.get_version()
    except LookupError as exc:
        raise WordNetUnavailableError(
            "nltk cannot find WordNet. Run `laionet wordnet install` (copies Debian's wordnet-base into "
            f"{default_data_dir()}), set LAIONET_NLTK_DATA, or run nltk.download('wordnet')."
        ) from exc
    if version != "3.0":
        raise WordNetUnavailableError(f"expected WordNet 3.0 (ImageNet's wnids are 3.0 offsets), found {version}")
    return wn


def synset_from_wnid(wnid: str) -> Any:
    """Return the noun synset for a wnid such as ``n02110185``.

    Raises:
        ValueError: if the wnid is malformed or not a WordNet 3.0 noun synset.
    """
    if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
        raise ValueError(f"malformed wnid {wnid!r}: expected 'n' followed by 8 digits")
    wn = open_wordnet()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nltk warns and returns None for an unknown offset
            synset = wn.synset_from_pos_and_offset("n", int(wnid[1:]))
    except Exception as exc:  # older nltk raises WordNetError / ValueError instead
        synset = None
        cause: Exception | None = exc
    else:
        cause = None
    if synset is None:
        raise ValueError(f"wnid {wnid!r} is not a WordNet 3.0 noun synset") from cause
    return synset
