"""``laionet`` commands of the selection stages: similarity, select.

Each command unpacks its options into explicit keyword arguments of a driver in ``laionet.selection``; the root
app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from laionet.cli.common import Precision, echo_manifest, fail

app = typer.Typer()


@app.command()
def similarity(
    matches: Annotated[str, typer.Option(help="Output directory of `laionet match`.")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet (synset texts).")],
    out: Annotated[
        str,
        typer.Option(
            help="Output directory (one per encoder; the flows use <run>/similarity/<encoder slug>); "
            "`laionet select --similarity` takes the same path."
        ),
    ],
    encoder: Annotated[
        str,
        typer.Option(
            help="minilm (offline default), mpnet, clip (ViT-B-32-quickgelu/openai), 'st:<name or dir>', "
            "'open_clip:<model>\\[@<tag or checkpoint>]'."
        ),
    ] = "minilm",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Captions per forward pass (default per backend).")] = None,
    precision: Annotated[
        Precision,
        typer.Option(help="auto (GPU: fp16; CPU: bf16 where native, else fp32), fp32, fp16, bf16."),
    ] = "auto",
    caption_embeddings: Annotated[
        str | None, typer.Option(help="Glob of precomputed caption embeddings (LAION text_emb_<i>.npy).")
    ] = None,
    caption_metadata: Annotated[
        str | None, typer.Option(help="Glob of their metadata_<i>.parquet (url + caption columns, same row order).")
    ] = None,
    synset_embeddings: Annotated[
        str | None, typer.Option(help=".npy of synset-text embeddings in catalog order (then no text model loads).")
    ] = None,
) -> None:
    """Cosine similarity of every matched caption to its classes' synset texts, stored once per encoder."""
    from laionet.selection.encoders import EncoderError
    from laionet.selection.similarity import SimilarityConfig, run_similarity

    config = SimilarityConfig(
        encoder=encoder,
        device=device,
        batch_size=batch_size,
        precision=precision,
        caption_embeddings=caption_embeddings,
        caption_metadata=caption_metadata,
        synset_embeddings=synset_embeddings,
    )
    try:
        manifest = run_similarity(matches, catalog, out, config)
    except (EncoderError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command()
def select(
    matches: Annotated[str, typer.Option(help="Output directory of `laionet match`.")],
    similarity: Annotated[str, typer.Option(help="Output directory of `laionet similarity` (its --out).")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet.")],
    out: Annotated[str, typer.Option(help="Output directory: laionet.parquet, class_frequency, sweep, histogram.")],
    threshold: Annotated[
        str, typer.Option(help="'auto' (paper value for CLIP/MPNet, else calibrated) or a number; keep iff sim > t.")
    ] = "auto",
    multi_label: Annotated[
        Literal["drop", "best"], typer.Option(help="drop (paper) or best (keep the most similar class).")
    ] = "drop",
    nsfw_keep: Annotated[str, typer.Option(help="Comma-separated NSFW tags to keep; '' keeps every row.")] = "UNLIKELY",
    calibration: Annotated[
        Literal["knee", "coverage"],
        typer.Option(help="knee or coverage (used when the threshold is calibrated)."),
    ] = ("knee"),
    top_k: Annotated[int, typer.Option(help="Rows per class of the top-k variant (0: none).")] = 50,
) -> None:
    """Apply the selection rules and threshold; write the LAIONet index, class frequencies and the sweep."""
    from laionet.selection.select import SelectionConfig, run_select

    try:
        value: float | str = threshold if threshold == "auto" else float(threshold)
        config = SelectionConfig.model_validate(
            {
                "threshold": value,
                "multi_label": multi_label,
                "nsfw_keep": [t for t in nsfw_keep.split(",") if t] or None,
                "calibration": calibration,
                "top_k": top_k or None,
            }
        )
        manifest = run_select(matches, similarity, catalog, out, config)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)
    extra = manifest.extra
    typer.echo(f"  threshold {extra['threshold']:.3f} ({extra['threshold_rule']}); {extra['classes']} classes")
