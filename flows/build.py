"""The build flow: catalog → lemma map → corpus → match, laid out under ``run_dir``.

``run_dir/catalog.parquet``, ``run_dir/lemma_map_<mode>.parquet``, ``run_dir/corpus/`` (only when no corpus is
given: Debian's openclipart clip art), ``run_dir/matches/``; each with its manifest beside it or inside it.
The catalog and the corpus do not depend on each other and run concurrently.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from laionet.manifest import join
from laionet.text import Mode
from tasks.build import catalog, lemma_map, match, openclipart_corpus


@flow(name="build")
def build(
    run_dir: str,
    classes: str = "imagenet1k",
    mode: Mode = "default",
    corpus: str | None = None,
    corpus_limit: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Build the matched-caption table of a corpus.

    Args:
        run_dir: where every output of the run goes (local path or fsspec URL).
        classes: 'imagenet1k', 'imagenet21k' or a file with one wnid per line.
        mode: matching mode, 'default' or 'paper' (the lemma map is built with the same policy).
        corpus: glob / directory / file of LAION-style parquet parts; None builds the openclipart corpus.
        corpus_limit: take only the first N openclipart SVGs (ignored when ``corpus`` is given).

    Returns:
        The manifest of each stage, by stage name.
    """
    catalog_path = join(run_dir, "catalog.parquet")
    lemma_path = join(run_dir, f"lemma_map_{mode}.parquet")
    catalog_future = catalog.submit(classes, catalog_path)
    lemma_future = lemma_map.submit(catalog_path, mode, lemma_path, wait_for=[catalog_future])
    upstream = [lemma_future]
    corpus_future = None
    if corpus is None:
        corpus = join(run_dir, "corpus")
        corpus_future = openclipart_corpus.submit(corpus, limit=corpus_limit)
        upstream.append(corpus_future)
    match_future = match.submit(corpus, join(run_dir, "matches"), lemma_path, mode, wait_for=upstream)
    manifests = {"catalog": catalog_future.result(), "lemmas": lemma_future.result()}
    if corpus_future is not None:
        manifests["corpus"] = corpus_future.result()
    manifests["match"] = match_future.result()
    return manifests
