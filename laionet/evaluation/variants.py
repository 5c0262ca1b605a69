"""The evaluated label sets ("variants") of a dataset: which samples are scored, and with which class.

``run_variants`` reads a shard directory's per-shard listings (``<shard>.parquet`` beside each ``<shard>.tar``:
``key``, ``wnid``, ``class_index`` and, for downloaded shards, ``status``; a key listed by several download attempts
takes its last listing, as the download stage does) and writes, under ``out_root``:

``<name>/labels.parquet`` (``key``, ``wnid``, ``class_index``) — the text-only variant: every sample whose status is
``success`` (every listed sample when there is no ``status`` column, as for ingested reference datasets) minus the
keys quarantined by the verify stage (``quarantine.parquet``: ``shard``, ``key``, ``reason``). Counts: listed keys =
kept + ``not_downloaded`` + one count per quarantine reason.

``<filtered_name>/labels.parquet`` (default name ``<name>-image``; only with ``predictions``) — the image-filtered
variant: a text-selected sample is kept only if an image model agrees with its class, judged from that model's
``*.predictions.parquet`` (``key``, ``topk``, ``own_score``) by the ``laionet.core.config.ImageFilter`` rule:
``topk`` (the default: the class is among the model's top ``k`` = 5 predictions; with the offline classifier,
EfficientNet-Lite0) or ``own_score`` (the model's score of the sample's own class ≥ ``threshold``: a softmax
probability for a classifier, an image-to-synset-text cosine for CLIP). Counts: text-only rows = kept +
``no_prediction`` (no predictions row, empty top-k or NaN score) + ``image_disagrees``. The rule, k, threshold and
predictions are recorded in that variant's manifest.

Each variant directory gets its own manifest (``<variant>/_manifest.json``); ``run_variants`` returns the text-only
variant's, with the filtered variant's counts in ``extra["filtered"]``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.config import ImageFilter
from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import begin, stage_lock
from laionet.core.tables import read_columns
from laionet.images.shard_list import list_shards

LABEL_COLUMNS = ["key", "wnid", "class_index"]


def read_listings(shards_dir: str) -> tuple[pd.DataFrame, list[str]]:
    """Every listed sample of a shard directory, the last listing of each key winning: (key, wnid, class_index and
    status when present; the listing paths).

    Raises:
        FileNotFoundError: no ``.tar`` shard, or a shard without its ``.parquet`` listing (naming it).
        ValueError: a listing without ``key``, ``wnid`` or ``class_index`` (naming the file).
    """
    tars = list_shards(shards_dir)  # the shard stage's current shards (its manifest), checked complete
    frames, listings = [], []
    for tar in tars:
        path = tar.removesuffix(".tar") + ".parquet"
        fs, listing = url_to_fs(path)
        if not fs.exists(listing):
            raise FileNotFoundError(f"shard {tar} has no listing {path}")
        with fsspec.open(path, "rb") as f:
            table = pq.read_table(f)
        missing = set(LABEL_COLUMNS) - set(table.column_names)
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (has {table.column_names})")
        frames.append(table.select([c for c in [*LABEL_COLUMNS, "status"] if c in table.column_names]).to_pandas())
        listings.append(path)
    frame = pd.concat(frames, ignore_index=True)
    frame["key"] = frame["key"].astype(str)
    return frame.drop_duplicates("key", keep="last").reset_index(drop=True), listings


def _labels_table(frame: pd.DataFrame) -> pa.Table:
    out = frame[LABEL_COLUMNS].reset_index(drop=True)
    if out["class_index"].notna().all():
        out = out.assign(class_index=out["class_index"].astype("int64"))
    return pa.Table.from_pandas(out, preserve_index=False)


def _predictions_glob(predictions: str) -> str:
    """A predictions glob from a glob, a file, or an inference output directory (``<dir>/*.predictions.parquet``)."""
    if any(c in predictions for c in "*?[") or predictions.endswith(".parquet"):
        return predictions
    return join(predictions, "*.predictions.parquet")


def image_agrees(frame: pd.DataFrame, preds: pd.DataFrame, rule: ImageFilter) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``frame`` (``key``, ``class_index``): (has a usable prediction, the image model agrees), bool (N,).

    ``preds``: ``key`` with ``topk`` (rule ``topk``) or ``own_score`` (rule ``own_score``)."""
    merged = frame[["key", "class_index"]].merge(preds.drop_duplicates("key", keep="last"), on="key", how="left")
    if rule.rule == "topk":
        has = np.zeros(len(merged), bool)
        agrees = np.zeros(len(merged), bool)
        for i, (row, cls) in enumerate(zip(merged["topk"], merged["class_index"], strict=True)):
            if isinstance(row, list | np.ndarray) and len(row):
                has[i] = True
                agrees[i] = bool(np.any(np.asarray(row)[: rule.k] == cls))
        return has, agrees
    score = pd.to_numeric(merged["own_score"], errors="coerce").to_numpy(float)
    has = np.isfinite(score)
    assert rule.threshold is not None
    return has, has & (np.nan_to_num(score, nan=-np.inf) >= rule.threshold)


def run_variants(
    shards_dir: str,
    out_root: str,
    name: str = "laionet",
    quarantine: str | None = None,
    predictions: str | None = None,
    image_filter: ImageFilter | dict[str, Any] | None = None,
    filtered_name: str | None = None,
) -> Manifest:
    """Write the text-only variant ``<out_root>/<name>/labels.parquet`` and, with ``predictions`` (a glob, file or
    inference output directory of the filter's model), the image-filtered variant
    ``<out_root>/<filtered_name or name-image>/labels.parquet``; see the module docstring.

    Raises:
        FileNotFoundError: a missing shard listing, quarantine table or predictions (naming it).
        ValueError: a file without a needed column (naming both), an ``image_filter`` without ``predictions``, or
            the ``own_score`` rule without a threshold.
    """
    timer = Timer()
    rule = ImageFilter.model_validate(image_filter) if isinstance(image_filter, dict) else image_filter
    if rule is not None and predictions is None:
        raise ValueError("an image filter needs the filter model's predictions (predictions=...)")
    rule = rule or (ImageFilter() if predictions else None)
    if rule is not None and rule.rule == "own_score" and rule.threshold is None:
        raise ValueError("image filter rule own_score needs a threshold")
    # one lock per variant directory (label sets of other datasets are written concurrently into the same root);
    # each is visibly incomplete until its manifest
    filtered_dir = join(out_root, filtered_name or f"{name}-image") if rule is not None else None
    second = stage_lock(filtered_dir, "variants") if filtered_dir is not None else nullcontext()
    with stage_lock(join(out_root, name), "variants"), second:
        begin(join(out_root, name), "")
        if filtered_dir is not None:
            begin(filtered_dir, "")
        listed, listings = read_listings(shards_dir)
        downloaded = listed["status"].eq("success").to_numpy() if "status" in listed else np.ones(len(listed), bool)
        dropped = {"not_downloaded": int((~downloaded).sum())}
        kept = listed[downloaded]
        if quarantine:
            bad = read_columns(quarantine, ["key", "reason"])
            bad = bad[bad["key"] != "*"].drop_duplicates("key")  # "*": a truncated shard; its lost keys are listed too
            reason = kept["key"].map(bad.set_index("key")["reason"])
            for why, n in reason.dropna().value_counts().items():
                dropped[str(why)] = int(n)
            kept = kept[reason.isna().to_numpy()]
        text_path = join(out_root, name, "labels.parquet")
        write_parquet_atomic(_labels_table(kept), text_path)
        config = {"shards": shards_dir, "name": name, "quarantine": quarantine, "predictions": predictions,
                  "image_filter": rule.model_dump() if rule else None, "filtered_name": filtered_name}  # fmt: skip
        text_manifest = Manifest(
            stage="variants",
            config=config,
            config_hash=config_hash(config),
            inputs=[*listings, *([quarantine] if quarantine else [])],
            outputs=[text_path],
            rows_in=len(listed),
            rows_out=len(kept),
            dropped=dropped,
            wall_time_s=timer.elapsed,
            extra={"variant": name, "classes": int(kept["class_index"].nunique())},
        )
        if predictions is not None and rule is not None:
            filtered = filtered_name or f"{name}-image"
            pattern = _predictions_glob(predictions)
            column = "topk" if rule.rule == "topk" else "own_score"
            preds = read_columns(pattern, ["key", column])
            preds["key"] = preds["key"].astype(str)
            has, agrees = image_agrees(kept, preds, rule)
            image_kept = kept[agrees]
            image_path = join(out_root, filtered, "labels.parquet")
            write_parquet_atomic(_labels_table(image_kept), image_path)
            described = {"rule": rule.rule, "model": rule.model, "predictions": pattern,
                         **({"k": rule.k} if rule.rule == "topk" else {"threshold": rule.threshold})}  # fmt: skip
            image_config = {"shards": shards_dir, "quarantine": quarantine, "name": filtered, "source": name,
                            "image_filter": described}  # fmt: skip
            image_manifest = Manifest(
                stage="variants",
                config=image_config,
                config_hash=config_hash(image_config),
                inputs=[text_path, pattern],
                outputs=[image_path],
                rows_in=len(kept),
                rows_out=len(image_kept),
                dropped={"no_prediction": int((~has).sum()), "image_disagrees": int((has & ~agrees).sum())},
                wall_time_s=timer.elapsed,
                extra={
                    "variant": filtered,
                    "source": name,
                    "rule": _describe(rule),
                    "classes": int(image_kept["class_index"].nunique()),
                },
            )
            write_manifest(join(out_root, filtered), image_manifest)
            text_manifest.outputs.append(image_path)
            text_manifest.extra["filtered"] = {"variant": filtered, "rows_out": image_manifest.rows_out,
                                               "dropped": image_manifest.dropped, "rule": _describe(rule)}  # fmt: skip
        text_manifest.wall_time_s = timer.elapsed
        write_manifest(join(out_root, name), text_manifest)
        return text_manifest


def _describe(rule: ImageFilter) -> str:
    if rule.rule == "topk":
        return f"keep iff the sample's class is in {rule.model}'s top-{rule.k} predictions"
    return f"keep iff {rule.model}'s score of the sample's class (own_score) >= {rule.threshold}"


def run_top_k_variant(source: str, index: str, out_dir: str, k: int = 50, flags: str | None = None) -> Manifest:
    """The top-k variant (the reference's top-50): per class, the ``k`` samples of LAIONet most similar to their
    synset text.

    Reads the text-only variant's labels ``source`` (``key``, ``wnid``, ``class_index``: downloaded, not
    quarantined), the selection's index ``index`` (``key``, ``text_similarity``: the rows above the threshold) and
    optional ``flags`` (``key``, ``flagged``: the OCR filter). The reference ranked LAIONet after its OCR filter, so
    flagged samples are left out before ranking, as are samples that were never downloaded (the next most similar
    take their place). Ties: the smaller key first. Writes ``<out_dir>/labels.parquet`` (``LABEL_COLUMNS``) and the
    manifest; counts: source rows = kept + ``flagged`` + ``not_in_index`` + ``beyond_top_k``.
    """
    timer = Timer()
    labels = read_columns(source, LABEL_COLUMNS)
    labels["key"] = labels["key"].astype(str)
    dropped = {"flagged": 0, "not_in_index": 0, "beyond_top_k": 0}
    if flags:
        flag_frame = read_columns(flags, ["key", "flagged"])
        flagged = labels["key"].isin(flag_frame.loc[flag_frame["flagged"].astype(bool), "key"].astype(str))
        dropped["flagged"] = int(flagged.sum())
        labels = labels[~flagged.to_numpy()]
    sims = read_columns(index, ["key", "text_similarity"]).drop_duplicates("key")
    sims["key"] = sims["key"].astype(str)
    ranked = labels.merge(sims, on="key", how="left")
    missing = ranked["text_similarity"].isna().to_numpy()
    dropped["not_in_index"] = int(missing.sum())
    ranked = ranked[~missing].sort_values(["class_index", "text_similarity", "key"], ascending=[True, False, True])
    kept = ranked.groupby("class_index", sort=False).head(k)
    dropped["beyond_top_k"] = len(ranked) - len(kept)
    path = join(out_dir, "labels.parquet")
    write_parquet_atomic(_labels_table(kept.sort_values("key")), path)
    config = {"source": source, "index": index, "k": k, "flags": flags}
    variant = out_dir.rstrip("/").rsplit("/", 1)[-1]
    manifest = Manifest(
        stage="variants",
        config=config,
        config_hash=config_hash(config),
        inputs=[p for p in (source, index, flags) if p],
        outputs=[path],
        rows_in=len(labels) + dropped["flagged"],
        rows_out=len(kept),
        dropped=dropped,
        wall_time_s=timer.elapsed,
        extra={"variant": variant, "k": k, "classes": int(kept["class_index"].nunique())},
    )
    write_manifest(out_dir, manifest)
    return manifest
