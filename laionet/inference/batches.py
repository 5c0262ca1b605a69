"""Shards → preprocessed batches, in DataLoader worker processes (the decoding half of ``laionet.inference.engine``).

Shards are read through webdataset (``laionet.images.shards.shard_pipeline``): a shard may be a local path, an fsspec
URL (``http(s)://`` streamed, ``s3://``…) or a ``pipe:`` command. The shard list is split with webdataset's
``split_by_node`` (torch.distributed ranks, or ``RANK``/``WORLD_SIZE``: each node takes every n-th shard; a node's
shards are then finished by its own calls, the manifests by a final call that finds every shard done) and
``split_by_worker`` (each DataLoader worker takes whole shards, every n-th). Every image is decoded once and each
distinct ``Recipe`` applied once.

A batch is a dict: ``shard``, ``keys``, ``wnids``, ``images`` ({recipe: tensor or None}), ``last`` (the shard's last
batch, which also carries its ``counts`` — read, quarantined, undecodable, no_image — ``truncated``, and ``errors``:
(key, reason, detail) of every sample or shard problem met, ``*`` for the shard). Problems never stop the stage and
are never dropped: a shard that cannot be read to a clean end keeps the samples read before the damage and is flagged
``truncated``; an undecodable image (or one over the pixel limit) is counted ``undecodable``; a sample without an
image ``no_image``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from laionet.images.shards import ErrorLog, decode_rgb, iter_raw, original_key
from laionet.inference.models import Recipe


def _pack(shard: str, keys: list[str], wnids: list[str | None], tensors: dict[Recipe, list[Any]]) -> dict[str, Any]:
    """One batch; empties the buffers it packs."""
    out = {
        "shard": shard,
        "keys": list(keys),
        "wnids": list(wnids),
        "images": {r: torch.stack(t) if t else None for r, t in tensors.items()},
        "last": False,
        "counts": None,
        "truncated": False,
        "errors": None,
    }
    keys.clear()
    wnids.clear()
    for t in tensors.values():
        t.clear()
    return out


def decode_shard(shard: str, recipes: dict[Recipe, Any], skip: set[str], batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches of one shard; the last one has ``last=True``, the shard's counts, whether it was truncated and its
    errors (an image over the pixel limit, ``laionet.core.runtime.limit_image_pixels``, is counted undecodable)."""
    counts = {"read": 0, "quarantined": 0, "undecodable": 0, "no_image": 0}
    errors = ErrorLog()
    keys: list[str] = []
    wnids: list[str | None] = []
    tensors: dict[Recipe, list[Any]] = {r: [] for r in recipes}
    for raw_key, sample in iter_raw(shard, errors):
        counts["read"] += 1
        key = original_key(raw_key)
        if key in skip:
            counts["quarantined"] += 1
            continue
        if "jpg" not in sample:
            counts["no_image"] += 1
            errors.add(shard, key, "no_image")
            continue
        try:
            rgb = decode_rgb(sample["jpg"])
            transformed = {r: t(rgb) for r, t in recipes.items()}
        except Exception as exc:  # PIL raises many types for broken images
            counts["undecodable"] += 1
            errors.add(shard, key, "undecodable_image", f"{type(exc).__name__}: {exc}")
            continue
        try:
            meta = json.loads(sample.get("json", b"{}"))
        except ValueError:
            meta = {}
        keys.append(str(meta.get("key", key)))
        wnids.append(meta.get("wnid"))
        for r, t in transformed.items():
            tensors[r].append(t)
        if len(keys) >= batch_size:
            yield _pack(shard, keys, wnids, tensors)
    yield {
        **_pack(shard, keys, wnids, tensors),
        "last": True,
        "counts": counts,
        "truncated": errors.truncated(shard),
        "errors": [(e.key, e.reason, e.detail) for e in errors.errors],
    }


class ShardStream(torch.utils.data.IterableDataset):
    """Batches from shards: each node (``split_by_node``) and each DataLoader worker (``split_by_worker``) takes
    every n-th shard."""

    def __init__(self, shards: Sequence[str], recipes: Sequence[Recipe], skip: set[str], batch_size: int) -> None:
        super().__init__()
        self.shards, self.recipes, self.skip, self.batch_size = list(shards), list(recipes), skip, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from webdataset import split_by_node, split_by_worker

        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)
        recipes = {r: r.transform() for r in self.recipes}
        for shard in split_by_worker(split_by_node(iter(self.shards))):
            yield from decode_shard(shard, recipes, self.skip, self.batch_size)


def _identity(batch: Any) -> Any:
    return batch


def worker_context() -> str | None:
    """How DataLoader workers start: forked (the default, fastest), unless this process has loaded gRPC or Ray (a Ray
    worker, or a process that ran a local Ray instance): their at-fork handlers kill a forked child ("DataLoader
    worker exited unexpectedly"), so the workers then start from a forkserver."""
    import sys

    return "forkserver" if any(name in sys.modules for name in ("grpc", "ray")) else None


def make_loader(stream: ShardStream, workers: int, pin: bool) -> Any:
    kwargs: dict[str, Any] = {"prefetch_factor": 4, "multiprocessing_context": worker_context()} if workers else {}
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, pin_memory=pin, collate_fn=_identity, **kwargs
    )
