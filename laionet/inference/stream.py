"""One streaming pass of inference over shards: each batch of the loader (``laionet.inference.batches``) is moved to
the device once per recipe and fed to every model the shard still needs (``laionet.inference.runner``); when a
shard's last batch arrives each model's outputs (``<shard>.npy``, ``<shard>.keys.parquet``,
``<shard>.predictions.parquet``) are written, then its record ``_parts/<shard>.json``. Also the settings of a run
(``InferConfig``) and its decode-worker default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from laionet.core.manifest import atomic_path, join, part_stem, write_parquet_atomic, write_part_record
from laionet.inference.batches import Decode, DeviceDecoder, ShardStream, decode_mode, make_loader
from laionet.inference.models import Recipe
from laionet.inference.runner import Runner


@dataclass
class InferConfig:
    """How inference runs (none of it changes the outputs beyond float rounding, except ``top_k``; the device decoder
    resizes within 2 uint8 levels of PIL's, see ``Recipe.apply``)."""

    device: str = "auto"  # auto: cuda if available
    precision: str = "auto"  # auto (fp16 on a GPU, fp32 on a CPU) | fp32 | fp16 | bf16 (autocast)
    batch_size: int | None = None  # images per batch; auto: 256 on a GPU, 32 on a CPU
    workers: int | None = None  # decode processes (0: in-process); auto: see default_workers
    top_k: int = 5
    decode: Decode = "auto"  # auto: device (nvjpeg) on a GPU, else cpu (PIL in the workers) | cpu | device


def default_workers(device: str) -> int:
    """Decode processes: all cores but one feeding a GPU. On a CPU the model needs the cores: decode in-process up to
    4 cores (a separate decoder process made a 2-core machine 13% slower), else a quarter of them."""
    cores = os.cpu_count() or 1
    if device != "cpu":
        return max(1, cores - 1)
    return 0 if cores <= 4 else cores // 4


def shard_stem(shard: str) -> str:
    return part_stem(shard.removesuffix(".tar"))


def _write_outputs(out_dir: str, stem: str, parts: list[dict[str, Any]], dim: int) -> list[str]:
    """Write one shard's outputs for one model; return the paths (predictions last, when the model has them)."""
    keys = [k for p in parts for k in p["keys"]]
    emb = np.concatenate([p["emb"] for p in parts]) if keys else np.zeros((0, dim), np.float16)
    npy = join(out_dir, f"{stem}.npy")
    with atomic_path(npy) as tmp, fsspec.open(tmp, "wb") as f:
        np.save(f, emb.astype(np.float16))
    keys_path = join(out_dir, f"{stem}.keys.parquet")
    write_parquet_atomic(pa.table({"key": pa.array(keys, pa.string())}), keys_path)
    outputs = [npy, keys_path]
    if any("topk" in p for p in parts):
        topk = np.concatenate([p["topk"] for p in parts])
        scores = np.concatenate([p["scores"] for p in parts])
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "topk": pa.array(list(topk), pa.list_(pa.int32())),
                "scores": pa.array(list(scores), pa.list_(pa.float32())),
                "own_score": pa.array(np.concatenate([p["own"] for p in parts]), pa.float32()),
            }
        )
        path = join(out_dir, f"{stem}.predictions.parquet")
        write_parquet_atomic(table, path)
        outputs.append(path)
    return outputs


def run(
    todo: dict[str, list[str]],
    runners: dict[str, Runner],
    out_dirs: dict[str, str],
    hashes: dict[tuple[str, str], str],
    skip: set[str],
    config: InferConfig,
    device: str,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Stream the shards of ``todo`` through the models each still needs; write outputs and records per shard. With
    nothing to do it only reports ``progress`` as done."""
    if not todo:
        if progress:
            progress(1, 1)
        return
    batch_size = config.batch_size or (256 if device.startswith("cuda") else 32)
    workers = config.workers if config.workers is not None else default_workers(device)
    recipes = list(dict.fromkeys(r.model.recipe for r in runners.values()))
    decode = decode_mode(config.decode, device)
    stream = ShardStream(list(todo), recipes, skip, batch_size, decode=decode)
    decoder = DeviceDecoder(recipes, device) if decode == "device" else None
    bar = tqdm(total=len(todo), desc="infer", unit="shard", disable=None)
    done = 0
    for batch in make_loader(stream, min(workers, len(todo)), device.startswith("cuda")):
        if decoder is not None:  # decode and preprocess on the device: the batch the CPU path would have given
            batch = decoder(batch)
        shard = batch["shard"]
        on_device: dict[Recipe, Any] = {}
        for spec in todo[shard]:
            runner = runners[spec]
            recipe = runner.model.recipe
            if batch["images"][recipe] is None:
                continue
            if recipe not in on_device:  # one host-to-device copy per recipe, shared by the models using it
                x = batch["images"][recipe].to(device, non_blocking=True)
                on_device[recipe] = x.contiguous(memory_format=torch.channels_last) if runner.cuda else x
            try:
                runner.add(shard, batch["keys"], batch["wnids"], on_device[recipe])
            except Exception as exc:  # name the model and the shard: a fanned-out run fails on one of many
                raise RuntimeError(f"model {spec!r} failed on shard {shard}: {type(exc).__name__}: {exc}") from exc
        if not batch["last"]:
            continue
        counts = batch["counts"]
        for spec in todo[shard]:
            runner = runners[spec]
            parts = runner.buffers.pop(shard, [])
            outputs = _write_outputs(out_dirs[spec], shard_stem(shard), parts, runner.model.dim)
            model = runner.model
            record = {
                "config_hash": hashes[shard, spec],
                "output": outputs[-1],
                "outputs": outputs,
                "rows_in": counts["read"],
                "rows_out": sum(len(p["keys"]) for p in parts),
                "dropped": {k: v for k, v in counts.items() if k != "read" and v},
                "truncated": bool(batch["truncated"]),
                "decode": decode,
                "model": {
                    "dim": model.dim,
                    "recipe": json.loads(json.dumps(asdict(model.recipe))),
                    "classes": None if model.class_index is None else len(model.class_index),
                    **{k: v for k, v in model.info.items() if k in ("timm_name", "paper_name", "group", "note")},
                },
            }
            write_part_record(out_dirs[spec], shard_stem(shard), record)
        bar.update(1)
        done += 1
        if progress:  # not bar.n: a disabled bar (no terminal) does not count
            progress(done, len(todo))
    bar.close()
