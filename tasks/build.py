"""Tasks of the build flow: catalog → lemma map → corpus → match.

Each task calls exactly one laionet driver and returns its manifest as a plain dict; inputs are paths and plain
values. Caching (persisted, keyed on inputs + task source + laionet code version, validated against the output)
and the manifest artifact are in ``tasks._common``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from laionet.catalog import run_catalog
from laionet.corpus import ColumnMap
from laionet.lemmas import run_lemmas
from laionet.match_stage import MatchConfig, run_match
from laionet.openclipart import DEFAULT_BASE_URL, DEFAULT_ROOT, build_openclipart_corpus
from laionet.text import Mode
from tasks._common import is_transient, publish, stage_cache

Manifest = dict[str, Any]


@task(name="catalog", tags=["stage:catalog"], cache_policy=stage_cache("out_path"), persist_result=True)
def catalog(classes: str, out_path: str) -> Manifest:
    """Class catalog from WordNet (``classes``: imagenet1k, imagenet21k or a file of wnids) → ``out_path``."""
    return publish(run_catalog(classes, out_path), out_path)


@task(name="lemma-map", tags=["stage:lemmas"], cache_policy=stage_cache("out_path"), persist_result=True)
def lemma_map(catalog_path: str, policy: Mode, out_path: str) -> Manifest:
    """Lemma → wnid map of a catalog under ``policy`` ('paper' or 'default') → ``out_path``."""
    return publish(run_lemmas(catalog_path, policy, out_path), out_path)


@task(name="openclipart-corpus", tags=["stage:corpus"], cache_policy=stage_cache("out_dir"), persist_result=True)
def openclipart_corpus(
    out_dir: str, root: str = str(DEFAULT_ROOT), base_url: str = DEFAULT_BASE_URL, limit: int | None = None
) -> Manifest:
    """Debian's openclipart SVGs → one LAION-style corpus part in ``out_dir``."""
    return publish(build_openclipart_corpus(out_dir, root=Path(root), base_url=base_url, limit=limit), out_dir)


@task(
    name="match",
    tags=["stage:match"],
    cache_policy=stage_cache("out_dir", exclude=("workers",)),
    persist_result=True,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=is_transient,  # corpus parts may live on object storage
)
def match(
    corpus: str,
    out_dir: str,
    lemma_map_path: str,
    mode: Mode = "default",
    columns: dict[str, str | None] | None = None,
    workers: int = 1,
) -> Manifest:
    """Captions of ``corpus`` (glob, directory or file of parquet parts) matched against a lemma map → ``out_dir``."""
    config = MatchConfig(mode=mode, columns=ColumnMap(**(columns or {})))
    return publish(run_match(corpus, out_dir, lemma_map_path, config, workers=workers), out_dir)
