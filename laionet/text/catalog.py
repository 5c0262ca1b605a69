"""Class catalog: one row per target class (WordNet synset) with its names, lemmas and synset text.

Reads a class set (``imagenet1k``, ``imagenet21k`` or a file of wnids) and WordNet 3.0; writes a table with
columns ``class_index, wnid, name, lemmas, definition, synset_text``.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa

from laionet.core.manifest import Manifest, Timer, config_hash, write_manifest, write_parquet_atomic
from laionet.core.stage import stage_run
from laionet.text.wordnet import synset_from_wnid

BUILTIN_CLASS_SETS = ("imagenet1k", "imagenet21k")
CATALOG_COLUMNS = ["class_index", "wnid", "name", "lemmas", "definition", "synset_text"]


def load_class_set(classes: str) -> list[str]:
    """Return the wnids of a class set, in class-index order.

    Args:
        classes: ``imagenet1k`` (the 1000 ILSVRC-2012 classes, sorted-wnid order as timm/torchvision use),
            ``imagenet21k`` (the 21,841 fall-2011 synsets, sorted), or a path to a text file with one wnid
            per line (blank lines and ``#`` comments ignored; file order is the class-index order).

    Raises:
        ValueError: for an unknown set name, a missing file, a malformed or duplicated wnid (named with its line).
    """
    if classes in BUILTIN_CLASS_SETS:
        text = resources.files("laionet").joinpath(f"data/{classes}_wnids.txt").read_text()
        source = classes
    else:
        path = Path(classes)
        if not path.is_file():
            raise ValueError(f"--classes {classes!r} is neither one of {BUILTIN_CLASS_SETS} nor an existing wnid file")
        text = path.read_text()
        source = str(path)
    wnids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        wnid = line.split()[0]
        if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
            raise ValueError(f"{source}:{lineno}: malformed wnid {wnid!r} (expected 'n' + 8 digits)")
        if wnid in seen:
            raise ValueError(f"{source}:{lineno}: wnid {wnid} repeats line {seen[wnid]}")
        seen[wnid] = lineno
        wnids.append(wnid)
    if not wnids:
        raise ValueError(f"class set {source} has no wnids")
    return wnids


def synset_text(name: str, definition: str) -> str:
    """The reference prompt for a class: ``"<name> which is <definition>"``."""
    return f"{name} which is {definition}"


def build_catalog(wnids: list[str]) -> pd.DataFrame:
    """Look every wnid up in WordNet 3.0 and build the catalog table.

    ``name`` is the synset's head word as WordNet names the synset (lower-case, ``_`` → space); ``lemmas`` are
    the synset's lemma names in WordNet order (case kept, ``_`` → space).

    Returns:
        DataFrame with columns ``CATALOG_COLUMNS``, one row per wnid, ``class_index`` = position in ``wnids``.
    """
    rows = []
    for index, wnid in enumerate(wnids):
        syn = synset_from_wnid(wnid)
        name = syn.name().split(".")[0].replace("_", " ")
        definition = syn.definition()
        rows.append(
            {
                "class_index": index,
                "wnid": wnid,
                "name": name,
                "lemmas": [lemma.replace("_", " ") for lemma in syn.lemma_names()],
                "definition": definition,
                "synset_text": synset_text(name, definition),
            }
        )
    return pd.DataFrame(rows, columns=CATALOG_COLUMNS)


_log = logging.getLogger("laionet.catalog")


def run_catalog(classes: str, out_path: str) -> Manifest:
    """Driver: build the catalog of a class set and write it to ``out_path`` (parquet), manifest beside it.
    Returns the existing manifest without work if the output is already complete for the same class set."""
    timer = Timer()
    _log.info("catalog of %s → %s", classes, out_path)
    wnids = load_class_set(classes)
    config = {"classes": classes if classes in BUILTIN_CLASS_SETS else str(Path(classes).resolve())}
    chash = config_hash({**config, "wnids": wnids})
    with stage_run(out_path, chash, "catalog") as done:
        if done:
            return done
        table = build_catalog(wnids)
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), out_path)
        manifest = Manifest(
            stage="catalog",
            config=config,
            config_hash=chash,
            inputs=[classes],
            outputs=[out_path],
            rows_in=len(wnids),
            rows_out=len(table),
            wall_time_s=timer.elapsed,
        )
        write_manifest(out_path, manifest)
        return manifest


def read_catalog(path: str) -> pd.DataFrame:
    """Load a catalog parquet, checking its columns."""
    with fsspec.open(path, "rb") as f:
        table = pd.read_parquet(f)
    missing = set(CATALOG_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a class catalog (missing columns {sorted(missing)})")
    table["lemmas"] = table["lemmas"].map(list)
    return table
