"""Image+text-filtered variants (the authors' code; Appendix D's robustness claim).

Each variant keeps the candidates whose text-to-synset similarity is above its text threshold (0.72 / 0.76 / 0.79 /
0.81 in the reference) *and* whose image-to-synset score is above an image threshold chosen so that every variant
keeps the same number of samples (the reference: ≈ 535k). The authors searched that image threshold by golden
section; here it is the exact order statistic — the (target + 1)-th largest image score among the variant's text-
passing candidates — so each variant hits the target exactly unless ties sit at the cut (then it keeps fewer, never
more, and says how many).

Reads a candidate index (``key``, ``wnid``, ``class_index``, ``text_similarity``: the selection's index written at a
threshold at or below the lowest variant threshold — the candidate band) and image scores (``key``, ``own_score``:
inference predictions of the image→synset model); writes, per variant, ``<out_root>/<name>/labels.parquet`` with its
manifest (the format of ``laionet variants``, so accuracy and intra-class similarity run on it unchanged) and
``<out_root>/_filtered_summary.parquet``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from laionet.core.manifest import Manifest, Timer, config_hash, file_digest, join, write_manifest, write_parquet_atomic
from laionet.core.stage import begin, require_file_input, stage_lock
from laionet.core.tables import expand, read_columns

STAGE = "filtered-variants"


def image_threshold_for(scores: np.ndarray, target: int) -> tuple[float, int]:
    """The image threshold ``t`` (keep iff score > t) that keeps ``target`` of ``scores`` — the (target+1)-th largest
    score — and how many it keeps (fewer than ``target`` only when scores tie at the cut).

    Raises:
        ValueError: ``target`` larger than the number of scores (no threshold keeps that many).
    """
    if target > len(scores):
        raise ValueError(f"cannot keep {target} samples of {len(scores)}")
    if target == len(scores):
        t = float(np.min(scores)) - 1.0 if len(scores) else 0.0
    else:
        t = float(np.sort(scores)[::-1][target])
    return t, int((scores > t).sum())


def variant_name(base: str, text_threshold: float) -> str:
    """``<base>-t<threshold>`` with the threshold's digits (``laionet-t0.79``)."""
    return f"{base}-t{text_threshold:g}"


def run_filtered_variants(
    candidates: str,
    image_scores: str,
    out_root: str,
    text_thresholds: Sequence[float] = (0.72, 0.76, 0.79, 0.81),
    target: int | None = None,
    base: str = "laionet",
    summary_dir: str | None = None,
) -> list[Manifest]:
    """Write one label set per text threshold, each of exactly ``target`` samples (see module docstring).

    Args:
        candidates: the candidate index parquet (text similarity per key).
        image_scores: predictions glob/file with ``key`` and ``own_score`` (NaN or absent: no image score).
        target: samples per variant; default: as many as the strictest text threshold's candidates with an image
            score (then its image threshold keeps all of them).
        summary_dir: where the summary of all variants goes (``summary.parquet`` + a manifest listing each variant's
            labels; default: ``<out_root>/_filtered_summary.parquet`` only).

    Raises:
        ValueError: a target above what the strictest text threshold leaves.
    """
    timer = Timer()
    require_file_input(candidates, "select", hint="re-run `laionet select` at the lowest variant threshold")
    thresholds = sorted(set(float(t) for t in text_thresholds))
    index = read_columns(candidates, ["key", "wnid", "class_index", "text_similarity"]).drop_duplicates("key")
    scores = read_columns(image_scores, ["key", "own_score"]).drop_duplicates("key", keep="last")
    frame = index.merge(scores, on="key", how="left")
    has_score = frame["own_score"].notna().to_numpy()
    strictest = int((has_score & (frame["text_similarity"] > thresholds[-1]).to_numpy()).sum())
    target = strictest if target is None else target
    if target > strictest:
        raise ValueError(
            f"target {target} is above the {strictest} candidates with an image score at text threshold "
            f"{thresholds[-1]}: lower the target or the strictest threshold"
        )
    digest = config_hash([file_digest(p) for p in expand(image_scores)])
    settings = {"text_thresholds": thresholds, "target": target, "base": base}
    chash = config_hash({**settings, "candidates": file_digest(candidates), "scores": digest})
    manifests, summary = [], []
    with stage_lock(out_root, STAGE):
        for t in thresholds:
            name = variant_name(base, t)
            out_dir = join(out_root, name)
            done = begin(out_dir, config_hash({"all": chash, "threshold": t}))
            if done:
                manifests.append(done)
                summary.append({"variant": name, "text_threshold": t, **done.extra})
                continue
            text_ok = (frame["text_similarity"] > t).to_numpy()
            passing = frame[text_ok & has_score]
            image_t, kept_n = image_threshold_for(passing["own_score"].to_numpy(dtype=np.float64), target)
            kept = passing[passing["own_score"].to_numpy(dtype=np.float64) > image_t]
            labels = kept[["key", "wnid", "class_index"]].reset_index(drop=True)
            path = join(out_dir, "labels.parquet")
            write_parquet_atomic(pa.Table.from_pandas(labels, preserve_index=False), path)
            dropped = {
                "below_text_threshold": int((~text_ok).sum()),
                "no_image_score": int((text_ok & ~has_score).sum()),
                "below_image_threshold": len(passing) - kept_n,
            }
            extra = {"image_threshold": image_t, "target": target, "kept": kept_n, "ties_at_cut": target - kept_n}
            manifest = Manifest(
                stage=STAGE,
                config={**settings, "text_threshold": t, "candidates": candidates, "image_scores": image_scores},
                config_hash=config_hash({"all": chash, "threshold": t}),
                inputs=[candidates, image_scores],
                outputs=[path],
                rows_in=len(frame),
                rows_out=len(labels),
                dropped=dropped,
                wall_time_s=timer.elapsed,
                extra=extra,
            )
            write_manifest(out_dir, manifest)
            manifests.append(manifest)
            summary.append({"variant": name, "text_threshold": t, **extra})
        table = pa.Table.from_pandas(pd.DataFrame(summary), preserve_index=False)
        if summary_dir is None:
            write_parquet_atomic(table, join(out_root, "_filtered_summary.parquet"))
    if summary_dir is not None:
        with stage_lock(summary_dir, STAGE):
            begin(summary_dir, "")
            path = join(summary_dir, "summary.parquet")
            write_parquet_atomic(table, path)
            names = [variant_name(base, t) for t in thresholds]
            write_manifest(summary_dir, Manifest(
                stage=STAGE, config={**settings, "out_root": out_root}, config_hash=chash,
                inputs=[candidates, image_scores], outputs=[path, *(m.outputs[0] for m in manifests)],
                rows_in=len(thresholds), rows_out=len(thresholds), wall_time_s=timer.elapsed,
                extra={"variants": names, "text_thresholds": thresholds, "target": target},
            ))  # fmt: skip
    return manifests
