"""Tasks of the infer flow: image models over the shards of one dataset.

``infer_shards`` runs every model over one group of shards (one streaming pass: each image decoded once for all
models) and writes per-shard outputs only; the flow fans it out over shard groups, so several GPUs or Ray workers
share a dataset. ``infer`` then finds every shard done (it loads no model) and writes each model's manifest. Both
carry the ``gpu`` tag (``prefect concurrency-limit create gpu N`` caps them at N) and run on the device of the slot
they hold (``tasks.devices.gpu_slot``: ``cuda:<i>`` of slot ``gpu-<i>``, or the GPU Ray assigned); the device is chosen
inside the task, so it is not part of the cache key.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import task

from laionet.core.manifest import read_manifest
from laionet.images.shard_list import shard_groups
from laionet.inference.engine import run_inference
from laionet.inference.stream import InferConfig
from tasks._common import IO_RETRIES, below, progress_artifact, publish, run_name, stage_cache
from tasks.devices import gpu_slot

Manifest = dict[str, Any]


__all__ = ["infer", "infer_shards", "shard_groups", "shard_span"]


def shard_span(params: dict[str, Any]) -> str:
    """``00004-00007 (4 shards)``: the first and last shard of a group."""
    stems = [str(s).rstrip("/").rsplit("/", 1)[-1].split(".")[0] for s in params.get("shards") or []]
    return f"{stems[0]}-{stems[-1]} ({len(stems)} shards)" if stems else "(no shards)"


@task(
    name="infer-shards",
    task_run_name=run_name(below("out_root", 1), shard_span),
    tags=["gpu"],
    **IO_RETRIES,
)
def infer_shards(
    shards_dir: str,
    models: list[str],
    out_root: str,
    shards: list[str],
    catalog_path: str | None = None,
    quarantine: str | None = None,
    settings: dict[str, Any] | None = None,
) -> int:
    """Every model over ``shards`` (a group of ``shards_dir``) → per-shard outputs; returns the shard count.
    Finished shards are skipped by the driver, so a retry redoes only what a crash left."""
    config = InferConfig(**(settings or {}))
    progress = progress_artifact(f"inference over {len(shards)} shards of {shards_dir}")
    with gpu_slot(config.device) as device:
        config = replace(config, device=device)
        run_inference(shards_dir, models, out_root, catalog_path, quarantine, config, only=shards, progress=progress)
    return len(shards)


@task(
    name="infer",
    task_run_name=run_name(below("out_root", 1)),
    tags=["gpu"],
    cache_policy=stage_cache("out_root"),
    persist_result=True,
    **IO_RETRIES,
)
def infer(
    shards_dir: str,
    models: list[str],
    out_root: str,
    catalog_path: str | None = None,
    quarantine: str | None = None,
    settings: dict[str, Any] | None = None,
) -> Manifest:
    """Every model over every shard of ``shards_dir`` → ``<out_root>/<model slug>/`` (a model manifest each);
    returns the manifest of the whole call (``<out_root>/_manifest.json``)."""
    config = InferConfig(**(settings or {}))
    with gpu_slot(config.device) as device:  # loads a model only for shards no infer-shards task finished
        run_inference(shards_dir, models, out_root, catalog_path, quarantine, replace(config, device=device))
    summary = read_manifest(out_root)
    assert summary is not None  # written by run_inference
    return publish(summary, out_root)
