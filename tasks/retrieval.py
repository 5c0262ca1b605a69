"""Tasks of the nearest-caption diagnostic (the paper's Section 4.3): caption embeddings of a whole corpus, the faiss
index over them, the query set, and the search. Each wraps one driver of ``laionet.retrieval``; paths and plain
settings in, the manifest (or the written path) out; cached across runs."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import task

from tasks._common import below, publish, run_name, stage_cache
from tasks.devices import gpu_slot

Manifest = dict[str, Any]


@task(
    name="caption-embeddings",
    task_run_name=run_name("encoder"),
    tags=["gpu"],
    cache_policy=stage_cache("out_dir", exclude=("device",)),
    persist_result=True,
)
def caption_embeddings(
    corpus: str, out_dir: str, encoder: str, max_parts: int | None = None, device: str = "auto"
) -> Manifest:
    """Every distinct caption of the corpus embedded with ``encoder``, in clip-retrieval's layout (resumable per
    part), on the device of the slot it holds."""
    from laionet.retrieval.embed import EmbedConfig, run_caption_embeddings
    from laionet.selection.encoders import create_text_encoder

    with gpu_slot(device) as chosen:
        factory = partial(create_text_encoder, device=chosen)
        manifest = run_caption_embeddings(corpus, out_dir, EmbedConfig(encoder=encoder), max_parts=max_parts,
                                          encoder_factory=factory)  # fmt: skip
    return publish(manifest, out_dir)


@task(
    name="caption-index",
    task_run_name=run_name(below("out_dir", 1)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def caption_index(emb_dir: str, out_dir: str, settings: dict[str, Any] | None = None) -> Manifest:
    """The faiss index over the caption embeddings (``settings``: ``IndexConfig`` fields); its size and measured
    recall@1 in the manifest."""
    from laionet.retrieval.index import IndexConfig, run_index

    return publish(run_index(emb_dir, out_dir, IndexConfig(**(settings or {}))), out_dir)


@task(
    name="nearest-queries",
    task_run_name=run_name(below("labels_path", 2)),
    cache_policy=stage_cache("out_path"),
    persist_result=True,
)
def variant_queries(labels_path: str, index_path: str, out_path: str) -> Manifest:
    """The stand-in query set: a variant's samples with their captions (key, text, wnid)."""
    from laionet.retrieval.search import variant_queries as build

    return publish(build(labels_path, index_path, out_path), out_path)


@task(
    name="nearest-captions",
    task_run_name=run_name(below("out_dir", 2)),
    tags=["gpu"],
    cache_policy=stage_cache("out_dir", exclude=("device",)),
    persist_result=True,
)
def nearest_captions(
    queries: str,
    emb_dir: str,
    index_dir: str,
    catalog_path: str,
    out_dir: str,
    threshold: float = 0.7,
    k: int = 10,
    exclude_keys: bool = False,
    device: str = "auto",
) -> Manifest:
    """The nearest corpus caption of every query above ``threshold``, written as ``<out_dir>/laionet.parquet`` — the
    ``selection/`` of a run directory of its own (``out_dir``'s parent), so the acquire and infer flows take it as
    they take LAIONet."""
    from laionet.retrieval.search import run_nearest_captions
    from laionet.selection.encoders import create_text_encoder

    with gpu_slot(device) as chosen:
        factory = partial(create_text_encoder, device=chosen)
        manifest = run_nearest_captions(queries, emb_dir, index_dir, catalog_path, out_dir, threshold=threshold, k=k,
                                        exclude_keys=exclude_keys, index_name="laionet.parquet",
                                        encoder_factory=factory)  # fmt: skip
    return publish(manifest, out_dir)


@task(name="run-catalog", task_run_name=run_name(below("run_dir", 2)))
def run_catalog(catalog_path: str, run_dir: str) -> str:
    """The catalog in a run directory of its own (the image stages read class names from it); a digest check, so it
    runs every time (not cached: a deleted copy comes back)."""
    from laionet.retrieval.search import copy_catalog

    return copy_catalog(catalog_path, run_dir)
