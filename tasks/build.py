"""Tasks of the build flow: catalog → lemma map → corpus → match → similarity → select.

Each task calls exactly one laionet driver and returns its manifest as a plain dict; inputs are paths and plain
values. Caching (persisted, keyed on inputs + task source + laionet code version, validated against the output)
and the manifest artifact are in ``tasks._common``.

GPU stages (similarity) carry the tag ``gpu`` as well as their stage tag: with a tag concurrency limit
(``prefect concurrency-limit create gpu 1``) at most that many of them run at once, across flow runs and workers,
so they never oversubscribe a device. Without the limit the tag does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from prefect import task

from laionet.selection.select import SelectionConfig, run_select
from laionet.selection.similarity import SimilarityConfig, run_similarity
from laionet.text.catalog import run_catalog
from laionet.text.corpus import ColumnMap
from laionet.text.lemmas import run_lemmas
from laionet.text.match import MatchConfig, run_match
from laionet.text.normalize import Mode
from laionet.text.openclipart import DEFAULT_BASE_URL, DEFAULT_ROOT, build_openclipart_corpus
from tasks._common import IO_RETRIES, publish, run_name, stage_cache
from tasks.devices import gpu_slot

Manifest = dict[str, Any]


@task(
    name="catalog",
    task_run_name=run_name("classes"),
    cache_policy=stage_cache("out_path"),
    persist_result=True,
)
def catalog(classes: str, out_path: str) -> Manifest:
    """Class catalog from WordNet (``classes``: imagenet1k, imagenet21k or a file of wnids) → ``out_path``."""
    return publish(run_catalog(classes, out_path), out_path)


@task(
    name="lemma-map",
    task_run_name=run_name("policy"),
    cache_policy=stage_cache("out_path"),
    persist_result=True,
)
def lemma_map(catalog_path: str, policy: Mode, out_path: str) -> Manifest:
    """Lemma → wnid map of a catalog under ``policy`` ('paper' or 'default') → ``out_path``."""
    return publish(run_lemmas(catalog_path, policy, out_path), out_path)


@task(
    name="openclipart-corpus",
    task_run_name=run_name(),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def openclipart_corpus(
    out_dir: str, root: str = str(DEFAULT_ROOT), base_url: str = DEFAULT_BASE_URL, limit: int | None = None
) -> Manifest:
    """Debian's openclipart SVGs → one LAION-style corpus part in ``out_dir``."""
    return publish(build_openclipart_corpus(out_dir, root=Path(root), base_url=base_url, limit=limit), out_dir)


@task(
    name="match",
    task_run_name=run_name("mode"),
    cache_policy=stage_cache("out_dir", exclude=("workers",)),
    persist_result=True,
    **IO_RETRIES,  # corpus parts may live on object storage
)
def match(
    corpus: str,
    out_dir: str,
    lemma_map_path: str,
    mode: Mode = "default",
    columns: dict[str, str | None] | None = None,
    workers: int = 1,
    max_parts: int | None = None,
) -> Manifest:
    """Captions of ``corpus`` (glob, directory or file of parquet parts; the first ``max_parts``) matched against a
    lemma map → ``out_dir``."""
    config = MatchConfig(mode=mode, columns=ColumnMap(**(columns or {})))
    return publish(run_match(corpus, out_dir, lemma_map_path, config, workers=workers, max_parts=max_parts), out_dir)


@task(
    name="similarity",
    task_run_name=run_name("encoder"),
    tags=["gpu"],
    cache_policy=stage_cache("out_dir", exclude=("device", "batch_size")),
    persist_result=True,
    **IO_RETRIES,
)
def similarity(
    matches_dir: str,
    catalog_path: str,
    out_dir: str,
    encoder: str = "minilm",
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "auto",
) -> Manifest:
    """Text-to-synset similarity of every (caption, matched class) pair of a match stage under ``encoder`` →
    ``out_dir`` (one directory per encoder: ``laionet.selection.similarity.similarity_dir``). ``device`` and
    ``batch_size`` only change how fast it runs and are left out of the cache key."""
    with gpu_slot(device) as chosen:  # cuda:<i> of the device slot it holds (tasks/devices.py)
        config = SimilarityConfig(encoder=encoder, device=chosen, batch_size=batch_size, precision=precision)
        manifest = run_similarity(matches_dir, catalog_path, out_dir, config)
    return publish(manifest, out_dir)


@task(
    name="select",
    task_run_name=run_name("threshold"),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
    **IO_RETRIES,
)
def select(
    matches_dir: str,
    similarity_dir: str,
    catalog_path: str,
    out_dir: str,
    threshold: float | Literal["auto"] = "auto",
    multi_label: Literal["drop", "best"] = "drop",
    nsfw_keep: Sequence[str] | None = ("UNLIKELY",),
    top_k: int | None = 50,
) -> Manifest:
    """The LAIONet index from a match stage and one encoder's similarities → ``out_dir``. ``threshold="auto"``: the
    paper's value for its encoders, else calibrated on the data; ``nsfw_keep=None`` keeps every NSFW tag."""
    config = SelectionConfig(
        threshold=threshold,
        multi_label=multi_label,
        nsfw_keep=None if nsfw_keep is None else list(nsfw_keep),
        top_k=top_k,
    )
    return publish(run_select(matches_dir, similarity_dir, catalog_path, out_dir, config), out_dir)
