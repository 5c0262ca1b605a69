"""Selection stage: from matched captions and their text-to-synset similarities to the LAIONet index.

Reads a completed match stage, the similarity stage of one encoder and the catalog; writes into ``<out>``:
``laionet.parquet`` (the index: ``INDEX_COLUMNS``), ``class_frequency.parquet``, ``sweep.parquet`` (per threshold:
dataset size and classes with ≥1 sample — the data of the paper's Figure 3), ``histogram.parquet`` (similarity
histogram of the candidates), ``top<k>.parquet`` (per class, the k most similar rows of the index itself, i.e. above
the threshold: the reference's top-50 variant) and the manifest (written last).

Rules, applied per caption in this order; each caption is counted once, under the first rule that drops it:
``multi_label`` (matched lemmas of more than one class; or ``multi_label="best"``: keep the most similar class),
``nsfw`` (NSFW tag not in ``nsfw_keep``), ``no_similarity`` (its class has no similarity, e.g. not in the catalog),
``below_threshold`` (similarity ≤ threshold: the keep rule is strict ``>``).
Parts are streamed twice (statistics, then the index), so memory follows one part, not the corpus.
"""

from __future__ import annotations

from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from laionet.core.manifest import (
    Manifest,
    Timer,
    atomic_path,
    config_hash,
    join,
    write_manifest,
    write_parquet_atomic,
)
from laionet.core.stage import prune, require_complete, stage_run
from laionet.selection.encoders import PAPER_THRESHOLDS, canonical_spec
from laionet.text.catalog import read_catalog

STAGE = "select"
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("wnid", pa.string()),
        ("class_index", pa.int64()),
        ("text_similarity", pa.float32()),
        ("nsfw", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("laion_similarity", pa.float64()),
    ]
)
INDEX_COLUMNS = INDEX_SCHEMA.names
_CARRIED = ["key", "url", "text", "nsfw", "width", "height", "laion_similarity"]
DROP_REASONS = ("multi_label", "nsfw", "no_similarity", "below_threshold")


class SelectionConfig(BaseModel):
    """Selection rules. ``threshold="auto"``: the paper's value for its encoders (CLIP ViT-B/32 0.82,
    all-mpnet-base-v2 0.58), else calibrated on the data by ``calibration`` (see ``calibrate_threshold``)."""

    threshold: float | Literal["auto"] = "auto"
    multi_label: Literal["drop", "best"] = "drop"
    nsfw_keep: list[str] | None = Field(default_factory=lambda: ["UNLIKELY"])
    grid_start: float = 0.0
    grid_stop: float = 1.0
    grid_step: float = Field(0.01, gt=0)
    calibration: Literal["knee", "coverage"] = "knee"
    coverage_keep: float = Field(0.98, gt=0, le=1)
    top_k: int | None = Field(50, gt=0)

    def grid(self) -> np.ndarray:
        n = round((self.grid_stop - self.grid_start) / self.grid_step) + 1
        return np.round(self.grid_start + self.grid_step * np.arange(n), 6)


