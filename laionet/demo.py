"""The offline demo: every stage built so far, on real data that ships with Debian packages.

Writes under ``run_dir``: ``catalog.parquet``, ``lemma_map_{paper,default}.parquet``, ``corpus/openclipart.parquet``,
``matches/`` (one parquet per part + manifest), ``similarity/<encoder>/``, ``selection/`` (the LAIONet index,
class frequencies, threshold sweep, histogram, top-50 variant), ``shards/`` (the selected clip art downloaded over a
loopback HTTP server as RGB WebDataset shards), ``verify/``, ``ocr/`` and ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from laionet.core.manifest import join, read_manifest, write_json_atomic, write_parquet_atomic
from laionet.images.attempt import DownloadConfig
from laionet.images.download import run_download
from laionet.images.fetch import host_port
from laionet.images.ocr import run_ocr
from laionet.images.serve import ImageServer
from laionet.images.verify import run_verify
from laionet.report.summary import match_summary
from laionet.selection.select import SelectionConfig, run_select
from laionet.selection.similarity import SimilarityConfig, run_similarity, similarity_dir
from laionet.text.catalog import run_catalog
from laionet.text.lemmas import run_lemmas
from laionet.text.match import MatchConfig, run_match
from laionet.text.normalize import MODES, Mode
from laionet.text.openclipart import DEFAULT_BASE_URL, DEFAULT_ROOT, build_openclipart_corpus


def run_demo(
    run_dir: str,
    mode: Mode = "default",
    encoder: str = "minilm",
    echo: Callable[[str], None] = print,
    images: bool = True,
    image_limit: int | None = None,
) -> dict:
    """Run catalog → lemma maps → openclipart corpus → matching → similarity → selection → (images: loopback
    download → verify → OCR); skip complete stages. ``image_limit`` downloads only the first N selected samples."""
    catalog_path = join(run_dir, "catalog.parquet")
    if read_manifest(catalog_path) is None:
        run_catalog("imagenet1k", catalog_path)
    echo(f"catalog: {catalog_path}")
    for policy in MODES:
        path = join(run_dir, f"lemma_map_{policy}.parquet")
        manifest = read_manifest(path) or run_lemmas(catalog_path, policy, path)
        echo(
            f"lemma map ({policy}): {manifest.extra['lemmas']} lemmas over {manifest.extra['classes_covered']} classes"
        )
    corpus_dir = join(run_dir, "corpus")
    corpus = read_manifest(corpus_dir) or build_openclipart_corpus(corpus_dir)
    echo(f"corpus: {corpus.rows_out} openclipart captions ({corpus.extra['rows_without_text']} without text)")
    match_dir = join(run_dir, "matches")
    manifest = run_match(corpus_dir, match_dir, join(run_dir, f"lemma_map_{mode}.parquet"), MatchConfig(mode=mode))
    summary = match_summary(match_dir, catalog_path)
    write_json_atomic(join(run_dir, "summary.json"), summary)
    echo(
        f"matching ({mode}): {summary['rows_in']} captions, {summary['rows_matched']} matched "
        f"({summary['rows_single_class']} single-class), {summary['classes_hit']} classes hit; "
        f"{manifest.wall_time_s:.2f} s"
    )
    echo("top classes (single-class captions):")
    for row in summary["top_classes"][:10]:
        echo(f"  {row['n']:5d}  {row['wnid']}  {row['name']}")

    sim_dir = similarity_dir(join(run_dir, "similarity"), encoder)
    sims = run_similarity(match_dir, catalog_path, sim_dir, SimilarityConfig(encoder=encoder))
    echo(f"similarity ({sims.config['encoder']}): {sims.rows_out} caption-class pairs in {sims.wall_time_s:.1f} s")
    selected = run_select(match_dir, sim_dir, catalog_path, join(run_dir, "selection"), SelectionConfig())
    extra = selected.extra
    echo(
        f"selection: threshold {extra['threshold']:.2f} ({extra['threshold_rule']}); "
        f"{selected.rows_out} of {selected.rows_in} captions kept in {extra['classes']} classes; "
        f"dropped {selected.dropped}"
    )
    sweep = pd.read_parquet(join(run_dir, "selection", "sweep.parquet"))
    echo("threshold sweep (captions kept / classes with ≥1 sample):")
    for row in sweep[sweep["threshold"].round(2).isin(np.round(np.arange(0.1, 0.91, 0.1), 2))].itertuples():
        echo(f"  > {row.threshold:.2f}: {row.n_samples:5d} / {row.n_classes:4d}")
    summary["selection"] = selected.model_dump(mode="json")
    if images:
        summary.update(_images(run_dir, catalog_path, image_limit, echo))
    write_json_atomic(join(run_dir, "summary.json"), summary)
    return summary


def _images(run_dir: str, catalog_path: str, limit: int | None, echo: Callable[[str], None]) -> dict:
    """Serve the clip art over loopback HTTP (SVG rendered to PNG), download the selected samples into shards,
    verify them and run the OCR filter."""
    index = pd.read_parquet(join(run_dir, "selection", "laionet.parquet"))
    if limit is not None:
        index = index.head(limit)
    out: dict = {}
    with ImageServer(DEFAULT_ROOT) as base:
        index["url"] = index["url"].str.replace(DEFAULT_BASE_URL, base, regex=False)  # this run's port
        index_path = join(run_dir, "download_index.parquet")
        write_parquet_atomic(pa.Table.from_pandas(index, preserve_index=False), index_path)
        config = DownloadConfig(  # the loopback server is named: the download refuses loopback addresses otherwise
            image_size=448, threads=16, samples_per_shard=256, timeout=20, allow_host=[host_port(base)]
        )
        downloaded = run_download(index_path, join(run_dir, "shards"), config)
    echo(f"download: {downloaded.rows_out} of {downloaded.rows_in} images into {len(downloaded.outputs)} shards; "
         f"failed {downloaded.dropped or 'none'}")  # fmt: skip
    verified = run_verify(join(run_dir, "shards"), join(run_dir, "verify"))
    echo(f"verify: {verified.rows_out} good samples, quarantined {verified.dropped or 'none'}")
    quarantine = join(run_dir, "verify", "quarantine.parquet")
    ocr = run_ocr(join(run_dir, "shards"), catalog_path, join(run_dir, "ocr"), quarantine=quarantine)
    echo(f"ocr: {ocr.extra['flagged']} of {ocr.rows_in} images show their class name as text")
    for name, manifest in (("download", downloaded), ("verify", verified), ("ocr", ocr)):
        out[name] = manifest.model_dump(mode="json")
    return out
