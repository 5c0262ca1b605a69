"""``laionet infer``: image models over shards in one streaming pass (``laionet.inference``).

The root app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from laionet.cli.common import WORKERS_HELP, Precision, echo_manifest, fail

app = typer.Typer()

Decode = Literal["auto", "cpu", "device"]  # laionet.inference.batches.Decode (not imported: torch is slow to load)


@app.command()
def infer(
    shards: Annotated[str, typer.Option(help="Directory or glob of .tar shards (downloaded or ingested).")],
    out: Annotated[str, typer.Option(help="Output root: one directory per model (<out>/<model slug>/).")],
    model: Annotated[
        list[str],
        typer.Option(
            help="Model spec, repeatable: efficientnet_lite0 (offline default), a zoo name (resnet50, "
            "convnext_base_224_22k, ...), timm:<name>\\[@<weights file>|@random], clip, "
            "open_clip:<model>\\[@<tag|file>]."
        ),
    ] = ["efficientnet_lite0"],  # noqa: B006 - typer needs a list default
    catalog: Annotated[
        str | None, typer.Option(help="Catalog parquet: zero-shot prompts (synset texts) for open_clip models.")
    ] = None,
    quarantine: Annotated[
        str | None, typer.Option(help="quarantine.parquet from 'laionet verify': those keys are skipped.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda, cuda:1, ...")] = "auto",
    precision: Annotated[Precision, typer.Option(help="auto (fp16 GPU, fp32 CPU), fp32, fp16, bf16.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (auto: 256 GPU, 32 CPU).")] = None,
    workers: Annotated[
        int | None, typer.Option(help=f"{WORKERS_HELP}: image decoding (default: cores-1 on a GPU; 0 on ≤4 CPU cores).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Classes kept per image, best first.")] = 5,
    decode: Annotated[
        Decode,
        typer.Option(
            help="Where JPEGs are decoded and preprocessed: auto (device on a GPU, with nvjpeg), cpu (in the workers), "
            "device (batched on --device; the workers only read the bytes)."
        ),
    ] = "auto",
) -> None:
    """Run image models over shards in one streaming pass (each image decoded once, shared by all models): per shard
    and model, L2-normalised float16 embeddings (.npy + .keys.parquet) and top-k predictions with the score of the
    sample's own class (.predictions.parquet). Resumable per shard; models and weights are checked first."""
    from laionet.inference.engine import run_inference
    from laionet.inference.models import ModelError
    from laionet.inference.stream import InferConfig

    config = InferConfig(
        device=device, precision=precision, batch_size=batch_size, workers=workers, top_k=top_k, decode=decode
    )
    try:
        manifests = run_inference(shards, model, out, catalog_path=catalog, quarantine=quarantine, config=config)
    except (ModelError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for spec, manifest in manifests.items():
        typer.echo(f"{spec}:")
        echo_manifest(manifest)
