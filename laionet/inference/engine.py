"""Streaming batched inference over WebDataset shards: image embeddings, classifier top-k, CLIP zero-shot.

One pass over the shards feeds every model. Decoding happens once per image (``laionet.inference.batches``), each
DataLoader worker process taking whole shards: on the CPU in the workers, or — ``decode="device"``, the default on a
GPU — batched on the device, the workers only reading the bytes; every distinct preprocessing ``Recipe`` among the
models is applied once per image and its tensor shared by all models that use it. The main process moves each batch to
the device once per recipe (pinned memory, non-blocking copies, channels-last on a GPU), runs the models under autocast
(fp16 on a GPU; fp32 on a CPU unless bf16 is asked for), and collects outputs per (shard, model). When a shard's
last batch arrives its outputs are written, per model, into ``<out_root>/<model slug>/`` (``laionet.core.layout``):

* ``<shard>.npy`` float16 (N, D) L2-normalised embeddings and ``<shard>.keys.parquet`` (``key``);
* ``<shard>.predictions.parquet``: ``key``, ``topk`` (list<int32> class indices, best first), ``scores``
  (list<float32>: probabilities for classifiers, cosine similarities for CLIP zero-shot), ``own_score`` (float32:
  the score of the sample's own class — its wnid in the shard's json — NaN when it has none among the model's
  classes; for CLIP this is the image-to-own-synset similarity of the paper's Appendix C);
* ``_parts/<shard>.json``: the record that the shard is done (written last), with its counts.

Each model directory gets a ``_manifest.json`` when all its shards are done, and ``<out_root>/_manifest.json``
summarises the call (its models; samples in / out / skipped are the same for every model).

Every file is written under a temporary name and renamed. A re-run skips (shard, model) pairs whose record matches
the shard (size, quarantined keys) and the settings; a model's ``_manifest.json`` is written when all its shards are
done. Samples are skipped and counted when quarantined (``laionet verify``) or undecodable; outputs are keyed by
``key``, never by position. On a GPU, out-of-memory halves the batch for that model instead of failing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from laionet.core.layout import slug
from laionet.core.manifest import (
    Manifest,
    Timer,
    atomic_path,
    config_hash,
    join,
    part_stem,
    read_manifest,
    read_part_record,
    write_manifest,
    write_parquet_atomic,
    write_part_record,
)
from laionet.core.runtime import tune_cpu
from laionet.core.stage import begin, input_identity, prune, prune_records, require_file_input, stage_lock
from laionet.core.tables import read_columns
from laionet.images.shard_list import list_shards
from laionet.inference.batches import Decode, DeviceDecoder, ShardStream, check_decode, decode_mode, make_loader
from laionet.inference.models import ImageModel, Recipe, canonical_model_spec, load_image_model

ModelBuilder = Callable[[str], ImageModel]


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


def _device(device: str) -> str:

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_workers(device: str) -> int:
    """Decode processes: all cores but one feeding a GPU. On a CPU the model needs the cores: decode in-process up to
    4 cores (a separate decoder process made a 2-core machine 13% slower), else a quarter of them."""
    cores = os.cpu_count() or 1
    if device != "cpu":
        return max(1, cores - 1)
    return 0 if cores <= 4 else cores // 4


def read_quarantine(path: str | None) -> set[str]:
    """Keys quarantined by ``laionet verify`` (``quarantine.parquet``: shard, key, reason); ``*`` marks a truncated
    shard, not a key."""
    if not path:
        return set()
    return set(read_columns(path, ["key"])["key"].astype(str)) - {"*"}


def shard_stem(shard: str) -> str:
    return part_stem(shard.removesuffix(".tar"))


# ---------------------------------------------------------------------------------------------------------------------
# the models side (main process)


class _Runner:
    """One model on the device: forward with autocast and out-of-memory back-off; per-shard output buffers."""

    def __init__(self, model: ImageModel, device: str, precision: str, top_k: int) -> None:
        self.model, self.device, self.top_k = model, device, top_k
        self.cuda = device.startswith("cuda")
        self.dtype = precision
        self.chunk: int | None = None
        wnids = model.info.get("class_wnids")
        self.column = {w: j for j, w in enumerate(wnids)} if wnids is not None else {}
        self.buffers: dict[str, list[dict[str, Any]]] = {}

    def _autocast(self) -> Any:

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.dtype)
        return torch.autocast("cuda" if self.cuda else "cpu", dtype=dtype) if dtype else nullcontext()

    def forward(self, x: Any) -> tuple[Any, Any]:

        chunk = self.chunk or len(x)
        while True:
            try:
                embs: list[Any] = []
                scores: list[Any] = []
                with torch.inference_mode(), self._autocast():
                    for start in range(0, len(x), chunk):
                        e, s = self.model.forward(x[start : start + chunk])
                        embs.append(e.float())
                        scores.append(None if s is None else s.float())
                return torch.cat(embs), (None if scores[0] is None else torch.cat(scores))
            except torch.cuda.OutOfMemoryError:
                if chunk <= 1:
                    raise
                chunk = max(1, chunk // 2)
                self.chunk = chunk
                torch.cuda.empty_cache()
                tqdm.write(f"[infer] {self.model.spec}: out of GPU memory, batch reduced to {chunk}")

    def add(self, shard: str, keys: list[str], wnids: list[str | None], x: Any) -> None:

        emb, scores = self.forward(x)
        out: dict[str, Any] = {"keys": keys, "emb": emb.half().cpu().numpy()}
        if scores is not None and self.model.class_index is not None:
            k = min(self.top_k, scores.shape[1])
            values, columns = scores.topk(k, dim=1)
            cols = torch.as_tensor([self.column.get(w, -1) if w else -1 for w in wnids], device=scores.device)
            own = torch.full((len(keys),), float("nan"), device=scores.device)
            has = cols >= 0
            own[has] = scores[torch.nonzero(has).squeeze(1), cols[has]]
            out["topk"] = self.model.class_index[columns.cpu().numpy()].astype(np.int32)
            out["scores"] = values.cpu().numpy().astype(np.float32)
            out["own"] = own.cpu().numpy().astype(np.float32)
        self.buffers.setdefault(shard, []).append(out)


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


def _shard_hashes(shards: list[str], specs: list[str], top_k: int, skip: set[str]) -> dict[tuple[str, str], str]:
    """What each (shard, model) output depends on: the shard (path, size, mtime), the model, top-k and the
    quarantined keys — each shard stat-ed and the quarantine hashed once, not once per model."""
    skipped = config_hash(sorted(skip))
    sizes = {s: input_identity(s) for s in shards}
    return {
        (s, spec): config_hash({"spec": spec, "top_k": top_k, "shard": s, "size": sizes[s], "skip": skipped})
        for s in shards
        for spec in specs
    }


_log = logging.getLogger("laionet.infer")


def run_inference(
    shards: str,
    models: Sequence[str],
    out_root: str,
    catalog_path: str | None = None,
    quarantine: str | None = None,
    config: InferConfig | None = None,
    builder: Callable[..., ImageModel] = load_image_model,
    only: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Manifest]:
    """Run every model over every shard of ``shards`` (a directory or glob of ``.tar``) into
    ``<out_root>/<model slug>/``; return each model's manifest.

    Args:
        models: model specs (``laionet.inference.models``); all are loaded (and their weights checked) before any
            shard is read.
        catalog_path: the class catalog; gives open_clip models their zero-shot prompts (synset texts).
        quarantine: ``quarantine.parquet`` of ``laionet verify``; its keys are skipped and counted.
        builder: ``builder(spec, class_texts=..., class_index=...)`` → ``ImageModel`` (injected in tests).
        only: process just these shards (paths or stems; a shard batch of a fanned-out run) and write no manifest;
            a final call without ``only`` finds every shard done, loads no model, and writes the manifests.
        progress: ``progress(done, total)`` after each shard of this call (e.g. a Prefect progress artifact).

    Raises:
        ModelError: unknown model or missing weights (before any shard is read).
        FileNotFoundError: no shards.
    """

    config = config or InferConfig()
    timer = Timer()
    _log.info("inference of %s over %s (shards: %s) → %s, %s", list(models), shards, only or "all", out_root, config)
    if not models:
        raise ValueError("no models given")
    all_shards = list_shards(shards)
    stems: dict[str, str] = {}
    for shard in all_shards:
        if shard_stem(shard) in stems:
            raise ValueError(
                f"shards {stems[shard_stem(shard)]} and {shard} share the name {shard_stem(shard)!r}; their outputs "
                "would collide (infer one shard directory at a time)"
            )
        stems[shard_stem(shard)] = shard
    if quarantine is not None:
        require_file_input(quarantine, "verify", hint="re-run `laionet verify`")
    skip = read_quarantine(quarantine)
    device = _device(config.device)
    from laionet.selection.encoders import resolve_precision

    # auto: fp16 autocast on a GPU; fp32 on a CPU. bf16 is 1.6x faster on this project's CPUs but moved the top-1
    # class of 8.5% of the demo's images (EfficientNet-Lite0): opt in with precision="bf16" for embeddings only.
    precision = (
        "fp32" if config.precision == "auto" and device == "cpu" else resolve_precision(config.precision, device)
    )
    check_decode(config.decode)  # before anything is written
    if device == "cpu":
        tune_cpu()
    texts = index = wnids = None
    if catalog_path:
        from laionet.text.catalog import read_catalog

        catalog = read_catalog(catalog_path)
        texts, index, wnids = list(catalog["synset_text"]), list(catalog["class_index"]), list(catalog["wnid"])
    specs = [canonical_model_spec(m) for m in dict.fromkeys(models)]  # an unknown name fails here, before anything
    out_dirs = {spec: join(out_root, slug(spec)) for spec in specs}
    # models are loaded (weights checked) only when there is work, and before anything is written or read
    todo, runners, hashes = _prepare(all_shards, specs, out_dirs, (texts, index, wnids), config, device, precision,
                                     builder, only, skip)  # fmt: skip
    targets = (out_root, *out_dirs.values())
    if only is not None:  # one shard group of a fanned-out run: disjoint shards, no lock; the final call takes it
        if todo:  # visibly incomplete until the final call writes the manifests (untouched when nothing changes)
            for target in targets:
                begin(target, "", locked=False)
        _run_or_report(todo, runners, out_dirs, hashes, skip, config, device, progress)
        return {}
    with stage_lock(out_root, "infer"):
        if not todo:  # every shard done: the manifests stand if they are those of these records (cached re-runs)
            current = _current_manifests(shards, all_shards, specs, out_root, out_dirs, skip, quarantine, config)
            if current is not None:
                if progress:  # nothing left to do: done
                    progress(1, 1)
                return current
        for target in targets:
            begin(target, "")
        _run_or_report(todo, runners, out_dirs, hashes, skip, config, device, progress)
        return _write_manifests(shards, all_shards, specs, out_root, out_dirs, skip, quarantine, config, device,
                                precision, timer)  # fmt: skip


def _run_or_report(
    todo: dict[str, list[str]],
    runners: dict[str, _Runner],
    out_dirs: dict[str, str],
    hashes: dict[tuple[str, str], str],
    skip: set[str],
    config: InferConfig,
    device: str,
    progress: Callable[[int, int], None] | None,
) -> None:
    if todo:
        _run(todo, runners, out_dirs, hashes, skip, config, device, progress)
    elif progress:  # nothing left to do: done
        progress(1, 1)


def _prepare(
    all_shards: list[str],
    specs: list[str],
    out_dirs: dict[str, str],
    classes: tuple[list[str] | None, list[int] | None, list[str] | None],
    config: InferConfig,
    device: str,
    precision: str,
    builder: Callable[..., ImageModel],
    only: Sequence[str] | None,
    skip: set[str],
) -> tuple[dict[str, list[str]], dict[str, _Runner], dict[tuple[str, str], str]]:
    """The (shard → models) still to run (of ``only``, when given), the loaded models if any, and the shard hashes.
    ``classes``: the catalog's synset texts, class indices and wnids (zero-shot prompts), or Nones."""
    texts, index, wnids = classes
    hashes = _shard_hashes(all_shards, specs, config.top_k, skip)
    wanted = None if only is None else set(only)
    todo: dict[str, list[str]] = {}
    for shard in all_shards:
        if wanted is not None and shard not in wanted and shard_stem(shard) not in wanted:
            continue
        need = [
            spec for spec in specs if read_part_record(out_dirs[spec], shard_stem(shard), hashes[shard, spec]) is None
        ]
        if need:
            todo[shard] = need
    runners: dict[str, _Runner] = {}
    if todo:
        for spec in specs:
            model = builder(spec, class_texts=texts, class_index=index)
            if model.kind == "open_clip" and wnids is not None:
                model.info["class_wnids"] = wnids
            runners[spec] = _Runner(model.to(device, channels_last=True), device, precision, config.top_k)
    return todo, runners, hashes


