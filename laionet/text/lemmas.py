"""Lemma → wnid maps under the two policies (``paper`` and ``default``).

Reads the class catalog (``wnid``, ``name``, ``lemmas``); writes a table with one row per kept lemma:
``lemma`` (the string the matcher looks for, in the policy's normal form), ``wnid``, ``sources`` (the WordNet
lemmas it came from). Dropped lemmas are reported with their reason.

``paper``: keep a lemma iff its exact string (case kept) occurs once across all classes' lemma lists.
``default``: normalise every lemma like a caption (``text.default_normalize``); a normal form claimed by one
class maps to it; a normal form claimed by several classes maps to the one class whose head name it is, if
exactly one is, and is dropped otherwise. Lemmas that normalise to nothing are dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from laionet.core.manifest import (
    Manifest,
    Timer,
    config_hash,
    file_digest,
    write_manifest,
    write_parquet_atomic,
)
from laionet.core.stage import require_file_input, stage_run
from laionet.text.catalog import read_catalog
from laionet.text.normalize import Mode, default_normalize, default_normalize_array, paper_normalize

LEMMA_MAP_COLUMNS = ["lemma", "wnid", "sources"]
DROP_COLUMNS = ["lemma", "wnids", "reason"]


@dataclass(frozen=True)
class LemmaMap:
    """A lemma map and what was left out of it."""

    table: pd.DataFrame  # LEMMA_MAP_COLUMNS, sorted by lemma
    dropped: pd.DataFrame  # DROP_COLUMNS

    @property
    def n_classes(self) -> int:
        return int(self.table["wnid"].nunique())


def _owners(catalog: pd.DataFrame, key_of: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """normal form → {wnid → [source lemmas]} in catalog order."""
    owners: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for wnid, lemmas in zip(catalog["wnid"], catalog["lemmas"], strict=True):
        for lemma in lemmas:
            key = key_of[lemma]
            if key:
                owners[key].setdefault(wnid, []).append(lemma)
    return owners


def build_lemma_map(catalog: pd.DataFrame, policy: Mode) -> LemmaMap:
    """Build the lemma map of a catalog under ``policy``.

    Raises:
        ValueError: for an unknown policy or a catalog without ``wnid``/``name``/``lemmas`` columns.
    """
    missing = {"wnid", "name", "lemmas"} - set(catalog.columns)
    if missing:
        raise ValueError(f"catalog lacks columns {sorted(missing)}")
    all_lemmas = sorted({lemma for lemmas in catalog["lemmas"] for lemma in lemmas})
    if policy == "paper":
        key_of = {lemma: lemma for lemma in all_lemmas}
    elif policy == "default":
        normal = default_normalize_array(pa.array(all_lemmas, type=pa.string())).to_pylist()
        key_of = dict(zip(all_lemmas, normal, strict=True))
    else:
        raise ValueError(f"unknown lemma policy {policy!r}; expected 'paper' or 'default'")

    names = catalog["name"].tolist()
    if policy == "default":
        names = default_normalize_array(pa.array(names, type=pa.string())).to_pylist()
    head_key = dict(zip(catalog["wnid"], names, strict=True))

    kept: list[dict[str, object]] = []
    dropped: list[dict[str, object]] = []
    for lemma in all_lemmas:
        if not key_of[lemma]:
            dropped.append({"lemma": lemma, "wnids": [], "reason": "empty_after_normalisation"})
    owners = _owners(catalog, key_of)
    for key in sorted(owners):
        by_wnid = owners[key]
        n_sources = sum(len(s) for s in by_wnid.values())
        if policy == "paper":
            if n_sources == 1:
                ((wnid, sources),) = by_wnid.items()
                kept.append({"lemma": key, "wnid": wnid, "sources": sources})
            else:
                dropped.append({"lemma": key, "wnids": sorted(by_wnid), "reason": "ambiguous"})
            continue
        if len(by_wnid) == 1:
            ((wnid, sources),) = by_wnid.items()
            kept.append({"lemma": key, "wnid": wnid, "sources": sources})
            continue
        heads = [w for w in by_wnid if head_key[w] == key]
        if len(heads) == 1:
            kept.append({"lemma": key, "wnid": heads[0], "sources": by_wnid[heads[0]]})
            dropped.append(
                {"lemma": key, "wnids": sorted(w for w in by_wnid if w != heads[0]), "reason": "resolved_to_head_name"}
            )
        else:
            dropped.append({"lemma": key, "wnids": sorted(by_wnid), "reason": "ambiguous"})
    table = pd.DataFrame(kept, columns=LEMMA_MAP_COLUMNS)
    return LemmaMap(table=table, dropped=pd.DataFrame(dropped, columns=DROP_COLUMNS))


_log = logging.getLogger("laionet.lemmas")


def run_lemmas(catalog_path: str, policy: Mode, out_path: str) -> Manifest:
    """Driver: build the lemma map of a catalog under ``policy``; write it and its dropped lemmas
    (``<out stem>.dropped.parquet``), manifest last. Counts are over distinct WordNet lemma strings. Returns the
    existing manifest without work if the output is complete for the same catalog content and policy."""
    timer = Timer()
    _log.info("lemma map (%s) of %s → %s", policy, catalog_path, out_path)
    require_file_input(catalog_path, "catalog", hint="re-run `laionet catalog`")
    chash = config_hash({"policy": policy, "catalog": file_digest(catalog_path)})
    with stage_run(out_path, chash, "lemmas") as done:
        if done:
            return done
        catalog = read_catalog(catalog_path)
        result = build_lemma_map(catalog, policy)
        write_parquet_atomic(pa.Table.from_pandas(result.table, preserve_index=False), out_path)
        dropped_path = out_path.removesuffix(".parquet") + ".dropped.parquet"
        write_parquet_atomic(pa.Table.from_pandas(result.dropped, preserve_index=False), dropped_path)
        n_sources = len({lemma for lemmas in catalog["lemmas"] for lemma in lemmas})
        kept_sources = sum(len(s) for s in result.table["sources"])
        manifest = Manifest(
            stage="lemmas",
            config={"policy": policy, "catalog": catalog_path},
            config_hash=chash,
            inputs=[catalog_path],
            outputs=[out_path, dropped_path],
            rows_in=n_sources,
            rows_out=kept_sources,
            dropped={"not_kept": n_sources - kept_sources},
            wall_time_s=timer.elapsed,
            extra={
                "lemmas": len(result.table),
                "classes_covered": result.n_classes,
                "classes": len(catalog),
                "dropped_by_reason": result.dropped["reason"].value_counts().to_dict(),
                "reachability": reachability(result.table, policy),
            },
        )
        write_manifest(out_path, manifest)
        return manifest


def reachability(table: pd.DataFrame, policy: Mode) -> dict[str, int]:
    """How many lemmas and classes of a lemma map captions can actually select, under the matching rule.

    A lemma is ``nested`` with another class when matching the lemma's own text also yields that class (e.g.
    "mountain lion" also yields "lion" under the paper rule); such captions are always multi-label and dropped.
    A lemma ``never matches`` when it is not in the normal form captions are brought to (paper rule: a lemma with
    ASCII punctuation, since captions lose theirs).
    A class is ``unreachable`` when none of its lemmas, written alone as a caption, yields exactly that class.
    """
    from laionet.text.matcher import LemmaMatcher, match_strings  # matching imports text; avoid a cycle at import

    matcher = LemmaMatcher(table, policy)
    found = match_strings(matcher, table["lemma"].tolist())
    own = [wnids == [wnid] for wnid, wnids in zip(table["wnid"], found, strict=True)]
    nested_pairs = sum(len([w for w in wnids if w != wnid]) for wnid, wnids in zip(table["wnid"], found, strict=True))
    normalise = paper_normalize if policy == "paper" else default_normalize
    unmatchable = sum(1 for lemma in table["lemma"] if normalise(lemma) != lemma)
    reachable = {wnid for wnid, ok in zip(table["wnid"], own, strict=True) if ok}
    return {
        "lemmas": len(table),
        "lemmas_never_matching": unmatchable,
        "nested_pairs": nested_pairs,
        "classes": int(table["wnid"].nunique()),
        "classes_unreachable": int(table["wnid"].nunique()) - len(reachable),
    }
