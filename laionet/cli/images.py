"""``laionet`` commands for images and evaluation: download, ingest, verify, ocr, infer, accuracy, intra-class.

Registered on the app of ``laionet.cli`` (which imports this module); same conventions: explicit keyword arguments
into the drivers, one clear error line on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from laionet.cli import _echo_manifest, _fail, app


@app.command()
def accuracy(
    predictions: Annotated[str, typer.Option(help="Parquet glob with key, topk (list of class indices, best first).")],
    labels: Annotated[str, typer.Option(help="Parquet with key, class_index (e.g. the LAIONet index).")],
    out: Annotated[str, typer.Option(help="Output directory: per_class.parquet, summary.parquet, manifest.")],
    weights: Annotated[
        str | None, typer.Option(help="Parquet with class_index, share for LAION-weighted accuracy.")
    ] = None,
    flags: Annotated[
        str | None, typer.Option(help="Parquet with key, flagged (e.g. OCR); flagged are excluded.")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Per-class recall@1/5 and equally/LAION-weighted accuracy with paper (Wilson) and bootstrap intervals."""
    from laionet.evaluation import run_accuracy

    try:
        manifest = run_accuracy(predictions, labels, out, weights=weights, flags=flags, n_boot=n_boot, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _echo_manifest(manifest)


@app.command("intra-class")
def intra_class_command(
    embeddings_a: Annotated[str, typer.Option(help="Glob of <stem>.npy embeddings (with <stem>.keys.parquet), A.")],
    labels_a: Annotated[str, typer.Option(help="Parquet with key, class_index for A.")],
    embeddings_b: Annotated[str, typer.Option(help="Glob of embeddings of dataset B.")],
    labels_b: Annotated[str, typer.Option(help="Parquet with key, class_index for B.")],
    out: Annotated[str, typer.Option(help="Output directory.")],
    cap: Annotated[int, typer.Option(help="Images sampled per class (seeded, random).")] = 100,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of images per class.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Intra-class similarity of A and B, per-class differences, share of classes significantly lower/higher."""
    from laionet.evaluation import run_intra_class

    try:
        manifest = run_intra_class(embeddings_a, labels_a, embeddings_b, labels_b, out, cap, n_boot, seed)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _echo_manifest(manifest)
    for row in manifest.extra["proportions"]:
        share = f"A lower in {row['lower']:.1%}, higher in {row['higher']:.1%}"
        typer.echo(f"  {row['method']}: {share} of {row['classes']} classes")


@app.command()
def download(
    index: Annotated[str, typer.Option(help="Index parquet (key, url, text, wnid, class_index): the LAIONet index.")],
    out: Annotated[str, typer.Option(help="Output directory of WebDataset shards (NNNNNNNN.tar + .parquet).")],
    image_size: Annotated[int, typer.Option(help="Shorter side at most this many pixels (never upscaled).")] = 448,
    processes: Annotated[int | None, typer.Option(help="Download processes (default: all cores).")] = None,
    threads: Annotated[int, typer.Option(help="Threads per process.")] = 64,
    samples_per_shard: Annotated[int, typer.Option(help="Samples per shard.")] = 10_000,
    timeout: Annotated[int, typer.Option(help="Seconds per request.")] = 10,
    attempts: Annotated[int, typer.Option(help="Passes over transiently failed rows.")] = 2,
    respect_opt_out: Annotated[bool, typer.Option(help="Honour X-Robots-Tag noai/noindex directives.")] = True,
) -> None:
    """Download the images of an index into RGB WebDataset shards; re-running retries transient failures only."""
    from laionet.download import DownloadConfig, run_download

    settings: dict[str, Any] = {
        "image_size": image_size,
        "threads": threads,
        "samples_per_shard": samples_per_shard,
        "timeout": timeout,
        "attempts": attempts,
        "respect_opt_out": respect_opt_out,
    }
    if processes:
        settings["processes"] = processes
    try:
        manifest = run_download(index, out, DownloadConfig(**settings))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _echo_manifest(manifest)


@app.command()
def ingest(
    kind: Annotated[str, typer.Argument(help="imagenet-val, imagenetv2 or imagenet-captions.")],
    out: Annotated[str, typer.Option(help="Output directory of shards.")],
    root: Annotated[
        Path | None, typer.Option(help="Image folder (imagenet-val) or variant folder (imagenetv2).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="imagenet-val: '<file> <wnid>' lines or LOC_val_solution.csv.")
    ] = None,
    class_info: Annotated[Path | None, typer.Option(help="imagenetv2: class_info.json (cid → wnid).")] = None,
    captions: Annotated[Path | None, typer.Option(help="imagenet-captions: its JSON file.")] = None,
    images: Annotated[Path | None, typer.Option(help="imagenet-captions: its image folder.")] = None,
    samples_per_shard: Annotated[int, typer.Option(help="Samples per shard.")] = 10_000,
) -> None:
    """Convert a reference dataset (ImageNet val, ImageNetV2, ImageNet-Captions) into RGB WebDataset shards."""
    from laionet.references import ingest as run_ingest

    given = {"root": root, "labels": labels, "class_info": class_info, "captions": captions, "images": images}
    needed = {"imagenet-val": ("root", "labels"), "imagenetv2": ("root", "class_info"),
              "imagenet-captions": ("captions", "images")}.get(kind)  # fmt: skip
    if needed is None:
        _fail(f"unknown reference dataset {kind!r}; expected imagenet-val, imagenetv2 or imagenet-captions")
        return
    missing = [f"--{n.replace('_', '-')}" for n in needed if given[n] is None]
    if missing:
        _fail(f"{kind} needs {' and '.join(missing)}")
    paths = {n: given[n] for n in needed}
    try:
        manifest = run_ingest(kind, out, samples_per_shard, **paths)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _echo_manifest(manifest)


@app.command()
def verify(
    shards: Annotated[str, typer.Option(help="Directory of .tar shards (download or ingest output).")],
    out: Annotated[str, typer.Option(help="Output directory: quarantine.parquet + manifest.")],
) -> None:
    """Read every shard: tar integrity, decodable images, metadata; quarantine bad samples with their reason."""
    from laionet.verify import run_verify

    try:
        manifest = run_verify(shards, out)
    except FileNotFoundError as exc:
        _fail(str(exc))
    _echo_manifest(manifest)


@app.command()
def ocr(
    shards: Annotated[str, typer.Option(help="Directory of .tar shards.")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet (class head names).")],
    out: Annotated[str, typer.Option(help="Output directory: one flags parquet per shard + manifest.")],
) -> None:
    """Flag samples whose image shows their class name as text (RapidOCR, offline); evaluation excludes them."""
    from laionet.ocr import run_ocr

    try:
        manifest = run_ocr(shards, catalog, out)
    except FileNotFoundError as exc:
        _fail(str(exc))
    _echo_manifest(manifest)
    typer.echo(f"  flagged: {manifest.extra['flagged']}")


@app.command()
def infer(
    shards: Annotated[str, typer.Option(help="Directory or glob of .tar shards (downloaded or ingested).")],
    out: Annotated[str, typer.Option(help="Output root: one directory per model (<out>/<model slug>/).")],
    model: Annotated[
        list[str],
        typer.Option(
            help="Model spec, repeatable: efficientnet_lite0 (offline default), a zoo name (resnet50, "
            "convnext_base_224_22k, ...), timm:<name>[@<weights file>|@random], clip, open_clip:<model>[@<tag|file>]."
        ),
    ] = ["efficientnet_lite0"],  # noqa: B006 - typer needs a list default
    catalog: Annotated[
        str | None, typer.Option(help="Catalog parquet: zero-shot prompts (synset texts) for open_clip models.")
    ] = None,
    quarantine: Annotated[
        str | None, typer.Option(help="quarantine.parquet from 'laionet verify': those keys are skipped.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda, cuda:1, ...")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 GPU, fp32 CPU), fp32, fp16, bf16.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (auto: 256 GPU, 32 CPU).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decode processes (auto: cores-1 GPU; 0 CPU ≤4 cores).")] = None,
    top_k: Annotated[int, typer.Option(help="Classes kept per image, best first.")] = 5,
) -> None:
    """Run image models over shards in one streaming pass (each image decoded once, shared by all models): per shard
    and model, L2-normalised float16 embeddings (.npy + .keys.parquet) and top-k predictions with the score of the
    sample's own class (.predictions.parquet). Resumable per shard; models and weights are checked first."""
    from laionet.inference import InferConfig, run_inference
    from laionet.models import ModelError

    config = InferConfig(device=device, precision=precision, batch_size=batch_size, workers=workers, top_k=top_k)
    try:
        manifests = run_inference(shards, model, out, catalog_path=catalog, quarantine=quarantine, config=config)
    except (ModelError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for spec, manifest in manifests.items():
        typer.echo(f"{spec}:")
        _echo_manifest(manifest)
