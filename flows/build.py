"""The build flow: catalog → lemma map → corpus → match → similarity → select, laid out under ``run_dir``.

``run_dir/catalog.parquet``, ``run_dir/lemma_map_<mode>.parquet``, ``run_dir/corpus/`` (only when no corpus is
given: Debian's openclipart clip art), ``run_dir/matches/``, ``run_dir/similarity/<encoder slug>/`` (one directory
per encoder, so selecting again at another threshold, or switching back to an encoder, never re-encodes),
``run_dir/selection/``; each with its manifest beside it or inside it.
The catalog and the corpus do not depend on each other and run concurrently.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from laionet.core.manifest import join
from laionet.selection.similarity import similarity_dir
from laionet.text.normalize import Mode
from tasks._common import resolve
from tasks.build import catalog, lemma_map, match, openclipart_corpus, select, similarity
from tasks.runners import gpu_options, task_runner


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="build", persist_result=True, flow_run_name="build · {run_dir}", task_runner=task_runner())
def build(
    run_dir: str,
    classes: str = "imagenet1k",
    mode: Mode = "default",
    corpus: str | None = None,
    corpus_limit: int | None = None,
    encoder: str = "minilm",
    threshold: float | Literal["auto"] = "auto",
    top_k: int | None = 50,
    max_parts: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Build the LAIONet index of a corpus: match captions to classes, score them, select.

    Args:
        run_dir: where every output of the run goes (local path or fsspec URL).
        classes: 'imagenet1k', 'imagenet21k' or a file with one wnid per line.
        mode: matching mode, 'default' or 'paper' (the lemma map is built with the same policy).
        corpus: glob / directory / file of LAION-style parquet parts; None builds the openclipart corpus.
        corpus_limit: take only the first N openclipart SVGs (ignored when ``corpus`` is given).
        encoder: text encoder of the caption-to-synset similarity: 'minilm' (offline default), 'mpnet', 'clip' or a
            full spec ('st:<model>', 'open_clip:<model>@<tag>'); see ``laionet.selection.encoders``.
        threshold: keep captions whose similarity is above it; 'auto' uses the paper's value for its encoders and
            calibrates one on the data for others.
        top_k: also write the top-k-per-class variant of the index (None: don't).
        max_parts: match only the first N corpus parts (try a real corpus on one part first).

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
    matches_dir = join(run_dir, "matches")
    match_future = match.submit(corpus, matches_dir, lemma_path, mode, max_parts=max_parts, wait_for=upstream)
    sim_dir = similarity_dir(join(run_dir, "similarity"), encoder)
    with gpu_options():  # on a Ray cluster with GPUs: one GPU for the text encoder (tasks/runners.py)
        similarity_future = similarity.submit(matches_dir, catalog_path, sim_dir, encoder, wait_for=[match_future])
    select_future = select.submit(
        matches_dir,
        sim_dir,
        catalog_path,
        join(run_dir, "selection"),
        threshold=threshold,
        top_k=top_k,
        wait_for=[similarity_future],
    )
    futures = {"catalog": catalog_future, "lemmas": lemma_future}
    if corpus_future is not None:
        futures["corpus"] = corpus_future
    futures.update(match=match_future, similarity=similarity_future, select=select_future)
    return resolve(futures)  # every future; a failure names the task run that failed
