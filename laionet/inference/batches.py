"""Shards → preprocessed batches: read and (on the CPU) decoded in DataLoader worker processes, or decoded on the
device (the decoding half of ``laionet.inference.engine``).

Shards are read through webdataset (``laionet.images.shards.shard_pipeline``): a shard may be a local path, an fsspec
URL (``http(s)://`` streamed, ``s3://``…) or a ``pipe:`` command. The shard list is split with webdataset's
``split_by_node`` (torch.distributed ranks, or ``RANK``/``WORLD_SIZE``: each node takes every n-th shard; a node's
shards are then finished by its own calls, the manifests by a final call that finds every shard done) and
``split_by_worker`` (each DataLoader worker takes whole shards, every n-th). Every image is decoded once and each
distinct ``Recipe`` applied once.

Two decoders (``decode``): ``cpu`` — the workers decode with PIL and apply each recipe (``Recipe.transform``);
``device`` — the workers only read each JPEG's bytes and check its header, and ``DeviceDecoder`` (main process)
decodes a whole batch at once with ``torchvision.io.decode_jpeg`` on the device (nvjpeg on a GPU) and resizes, crops
and normalises it there (``Recipe.apply``: within 2 uint8 levels of the CPU path per pixel). An image the device
decoder cannot take — not a JPEG, CMYK, not ending in the end-of-image marker — is decoded by PIL in the worker
instead; one it rejects is decoded by PIL in the main process; either is counted undecodable exactly when the CPU
path would count it (the same PIL call, under the same pixel limit).

A batch is a dict: ``shard``, ``keys``, ``wnids``, ``images`` ({recipe: tensor or None}; with ``decode="device"``
None until ``DeviceDecoder`` fills it from ``payload``, ``offsets`` and ``decoded``), ``last`` (the shard's last
batch, which also carries its ``counts`` — read, quarantined, undecodable, no_image — ``truncated``, and ``errors``:
(key, reason, detail) of every sample or shard problem met, ``*`` for the shard). Problems never stop the stage and
are never dropped: a shard that cannot be read to a clean end keeps the samples read before the damage and is flagged
``truncated``; an undecodable image (or one over the pixel limit) is counted ``undecodable``; a sample without an
image ``no_image``.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from laionet.core.runtime import limit_image_pixels
from laionet.images.shards import ErrorLog, decode_rgb, iter_raw, original_key
from laionet.inference.models import Recipe

Decode = Literal["auto", "cpu", "device"]
_EOI = b"\xff\xd9"  # a JPEG's end-of-image marker: one cut short lacks it
_log = logging.getLogger("laionet.infer")


def _transformed(data: bytes, recipes: dict[Recipe, Any]) -> dict[Recipe, Any]:
    rgb = decode_rgb(data)
    return {r: t(rgb) for r, t in recipes.items()}


def _payload(data: bytes) -> bytes | np.ndarray:
    """What the device gets: the JPEG itself when its header says the device decoder takes it (a JPEG in RGB or
    greyscale, ending in its end-of-image marker), else the image as PIL decodes it (uint8 array (H, W, 3)).

    Raises:
        Exception: what ``decode_rgb`` raises: PIL cannot read the header or the image, or it is over the pixel limit
            (PIL checks the size when it opens the header).
    """
    from PIL import Image

    limit_image_pixels()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L") and data.endswith(_EOI):
            return data
        return np.asarray(image.convert("RGB"))


def _pack_payloads(items: list[bytes | np.ndarray]) -> dict[str, Any]:
    """The JPEGs as one flat byte tensor with offsets (one shared-memory block per batch between processes, not one
    per image; an image decoded by PIL has an empty span) and the PIL-decoded images as uint8 (3, H, W) tensors."""
    jpegs = b"".join(it for it in items if isinstance(it, bytes))
    sizes = [len(it) if isinstance(it, bytes) else 0 for it in items]
    return {
        "payload": torch.frombuffer(bytearray(jpegs), dtype=torch.uint8)
        if jpegs
        else torch.empty(0, dtype=torch.uint8),
        "offsets": [0, *np.cumsum(sizes, dtype=np.int64).tolist()],
        "decoded": {
            i: torch.from_numpy(np.ascontiguousarray(it.transpose(2, 0, 1)))
            for i, it in enumerate(items)
            if not isinstance(it, bytes)
        },
    }


def _pack(
    shard: str, keys: list[str], wnids: list[str | None], items: list[Any], recipes: Sequence[Recipe], raw: bool
) -> dict[str, Any]:
    """One batch; empties the buffers it packs. ``raw``: the items are ``_payload``s (see ``_pack_payloads``), else
    {recipe: tensor} per image."""
    out: dict[str, Any] = {
        "shard": shard,
        "keys": list(keys),
        "wnids": list(wnids),
        "images": None if raw else {r: torch.stack([it[r] for it in items]) if items else None for r in recipes},
        "last": False,
        "counts": None,
        "truncated": False,
        "errors": None,
        **(_pack_payloads(items) if raw else {}),
    }
    keys.clear()
    wnids.clear()
    items.clear()
    return out


def decode_shard(
    shard: str, recipes: dict[Recipe, Any], skip: set[str], batch_size: int, raw: bool = False
) -> Iterator[dict[str, Any]]:
    """Batches of one shard; the last one has ``last=True``, the shard's counts, whether it was truncated and its
    errors (an image over the pixel limit, ``laionet.core.runtime.limit_image_pixels``, is counted undecodable).
    ``raw``: the images are left for ``DeviceDecoder`` (JPEG bytes, or decoded by PIL where the device cannot), and
    ``recipes`` is not applied."""
    counts = {"read": 0, "quarantined": 0, "undecodable": 0, "no_image": 0}
    errors = ErrorLog()
    keys: list[str] = []
    wnids: list[str | None] = []
    items: list[Any] = []
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
            items.append(_payload(sample["jpg"]) if raw else _transformed(sample["jpg"], recipes))
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
        if len(keys) >= batch_size:
            yield _pack(shard, keys, wnids, items, list(recipes), raw)
    yield {
        **_pack(shard, keys, wnids, items, list(recipes), raw),
        "last": True,
        "counts": counts,
        "truncated": errors.truncated(shard),
        "errors": [(e.key, e.reason, e.detail) for e in errors.errors],
    }


class ShardStream(torch.utils.data.IterableDataset):
    """Batches from shards: each node (``split_by_node``) and each DataLoader worker (``split_by_worker``) takes
    every n-th shard. ``decode="device"``: the workers only read the bytes (see ``DeviceDecoder``)."""

    def __init__(
        self,
        shards: Sequence[str],
        recipes: Sequence[Recipe],
        skip: set[str],
        batch_size: int,
        decode: Literal["cpu", "device"] = "cpu",
    ) -> None:
        super().__init__()
        self.shards, self.recipes, self.skip, self.batch_size = list(shards), list(recipes), skip, batch_size
        self.decode = decode

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from webdataset import split_by_node, split_by_worker

        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)
        raw = self.decode == "device"
        recipes = {r: None if raw else r.transform() for r in self.recipes}
        for shard in split_by_worker(split_by_node(iter(self.shards))):
            yield from decode_shard(shard, recipes, self.skip, self.batch_size, raw=raw)


def _decode_jpeg(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """``torchvision.io.decode_jpeg`` of the JPEGs (uint8 tensors on the CPU) in one batched call, to RGB uint8
    (3, H, W) on ``device``, without its deprecation warning (torchvision 0.29 points to TorchCodec, not installed).

    On a GPU the current stream is drained first: the CUDA decoder writes its outputs from another stream without
    waiting for the caller's, into memory the caching allocator may have just freed from kernels still queued there
    (pytorch/vision#9606, not merged). The engine copies each batch's outputs to the host anyway, so this waits for
    nothing that was not waited for.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if torch.device(device).type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def check_decode(decode: str) -> None:
    """Raises ValueError unless ``decode`` is one of ``Decode``'s modes (InferConfig is a dataclass: nothing checks
    its fields)."""
    if decode not in ("auto", "cpu", "device"):
        raise ValueError(f"unknown decode mode {decode!r}: use auto, cpu or device")


def decode_mode(decode: str, device: str) -> Literal["cpu", "device"]:
    """The decoder to use: ``auto`` is ``device`` on a CUDA device whose decoder works (a tiny JPEG is decoded there
    first), else ``cpu``.

    Raises:
        ValueError: an unknown mode, or ``device`` asked for where torchvision cannot decode a JPEG.
    """
    check_decode(decode)
    if decode == "cpu" or (decode == "auto" and not device.startswith("cuda")):
        return "cpu"
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(out, "JPEG")
    try:
        _decode_jpeg([torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)], device)
    except Exception as exc:  # no nvjpeg in this torchvision build, no device...
        if decode == "device":
            raise ValueError(f"decode='device': torchvision cannot decode JPEGs on {device}: {exc}") from exc
        _log.warning("JPEG decoding on %s failed (%s: %s): decoding on the CPU", device, type(exc).__name__, exc)
        return "cpu"
    return "device"


