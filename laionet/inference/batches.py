"""Shards → preprocessed batches, in DataLoader worker processes (the decoding half of ``laionet.inference.engine``).

Each worker takes whole shards (every n-th); every image is decoded once and each distinct ``Recipe`` applied once.
A batch is a dict: ``shard``, ``keys``, ``wnids``, ``images`` ({recipe: tensor or None}), ``last`` (the shard's last
batch, which also carries its ``counts`` — read, quarantined, undecodable, no_image — and ``truncated``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from laionet.images.shards import ends_cleanly, iter_raw, original_key
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
    }
    keys.clear()
    wnids.clear()
    for t in tensors.values():
        t.clear()
    return out


def decode_shard(shard: str, recipes: dict[Recipe, Any], skip: set[str], batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches of one shard; the last one has ``last=True``, the shard's counts and whether the tar was truncated
    (an image over the pixel limit, ``laionet.core.runtime.limit_image_pixels``, is counted undecodable)."""
    from PIL import Image

    from laionet.core.runtime import limit_image_pixels

    limit_image_pixels()

    counts = {"read": 0, "quarantined": 0, "undecodable": 0, "no_image": 0}
    keys: list[str] = []
    wnids: list[str | None] = []
    tensors: dict[Recipe, list[Any]] = {r: [] for r in recipes}
    truncated = False
    try:
        for raw_key, sample in iter_raw(shard):
            counts["read"] += 1
            key = original_key(raw_key)
            if key in skip:
                counts["quarantined"] += 1
                continue
            if "jpg" not in sample:
                counts["no_image"] += 1
                continue
            try:
                with Image.open(io.BytesIO(sample["jpg"])) as image:
                    rgb = image.convert("RGB")
                transformed = {r: t(rgb) for r, t in recipes.items()}
            except Exception:  # PIL raises many types for broken images
                counts["undecodable"] += 1
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
        truncated = not ends_cleanly(shard)  # a cut at a 512-byte boundary reads like a normal end of archive
    except (tarfile.TarError, OSError, EOFError):  # a truncated tar: keep what was read, flag the shard
        truncated = True
    yield {**_pack(shard, keys, wnids, tensors), "last": True, "counts": counts, "truncated": truncated}


class ShardStream(torch.utils.data.IterableDataset):
    """Batches from shards: each DataLoader worker takes every n-th shard."""

    def __init__(self, shards: Sequence[str], recipes: Sequence[Recipe], skip: set[str], batch_size: int) -> None:
        super().__init__()
        self.shards, self.recipes, self.skip, self.batch_size = list(shards), list(recipes), skip, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        if info is not None:
            torch.set_num_threads(1)
        recipes = {r: r.transform() for r in self.recipes}
        for shard in mine:
            yield from decode_shard(shard, recipes, self.skip, self.batch_size)


def _identity(batch: Any) -> Any:
    return batch


def make_loader(stream: ShardStream, workers: int, pin: bool) -> Any:
    kwargs: dict[str, Any] = {"prefetch_factor": 4} if workers else {}
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, pin_memory=pin, collate_fn=_identity, **kwargs
    )
