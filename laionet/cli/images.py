"""``laionet`` commands of the image stages: download, ingest, verify, ocr.

Each command unpacks its options into explicit keyword arguments of a driver in ``laionet.images``; the root app in
``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from laionet.cli.common import WORKERS_HELP, echo_manifest, fail

app = typer.Typer()


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
    allow_host: Annotated[
        list[str] | None,
        typer.Option(help="HOST[:PORT] fetched even on a loopback/private address (a local mirror); repeatable."),
    ] = None,
    max_bytes: Annotated[int, typer.Option(help="Largest response body in bytes (larger: too_large).")] = 20_000_000,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image in pixels, read from its header (larger: too_many_pixels).")
    ] = 50_000_000,
) -> None:
    """Download the images of an index into RGB WebDataset shards; re-running retries transient failures only.

    Only http(s) URLs of public addresses are fetched (see the README's "Security"); refusals are counted by reason."""
    import sys

    from laionet.images.attempt import DownloadConfig
    from laionet.images.download import run_download

    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    if (main is not None and main.name in ("laionet", "laionet.__main__")) or Path(sys.argv[0]).name == "laionet":
        # this process is the `laionet download` program and runs the download alone: the shards' final rewrite
        # imports webdataset, which imports torch when it can (the CUDA build: peak RSS 1041 vs 310 MB, for nothing);
        # keep torch out, as the download's own children do (not where the app was imported: a test, a notebook)
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    settings: dict[str, Any] = {
        "image_size": image_size,
        "threads": threads,
        "samples_per_shard": samples_per_shard,
        "timeout": timeout,
        "attempts": attempts,
        "respect_opt_out": respect_opt_out,
        "allow_host": allow_host or [],
        "max_bytes": max_bytes,
        "max_pixels": max_pixels,
    }
    if processes:
        settings["processes"] = processes
    try:
        manifest = run_download(index, out, DownloadConfig(**settings))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command()
def ingest(
    kind: Annotated[
        Literal["imagenet-val", "imagenetv2", "imagenet-captions"], typer.Argument(help="The reference dataset.")
    ],
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
    from laionet.images.references import ingest as run_ingest

    given = {"root": root, "labels": labels, "class_info": class_info, "captions": captions, "images": images}
    needed = {"imagenet-val": ("root", "labels"), "imagenetv2": ("root", "class_info"),
              "imagenet-captions": ("captions", "images")}.get(kind)  # fmt: skip
    if needed is None:
        fail(f"unknown reference dataset {kind!r}; expected imagenet-val, imagenetv2 or imagenet-captions")
        return
    missing = [f"--{n.replace('_', '-')}" for n in needed if given[n] is None]
    if missing:
        fail(f"{kind} needs {' and '.join(missing)}")
    paths = {n: given[n] for n in needed}
    try:
        manifest = run_ingest(kind, out, samples_per_shard, **paths)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command()
def verify(
    shards: Annotated[str, typer.Option(help="Directory of .tar shards (download or ingest output).")],
    out: Annotated[str, typer.Option(help="Output directory: quarantine.parquet + manifest.")],
) -> None:
    """Read every shard: tar integrity, decodable images, metadata; quarantine bad samples with their reason."""
    from laionet.images.verify import run_verify

    try:
        manifest = run_verify(shards, out)
    except FileNotFoundError as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command()
def ocr(
    shards: Annotated[str, typer.Option(help="Directory of .tar shards.")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet (class head names).")],
    out: Annotated[str, typer.Option(help="Output directory: one flags parquet per shard + manifest.")],
    workers: Annotated[
        str,
        typer.Option(
            help=f"{WORKERS_HELP}: shards OCR'd at once, one per process (1: as 0); auto: one per core, at most one "
            "per 4 shards, 1 thread each (the pipeline's default: the fastest on many shards)."
        ),
    ] = "0",
    device: Annotated[
        str,
        typer.Option(
            help="ONNX Runtime device: cpu, auto (CUDA where onnxruntime-gpu is installed), cuda or cuda:<i>."
        ),
    ] = "cpu",
) -> None:
    """Flag samples whose image shows their class name as text (RapidOCR, offline); evaluation excludes them."""
    from laionet.images.ocr import ocr_providers, run_ocr

    try:
        ocr_providers(device)  # an unknown or unavailable device fails here, in one line
    except ValueError as exc:
        fail(str(exc))
    try:
        manifest = run_ocr(shards, catalog, out, workers=_ocr_workers(workers), device=device)
    except FileNotFoundError as exc:
        fail(str(exc))
    echo_manifest(manifest)
    typer.echo(f"  flagged: {manifest.extra['flagged']}")


def _ocr_workers(text: str) -> int | Literal["auto"]:
    """``--workers``: ``auto``, or a number (0 and 1: one process)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        number = int(text)
    except ValueError:
        fail(f"--workers {text!r}: expected a number (0 or more) or 'auto'")
    if number < 0:
        fail(f"--workers {number}: expected a number (0 or more) or 'auto'")
    return max(1, number)
