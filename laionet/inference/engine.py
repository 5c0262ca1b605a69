"""Streaming batched inference over WebDataset shards: image embeddings, classifier top-k, CLIP zero-shot.

One pass over the shards feeds every model. Decoding happens once per image (``laionet.inference.batches``), each
DataLoader worker process taking whole shards: on the CPU in the workers, or — ``decode="device"``, the default on a
GPU — batched on the device, the workers only reading the bytes; every distinct preprocessing ``Recipe`` among the
models is applied once per image and its tensor shared by all models that use it. The main process moves each batch to
the device once per recipe (pinned memory, non-blocking copies, channels-last on a GPU; ``laionet.inference.stream``),
runs the models under autocast (fp16 on a GPU; fp32 on a CPU unless bf16 is asked for; ``laionet.inference.runner``),
and collects outputs per (shard, model). When a shard's last batch arrives its outputs are written, per model, into
``<out_root>/<model slug>/`` (``laionet.core.layout``):

* ``<shard>.npy`` float16 (N, D) L2-normalised embeddings and ``<shard>.keys.parquet`` (``key``);
* ``<shard>.predictions.parquet``: ``key``, ``topk`` (list<int32> class indices, best first), ``scores``
  (list<float32>: probabilities for classifiers, cosine similarities for CLIP zero-shot), ``own_score`` (float32:
  the score of the sample's own class — its wnid in the shard's json — NaN when it has none among the model's
  classes; for CLIP this is the image-to-own-synset similarity of the paper's Appendix C);
* ``_parts/<shard>.json``: the record that the shard is done (written last), with its counts.

Each model directory gets a ``_manifest.json`` when all its shards are done, and ``<out_root>/_manifest.json``
summarises the call (its models; samples in / out / skipped are the same for every model).

This module is the stage driver (``run_inference``): which (shard, model) pairs are left, the models, the lock and the
manifests. Every file is written under a temporary name and renamed. A re-run skips (shard, model) pairs whose record
matches the shard (size, quarantined keys) and the settings; a model's ``_manifest.json`` is written when all its
shards are done. Samples are skipped and counted when quarantined (``laionet verify``) or undecodable; outputs are
keyed by ``key``, never by position. On a GPU, out-of-memory halves the batch for that model instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch

from laionet.core.layout import slug
from laionet.core.manifest import (
    Manifest,
    Timer,
    config_hash,
    join,
    read_manifest,
    read_part_record,
    write_manifest,
)
from laionet.core.runtime import tune_cpu
from laionet.core.stage import begin, input_identity, prune, prune_records, require_file_input, stage_lock
from laionet.core.tables import read_columns
from laionet.images.shard_list import list_shards
from laionet.inference.batches import check_decode
from laionet.inference.models import ImageModel, canonical_model_spec, load_image_model
from laionet.inference.runner import Runner
from laionet.inference.stream import InferConfig, run, shard_stem

ModelBuilder = Callable[[str], ImageModel]


def _device(device: str) -> str:

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def read_quarantine(path: str | None) -> set[str]:
    """Keys quarantined by ``laionet verify`` (``quarantine.parquet``: shard, key, reason); ``*`` marks a truncated
    shard, not a key."""
    if not path:
        return set()
    return set(read_columns(path, ["key"])["key"].astype(str)) - {"*"}


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
        run(todo, runners, out_dirs, hashes, skip, config, device, progress)
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
        run(todo, runners, out_dirs, hashes, skip, config, device, progress)
        return _write_manifests(shards, all_shards, specs, out_root, out_dirs, skip, quarantine, config, device,
                                precision, timer)  # fmt: skip


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
) -> tuple[dict[str, list[str]], dict[str, Runner], dict[tuple[str, str], str]]:
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
    runners: dict[str, Runner] = {}
    if todo:
        for spec in specs:
            model = builder(spec, class_texts=texts, class_index=index)
            if model.kind == "open_clip" and wnids is not None:
                model.info["class_wnids"] = wnids
            runners[spec] = Runner(model.to(device, channels_last=True), device, precision, config.top_k)
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