def candidates(
    matches: pd.DataFrame, sims: pd.DataFrame, config: SelectionConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply every rule but the threshold. Returns candidates (``key``, ``wnid``, ``similarity``; one per caption)
    and the captions dropped by reason (``below_threshold`` is 0 here)."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    n_labels = matches["wnids"].map(len).to_numpy()
    keep = np.ones(len(matches), dtype=bool)
    if config.multi_label == "drop":
        multi = n_labels > 1
        dropped["multi_label"] = int(multi.sum())
        keep &= ~multi
    if config.nsfw_keep is not None:
        bad = keep & ~matches["nsfw"].isin(config.nsfw_keep).to_numpy()
        dropped["nsfw"] = int(bad.sum())
        keep &= ~bad
    # only pairs of a caption with one of its own matched classes count (similarities are joined on both)
    allowed = matches.loc[keep, ["key", "wnids"]].explode("wnids").rename(columns={"wnids": "wnid"})
    scored = allowed.merge(sims, on=["key", "wnid"], how="left")
    scored = scored.sort_values(["key", "similarity"], ascending=[True, False], na_position="last", kind="stable")
    best = scored.drop_duplicates("key", keep="first")  # single-label captions have one pair; "best" keeps the max
    missing = best["similarity"].isna()
    dropped["no_similarity"] = int(missing.sum())
    return best.loc[~missing, ["key", "wnid", "similarity"]].reset_index(drop=True), dropped


def sweep_counts(similarity: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """For each threshold t of ``grid``: how many similarities are > t. int64 (T,)."""
    ordered = np.sort(similarity)
    return len(ordered) - np.searchsorted(ordered, grid, side="right")


def calibrate_threshold(sweep: pd.DataFrame, rule: str = "knee", coverage_keep: float = 0.98) -> float:
    """Make the paper's rule — "the highest threshold before class coverage falls sharply" — precise.

    ``knee`` (default): the knee of the class-coverage curve n_classes(t) (Kneedle): over the grid from its lowest
    threshold to the first threshold with no class left, the threshold whose coverage lies farthest above the
    straight line joining those two end points. ``coverage``: the highest threshold whose coverage is still
    ≥ ``coverage_keep`` × the coverage at the lowest threshold.
    """
    thresholds = sweep["threshold"].to_numpy(dtype=np.float64)
    coverage = sweep["n_classes"].to_numpy(dtype=np.float64)
    if len(coverage) == 0 or coverage[0] <= 0:
        return float(thresholds[0]) if len(thresholds) else 0.0
    if rule == "coverage":
        return float(thresholds[coverage >= coverage_keep * coverage[0]].max())
    if rule != "knee":
        raise ValueError(f"unknown calibration rule {rule!r}; expected 'knee' or 'coverage'")
    empty = np.flatnonzero(coverage == 0)
    end = int(empty[0]) if len(empty) else len(coverage) - 1
    if end == 0:
        return float(thresholds[0])
    t, c = thresholds[: end + 1], coverage[: end + 1]
    # the position along the chord first: exactly 0 and 1 at its end points, which so lie on it exactly (multiplying
    # first left the end point ~1e-15 above the line, and a curve below its chord throughout then took the last
    # threshold, one with no class left)
    chord = c[0] + (c[-1] - c[0]) * ((t - t[0]) / (t[-1] - t[0]))
    return float(t[int(np.argmax(c - chord))])


def top_k_per_class(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` highest-similarity rows of each class (ties: first seen)."""
    ordered = frame.sort_values(["wnid", "similarity"], ascending=[True, False], kind="stable")
    return ordered.groupby("wnid", sort=False).head(k).reset_index(drop=True)


def _read(path: str, columns: list[str]) -> pd.DataFrame:
    with fsspec.open(path, "rb") as f:
        return pq.read_table(f, columns=columns).to_pandas()


def run_select(
    matches_dir: str, similarity_dir: str, catalog_path: str, out_dir: str, config: SelectionConfig | None = None
) -> Manifest:
    """Select the LAIONet index from a match stage and one encoder's similarities (see module docstring).

    Raises:
        FileNotFoundError: if the match or similarity stage is not complete.
        ValueError: if the similarity stage was computed from another match stage.
    """
    config = config or SelectionConfig()
    timer = Timer()
    matches = require_complete(matches_dir, "match", hint="re-run `laionet match` (or the build flow)")
    sims = require_complete(similarity_dir, "similarity", hint="re-run `laionet similarity` (or the build flow)")
    if sims.inputs != matches.outputs:
        raise ValueError(f"{similarity_dir} was computed from other match parts than {matches_dir}'s")
    encoder = canonical_spec(sims.config["encoder"])
    cfg = config.model_dump(mode="json")
    chash = config_hash({"config": cfg, "matches": matches.config_hash, "similarity": sims.config_hash})
    with stage_run(out_dir, chash, STAGE) as done:
        if done:
            return done
        catalog = read_catalog(catalog_path)
        class_index = dict(zip(catalog["wnid"], catalog["class_index"], strict=True))
        grid = config.grid()

        # pass 1: candidates per part → sweep counts, per-class max similarity, histogram
        dropped = dict.fromkeys(DROP_REASONS, 0)
        above = np.zeros(len(grid), dtype=np.int64)
        class_max: dict[str, float] = {}
        edges = np.round(np.arange(-1.0, 1.0 + 1e-9, 0.01), 6)
        hist = np.zeros(len(edges) - 1, dtype=np.int64)
        top: pd.DataFrame | None = None
        rows_in = 0
        parts = list(zip(matches.outputs, sims.outputs, strict=True))
        for match_path, sim_path in parts:
            frame = _read(match_path, ["key", "wnids", "nsfw"])
            rows_in += len(frame)
            cand, part_dropped = candidates(frame, _read(sim_path, ["key", "wnid", "similarity"]), config)
            for reason, n in part_dropped.items():
                dropped[reason] += n
            sim = cand["similarity"].to_numpy(dtype=np.float64)
            above += sweep_counts(sim, grid)
            hist += np.histogram(np.clip(sim, -1, 1), bins=edges)[0]
            for wnid, value in cand.groupby("wnid")["similarity"].max().items():
                class_max[str(wnid)] = max(class_max.get(str(wnid), -np.inf), float(value))
        maxima = np.array(sorted(class_max.values()))
        sweep = pd.DataFrame(
            {"threshold": grid, "n_samples": above, "n_classes": len(maxima) - np.searchsorted(maxima, grid, "right")}
        )
        if config.threshold == "auto":
            if encoder in PAPER_THRESHOLDS:
                threshold, rule = PAPER_THRESHOLDS[encoder], "paper value for this encoder"
            else:
                threshold = calibrate_threshold(sweep, config.calibration, config.coverage_keep)
                rule = f"calibrated ({config.calibration} of the class-coverage curve)"
        else:
            threshold, rule = float(config.threshold), "given"

        # pass 2: the index, streamed part by part (candidates recomputed: nothing corpus-sized is held in memory)
        index_path = join(out_dir, "laionet.parquet")
        counts: dict[str, int] = {}
        with (
            atomic_path(index_path) as tmp,
            fsspec.open(tmp, "wb") as handle,
            pq.ParquetWriter(handle, INDEX_SCHEMA, compression="zstd") as writer,
        ):
            for match_path, sim_path in parts:
                frame = _read(match_path, ["key", "wnids", "nsfw"])
                cand, _ = candidates(frame, _read(sim_path, ["key", "wnid", "similarity"]), config)
                kept = cand[cand["similarity"] > threshold]
                dropped["below_threshold"] += len(cand) - len(kept)
                for wnid, n in kept["wnid"].value_counts().items():
                    counts[str(wnid)] = counts.get(str(wnid), 0) + int(n)
                writer.write_table(_index_rows(kept, _read(match_path, _CARRIED), class_index))
                if config.top_k:  # top-k of LAIONet itself: the selected rows, above the threshold (as the reference)
                    top = top_k_per_class(pd.concat([top, kept]) if top is not None else kept, config.top_k)
        n_selected = sum(counts.values())

        names = dict(zip(catalog["wnid"], catalog["name"], strict=True))
        freq = pd.DataFrame({"wnid": list(counts), "n": list(counts.values())}, columns=["wnid", "n"])
        freq["class_index"] = freq["wnid"].map(class_index).astype("int64")
        freq["name"] = freq["wnid"].map(names)
        freq["share"] = freq["n"] / max(n_selected, 1)
        freq = freq.sort_values(["n", "class_index"], ascending=[False, True])[
            ["wnid", "class_index", "name", "n", "share"]
        ]

        outputs = {
            "index": index_path,
            "class_frequency": join(out_dir, "class_frequency.parquet"),
            "sweep": join(out_dir, "sweep.parquet"),
            "histogram": join(out_dir, "histogram.parquet"),
        }
        write_parquet_atomic(pa.Table.from_pandas(freq, preserve_index=False), outputs["class_frequency"])
        write_parquet_atomic(pa.Table.from_pandas(sweep, preserve_index=False), outputs["sweep"])
        histogram = pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "count": hist})
        write_parquet_atomic(pa.Table.from_pandas(histogram, preserve_index=False), outputs["histogram"])
        extra: dict[str, Any] = {
            "encoder": encoder,
            "threshold": threshold,
            "threshold_rule": rule,
            "classes": len(counts),
        }
        if config.top_k and top is not None:
            outputs["top_k"] = join(out_dir, f"top{config.top_k}.parquet")
            top_rows = _index_rows(top, _read_many([m for m, _ in parts], top["key"]), class_index)
            write_parquet_atomic(top_rows, outputs["top_k"])
            extra["top_k_rows"] = len(top_rows)
            extra["top_k_classes"] = len(pc.unique(top_rows.column("wnid")))
        manifest = Manifest(
            stage=STAGE,
            config={**cfg, "encoder": encoder, "matches": matches_dir, "similarity": similarity_dir},
            config_hash=chash,
            inputs=[matches_dir, similarity_dir, catalog_path],
            outputs=list(outputs.values()),
            rows_in=rows_in,
            rows_out=n_selected,
            dropped=dropped,
            wall_time_s=timer.elapsed,
            extra=extra,
        )
        prune(out_dir, manifest.outputs, ["*.parquet"])  # e.g. the top-k table of an earlier k
        write_manifest(out_dir, manifest)
        return manifest


def _index_rows(chosen: pd.DataFrame, carried: pd.DataFrame, class_index: dict[str, int]) -> pa.Table:
    """Index rows (``INDEX_SCHEMA``) for chosen (``key``, ``wnid``, ``similarity``) rows and their match columns."""
    rows = chosen.merge(carried, on="key", how="left")
    rows["class_index"] = rows["wnid"].map(class_index).astype("int64")
    rows = rows.rename(columns={"similarity": "text_similarity"})
    return pa.Table.from_pandas(rows[INDEX_COLUMNS], schema=INDEX_SCHEMA, preserve_index=False)


def _read_many(paths: list[str], keys: pd.Series) -> pd.DataFrame:
    """The carried columns of the rows with ``keys`` from the match parts."""
    wanted = set(keys)
    frames = [frame[frame["key"].isin(wanted)] for frame in (_read(p, _CARRIED) for p in paths)]
    return pd.concat(frames, ignore_index=True)