def _model_hash(spec: str, shards: str, quarantine: str | None, config: InferConfig, part_hashes: list[str]) -> str:
    settings = {"spec": spec, "top_k": config.top_k, "shards": shards, "quarantine": quarantine}
    return config_hash({**settings, "parts": part_hashes})


def _current_manifests(
    shards: str,
    all_shards: list[str],
    specs: list[str],
    out_root: str,
    out_dirs: dict[str, str],
    skip: set[str],
    quarantine: str | None,
    config: InferConfig,
) -> dict[str, Manifest] | None:
    """The models' manifests if each is the one its shards' records give and the summary exists; else None."""
    from laionet.core.stage import outputs_exist

    hashes = _shard_hashes(all_shards, specs, config.top_k, skip)
    found = {}
    for spec in specs:
        records = [read_part_record(out_dirs[spec], shard_stem(s), hashes[s, spec]) for s in all_shards]
        manifest = read_manifest(out_dirs[spec])
        if any(r is None for r in records) or manifest is None or not outputs_exist(manifest):
            return None
        if manifest.config_hash != _model_hash(spec, shards, quarantine, config, [r["config_hash"] for r in records]):  # type: ignore[index]
            return None
        found[spec] = manifest
    return found if read_manifest(out_root) is not None else None


def _write_manifests(
    shards: str,
    all_shards: list[str],
    specs: list[str],
    out_root: str,
    out_dirs: dict[str, str],
    skip: set[str],
    quarantine: str | None,
    config: InferConfig,
    device: str,
    precision: str,
    timer: Timer,
) -> dict[str, Manifest]:
    """Every shard done: each model's manifest (outputs of earlier shard lists removed), then the summary."""
    hashes = _shard_hashes(all_shards, specs, config.top_k, skip)
    manifests = {}
    for spec in specs:
        records = [read_part_record(out_dirs[spec], shard_stem(s), hashes[s, spec]) for s in all_shards]
        missing = [s for s, r in zip(all_shards, records, strict=True) if r is None]
        if missing:
            raise RuntimeError(f"{spec}: shards not completed: {missing[:5]} ({len(missing)} in all)")
        done = [r for r in records if r is not None]
        dropped: dict[str, int] = {}
        for r in done:
            for reason, n in r["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + int(n)
        settings = {"spec": spec, "top_k": config.top_k, "shards": shards, "quarantine": quarantine}
        manifest = Manifest(
            stage="infer",
            config={**settings, **{k: v for k, v in asdict(config).items() if k != "top_k"}},
            config_hash=_model_hash(spec, shards, quarantine, config, [r["config_hash"] for r in done]),
            inputs=all_shards + ([quarantine] if quarantine else []),
            outputs=[o for r in done for o in r["outputs"]],
            rows_in=sum(int(r["rows_in"]) for r in done),
            rows_out=sum(int(r["rows_out"]) for r in done),
            dropped=dropped,
            wall_time_s=timer.elapsed,
            extra={
                "device": device,
                "precision": precision,
                "truncated_shards": sum(bool(r.get("truncated")) for r in done),
                "decode": sorted({str(r.get("decode", "cpu")) for r in done}),
                **done[-1]["model"],
            },
        )
        prune(out_dirs[spec], manifest.outputs, ["*.npy", "*.parquet"])  # shards that are no longer in the input
        prune_records(out_dirs[spec], [shard_stem(s) for s in all_shards])
        write_manifest(out_dirs[spec], manifest)
        manifests[spec] = manifest
    first = manifests[specs[0]]
    summary = Manifest(
        stage="infer",
        config={"models": specs, "shards": shards, "quarantine": quarantine, "top_k": config.top_k},
        config_hash=config_hash({spec: m.config_hash for spec, m in manifests.items()}),
        inputs=first.inputs,
        outputs=[join(out_dirs[spec], "_manifest.json") for spec in specs],
        rows_in=first.rows_in,
        rows_out=first.rows_out,
        dropped=first.dropped,
        wall_time_s=timer.elapsed,
        extra={"models": {spec: out_dirs[spec] for spec in specs}, "device": device, "precision": precision},
    )
    write_manifest(out_root, summary)  # the whole call, for caches and the report: same counts for every model
    return manifests


def _run(
    todo: dict[str, list[str]],
    runners: dict[str, _Runner],
    out_dirs: dict[str, str],
    hashes: dict[tuple[str, str], str],
    skip: set[str],
    config: InferConfig,
    device: str,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Stream the shards of ``todo`` through the models each still needs; write outputs and records per shard."""
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
