"""Section 4.2 — text alone cannot explain selection (paper Fig. 9).

For each labelled caption ``t`` of class ``y`` (ImageNet-Captions: title + tags + description; any caption set with
classes): ``s(t, y)``, its similarity to its own synset text, and ``p(t)``, the share of the *other* classes ``c`` of
the catalog with ``s(t, c) > s(t, y)`` (denominator: the catalog's classes minus one, stated in the output; the
paper's "5 % (equivalently, 200)" mixes the 1000 classes of ImageNet-1k with a rounded share). The caption × class
similarities are one matrix product per batch; nothing captions × classes is kept for the whole set.

Reads a labelled caption table (parquet with ``key``, ``text``, ``wnid``; or the ImageNet-Captions JSON) and the
catalog; writes ``<out>/per_caption.parquet`` (``key``, ``wnid``, ``class_index``, ``own_similarity``, ``rank`` of
the own class among all classes, 1 = most similar, ``p_more_similar``), ``bins.parquet`` (Fig. 9b: per bin of
``own_similarity``, the captions, mean ``p`` and its 95 % interval), ``histogram.parquet`` (Fig. 9a) and
``summary.parquet`` (captions, classes, denominator, the sufficient similarity), then the manifest.

The *sufficient similarity* is the paper's use of Fig. 9b: the lowest bin edge from which on every bin's mean ``p``
is at most ``tolerance`` — above it a caption's own class is (almost) always the most similar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import NormalDist
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from laionet.core.manifest import Manifest, Timer, config_hash, file_digest, join, write_manifest, write_parquet_atomic
from laionet.core.stage import require_file_input, stage_run
from laionet.selection.encoders import TextEncoder, canonical_spec
from laionet.text.catalog import read_catalog

STAGE = "text-alone"
DROP_REASONS = ("class_not_in_catalog", "null_text")


def own_class_stats(caption_emb: np.ndarray, own: np.ndarray, class_emb: np.ndarray) -> tuple[np.ndarray, ...]:
    """Similarity to the own class, rank of the own class and the share of other classes more similar.

    Args:
        caption_emb: float (B, D), L2-normalised caption embeddings.
        own: int (B,), row of each caption's own class in ``class_emb``.
        class_emb: float (C, D), L2-normalised synset-text embeddings (C ≥ 2).

    Returns:
        (own similarity float64 (B,), rank int64 (B,) — 1 + the classes strictly more similar —, p float64 (B,) —
        the classes strictly more similar over C − 1).
    """
    sims = caption_emb.astype(np.float32) @ class_emb.astype(np.float32).T  # (B, C): one batch only
    own_sim = sims[np.arange(len(own)), own]
    greater = (sims > own_sim[:, None]).sum(axis=1)
    return own_sim.astype(np.float64), (greater + 1).astype(np.int64), greater / (class_emb.shape[0] - 1)


def bin_means(own_sim: np.ndarray, p: np.ndarray, edges: np.ndarray, level: float = 0.95) -> pd.DataFrame:
    """Fig. 9b: per bin ``[edge_i, edge_i+1)`` of own similarity, the captions, mean ``p`` and a normal-approximation
    interval of that mean (``mean ± z·sd/√n``, clipped to [0, 1]; a bin of one caption gets its value as both
    bounds)."""
    which = np.clip(np.digitize(own_sim, edges) - 1, 0, len(edges) - 2)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    rows = []
    for b in range(len(edges) - 1):
        values = p[which == b]
        n = len(values)
        mean = float(values.mean()) if n else float("nan")
        half = z * float(values.std(ddof=1)) / np.sqrt(n) if n > 1 else 0.0
        rows.append(
            {
                "bin_left": float(edges[b]),
                "bin_right": float(edges[b + 1]),
                "captions": n,
                "mean_p": mean,
                "lower": max(0.0, mean - half) if n else float("nan"),
                "upper": min(1.0, mean + half) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def sufficient_similarity(bins: pd.DataFrame, tolerance: float = 0.005) -> float | None:
    """The lowest bin edge from which on every non-empty bin's mean ``p`` is ≤ ``tolerance``; None if even the top
    non-empty bin is above it (or no bin has captions)."""
    filled = bins[bins["captions"] > 0].sort_values("bin_left")
    lefts = filled["bin_left"].to_numpy(dtype=np.float64)
    means = filled["mean_p"].to_numpy(dtype=np.float64)
    answer = None
    for left, mean in zip(lefts[::-1], means[::-1], strict=True):
        if mean > tolerance:
            break
        answer = float(left)
    return answer


def read_labelled_captions(path: str) -> pd.DataFrame:
    """A labelled caption set: a parquet with ``key``, ``text``, ``wnid``, or an ImageNet-Captions JSON list of
    ``{filename, title, tags, description, wnid}`` (text = title + tags + description, per REFERENCE.md; filenames
    de-duplicated, first kept; rows are kept whether or not an image exists)."""
    if path.endswith(".json"):
        with fsspec.open(path, "r") as f:
            records = json.load(f)
        rows, seen = [], set()
        for record in records:
            name = str(record.get("filename", ""))
            if name in seen:
                continue
            seen.add(name)
            parts = [record.get("title") or "", *(record.get("tags") or []), record.get("description") or ""]
            rows.append({"key": f"imagenet-captions/{Path(name).stem}", "text": " ".join(" ".join(parts).split()),
                         "wnid": record.get("wnid")})  # fmt: skip
        return pd.DataFrame(rows, columns=["key", "text", "wnid"])
    with fsspec.open(path, "rb") as f:
        table = pq.read_table(f)
    missing = {"key", "text", "wnid"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: a labelled caption table needs columns key, text, wnid (missing {sorted(missing)})")
    return table.select(["key", "text", "wnid"]).to_pandas()


def _batches(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def run_text_alone(
    captions: str,
    catalog_path: str,
    out_dir: str,
    encoder: str = "minilm",
    encoder_factory: Callable[[str], TextEncoder] | None = None,
    batch_size: int = 4096,
    bin_width: float = 0.05,
    tolerance: float = 0.005,
) -> Manifest:
    """Section 4.2 over a labelled caption set (see module docstring); resumable as a whole (manifest last).

    Args:
        captions: parquet (``key``, ``text``, ``wnid``) or ImageNet-Captions JSON.
        encoder: text encoder spec (``laionet.selection.encoders``: clip on a GPU for the paper, minilm offline).
        encoder_factory: ``factory(spec)`` → encoder (default: ``create_text_encoder``); injected in tests.
        batch_size: captions per matrix product with the class embeddings (memory: batch × classes floats).
        tolerance: the mean share of more-similar classes below which a bin counts as "p ≈ 0".

    Raises:
        ValueError: a caption table without its columns, or a catalog of fewer than two classes.
    """
    timer = Timer()
    spec = canonical_spec(encoder)
    require_file_input(catalog_path, "catalog", hint="re-run `laionet catalog`")
    settings = {"encoder": spec, "bin_width": bin_width, "tolerance": tolerance}
    chash = config_hash({**settings, "captions": file_digest(captions), "catalog": file_digest(catalog_path)})
    with stage_run(out_dir, chash, STAGE) as done:
        if done:
            return done
        catalog = read_catalog(catalog_path)
        if len(catalog) < 2:
            raise ValueError(f"{catalog_path}: text-alone needs at least two classes (has {len(catalog)})")
        frame = read_labelled_captions(captions)
        row_of = {w: i for i, w in enumerate(catalog["wnid"])}
        dropped = dict.fromkeys(DROP_REASONS, 0)
        dropped["null_text"] = int(frame["text"].isna().sum())
        frame = frame[frame["text"].notna()]
        known = frame["wnid"].isin(row_of)
        dropped["class_not_in_catalog"] = int((~known).sum())
        frame = frame[known].reset_index(drop=True)
        if encoder_factory is None:
            from laionet.selection.encoders import create_text_encoder

            model = create_text_encoder(spec)
        else:
            model = encoder_factory(spec)
        class_emb = model.encode(catalog["synset_text"].tolist())
        parts: list[pd.DataFrame] = []
        with tqdm(total=len(frame), desc="text-alone", unit="captions", unit_scale=True, disable=None) as bar:
            for batch in _batches(frame, batch_size):
                own = batch["wnid"].map(row_of).to_numpy(dtype=np.int64)
                own_sim, rank, p = own_class_stats(model.encode(batch["text"].tolist()), own, class_emb)
                parts.append(pd.DataFrame({"key": batch["key"].to_numpy(), "wnid": batch["wnid"].to_numpy(),
                                           "class_index": catalog["class_index"].to_numpy()[own],
                                           "own_similarity": own_sim, "rank": rank, "p_more_similar": p}))  # fmt: skip
                bar.update(len(batch))
        per_caption = (
            pd.concat(parts, ignore_index=True)
            if parts
            else pd.DataFrame(columns=["key", "wnid", "class_index", "own_similarity", "rank", "p_more_similar"])
        )
        edges = np.round(np.arange(-1.0, 1.0 + bin_width / 2, bin_width), 6)
        own_sim = per_caption["own_similarity"].to_numpy(dtype=np.float64)
        p = per_caption["p_more_similar"].to_numpy(dtype=np.float64)
        bins = bin_means(own_sim, p, edges)
        histogram = bins[["bin_left", "bin_right", "captions"]]
        sufficient = sufficient_similarity(bins, tolerance)
        denominator = f"the {len(catalog) - 1} other classes of the catalog ({len(catalog)} classes)"
        summary = pd.DataFrame(
            [
                {
                    "captions": len(per_caption),
                    "classes": len(catalog),
                    "denominator": denominator,
                    "mean_own_similarity": float(own_sim.mean()) if len(own_sim) else float("nan"),
                    "mean_p": float(p.mean()) if len(p) else float("nan"),
                    "share_own_class_first": float((per_caption["rank"] == 1).mean()) if len(p) else float("nan"),
                    "sufficient_similarity": sufficient,
                    "tolerance": tolerance,
                }
            ]
        )
        outputs = []
        for name, table in (("per_caption", per_caption), ("bins", bins), ("histogram", histogram),
                            ("summary", summary)):  # fmt: skip
            path = join(out_dir, f"{name}.parquet")
            write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), path)
            outputs.append(path)
        extra: dict[str, Any] = {"sufficient_similarity": sufficient, "denominator": denominator}
        manifest = Manifest(
            stage=STAGE,
            config={**settings, "captions": captions, "catalog": catalog_path, "batch_size": batch_size},
            config_hash=chash,
            inputs=[captions, catalog_path],
            outputs=outputs,
            rows_in=len(per_caption) + sum(dropped.values()),
            rows_out=len(per_caption),
            dropped=dropped,
            wall_time_s=timer.elapsed,
            extra=extra,
        )
        write_manifest(out_dir, manifest)
        return manifest


def matched_captions(match_dir: str, out_path: str) -> Manifest:
    """The demo's labelled caption set: every caption of a match stage that matched exactly one class, labelled with
    that class → a parquet (``key``, ``text``, ``wnid``) at ``out_path`` with its manifest beside it (a stage of its
    own: locked, visibly incomplete until the manifest, redone when the match stage changes)."""
    from laionet.core.stage import require_complete

    timer = Timer()
    matches = require_complete(match_dir, "match", hint="re-run `laionet match`")
    chash = config_hash({"matches": matches.config_hash, "parts": matches.outputs})
    with stage_run(out_path, chash, "matched-captions") as done:
        if done:
            return done
        frames = []
        for part in matches.outputs:
            with fsspec.open(part, "rb") as f:
                frames.append(pq.read_table(f, columns=["key", "text", "wnids"]).to_pandas())
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["key", "text", "wnids"])
        single = frame[frame["wnids"].map(len) == 1]
        table = pd.DataFrame({"key": single["key"], "text": single["text"],
                              "wnid": single["wnids"].map(lambda w: w[0])})  # fmt: skip
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), out_path)
        manifest = Manifest(
            stage="matched-captions", config={"matches": match_dir}, config_hash=chash, inputs=matches.outputs,
            outputs=[out_path], rows_in=len(frame), rows_out=len(table),
            dropped={"multi_class": len(frame) - len(table)}, wall_time_s=timer.elapsed,
        )  # fmt: skip
        write_manifest(out_path, manifest)
        return manifest