class DeviceDecoder:
    """The main-process half of ``decode="device"``: turns a batch of payloads into the batch the CPU path would have
    given — ``images`` per recipe, on ``device`` — decoding every JPEG once and applying each recipe once.

    The JPEGs of a batch are decoded in one ``decode_jpeg`` call; if it fails (it returns nothing when one image is
    bad), it is split until the bad images are alone, and each image the device rejects is decoded by PIL
    (``decode_rgb``, as the CPU path would); one PIL rejects too leaves the batch and is counted undecodable in its
    shard's counts and errors (on the shard's last batch: one decoder must see all of a shard's batches). Images of
    one size are resized together.
    """

    def __init__(self, recipes: Sequence[Recipe], device: str) -> None:
        self.recipes, self.device = list(dict.fromkeys(recipes)), device
        self.lost: dict[str, list[tuple[str, str, str]]] = {}  # shard → (key, reason, detail) not yet reported

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images, failures = self.decode(batch)
        shard = batch["shard"]
        self.lost.setdefault(shard, []).extend(
            (batch["keys"][i], "undecodable_image", detail) for i, detail in failures.items()
        )
        keep = [i for i, image in enumerate(images) if image is not None]
        out = {k: v for k, v in batch.items() if k not in ("payload", "offsets", "decoded")}
        out["keys"] = [batch["keys"][i] for i in keep]
        out["wnids"] = [batch["wnids"][i] for i in keep]
        kept = [image for image in images if image is not None]
        out["images"] = {r: self.preprocess(r, kept) if kept else None for r in self.recipes}
        if batch["last"]:
            lost = self.lost.pop(shard, [])
            out["counts"] = {**batch["counts"], "undecodable": batch["counts"]["undecodable"] + len(lost)}
            out["errors"] = [*batch["errors"], *lost]
        return out

    def decode(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        """Each image as uint8 (3, H, W) on the device, None where it cannot be decoded; the reasons by position."""
        offsets, decoded = batch["offsets"], batch["decoded"]
        images: list[torch.Tensor | None] = [None] * len(batch["keys"])
        for i, image in decoded.items():
            images[i] = image.to(self.device, non_blocking=True)
        jpegs = [i for i in range(len(images)) if i not in decoded]
        failures: dict[int, str] = {}
        if not jpegs:
            return images, failures
        data = [batch["payload"][offsets[i] : offsets[i + 1]] for i in jpegs]
        for i, image in zip(jpegs, self._decode_all(data), strict=True):
            if isinstance(image, str):
                failures[i] = image
            else:
                images[i] = image
        return images, failures

    def _decode_all(self, data: list[torch.Tensor]) -> list[torch.Tensor | str]:
        """Each JPEG decoded, or why not. One bad JPEG fails a whole ``decode_jpeg`` call, so a failed call is split
        in halves until each bad one is alone (a few calls per bad image, not one per image); the device decoder
        rejecting it, PIL decides, as on the CPU path."""
        try:
            return list(_decode_jpeg(data, self.device))
        except Exception:
            if len(data) > 1:
                half = len(data) // 2
                return self._decode_all(data[:half]) + self._decode_all(data[half:])
        try:
            rgb = np.asarray(decode_rgb(data[0].numpy().tobytes()))
        except Exception as exc:  # PIL raises many types for broken images
            return [f"{type(exc).__name__}: {exc}"]
        return [torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).to(self.device)]

    def preprocess(self, recipe: Recipe, images: list[torch.Tensor]) -> torch.Tensor:
        """float32 (B, 3, crop, crop) on the device: ``recipe`` applied to each image, images of one size at once."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for j, image in enumerate(images):
            by_size.setdefault((int(image.shape[-2]), int(image.shape[-1])), []).append(j)
        out = torch.empty(len(images), 3, recipe.crop, recipe.crop, device=self.device)
        for group in by_size.values():
            out[torch.as_tensor(group, device=self.device)] = recipe.apply(torch.stack([images[j] for j in group]))
        return out


def _identity(batch: Any) -> Any:
    return batch


def worker_context() -> str | None:
    """How DataLoader workers start: forked (the default, fastest) from a single-threaded process; from a forkserver
    once this process runs other threads or has loaded gRPC or Ray. A fork copies one thread and every lock as it
    was, and the children died at start ("DataLoader worker exited unexpectedly with exit code 1"): in any process
    that had run a Prefect flow (its API client, event and log threads) — so inference with decode workers inside
    the infer task failed — and after Ray or gRPC (their at-fork handlers)."""
    import sys
    import threading

    threaded = threading.active_count() > 1
    return "forkserver" if threaded or any(name in sys.modules for name in ("grpc", "ray")) else None


def make_loader(stream: ShardStream, workers: int, pin: bool) -> Any:
    kwargs: dict[str, Any] = {"prefetch_factor": 4, "multiprocessing_context": worker_context()} if workers else {}
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, pin_memory=pin, collate_fn=_identity, **kwargs
    )
