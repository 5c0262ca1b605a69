"""``laionet`` commands of the Section 4 diagnostics: text-alone, selection-frequency, filtered-variants.

Each command unpacks its options into explicit keyword arguments of a driver in ``laionet.diagnostics``; the root
app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from laionet.cli.common import echo_manifest, fail

app = typer.Typer()


@app.command("text-alone")
def text_alone_command(
    captions: Annotated[
        str, typer.Option(help="Labelled captions: ImageNet-Captions JSON, or a parquet with key, text, wnid.")
    ],
    catalog: Annotated[str, typer.Option(help="Catalog parquet (synset texts of every class).")],
    out: Annotated[str, typer.Option(help="Output directory: per_caption, bins, histogram, summary + manifest.")],
    encoder: Annotated[str, typer.Option(help="Text encoder: minilm (offline), mpnet, clip, st:<name>, ...")] = (
        "minilm"
    ),
    batch_size: Annotated[int, typer.Option(help="Captions per matrix product with the class embeddings.")] = 4096,
    bin_width: Annotated[float, typer.Option(help="Width of the own-similarity bins (Fig. 9).")] = 0.05,
    tolerance: Annotated[float, typer.Option(help="Mean share of more-similar classes counted as ≈ 0.")] = 0.005,
) -> None:
    """Paper Section 4.2 (Fig. 9): each caption's similarity to its own synset text and the share of the other classes
    more similar to it; per bin of similarity the mean share, and the sufficient similarity above which it is ≈ 0."""
    from laionet.diagnostics.text_alone import run_text_alone
    from laionet.selection.encoders import EncoderError

    try:
        manifest = run_text_alone(captions, catalog, out, encoder=encoder, batch_size=batch_size,
                                  bin_width=bin_width, tolerance=tolerance)  # fmt: skip
    except (EncoderError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)
    sufficient = manifest.extra["sufficient_similarity"]
    typer.echo(f"  sufficient similarity: {sufficient if sufficient is not None else 'none'}; "
               f"shares over {manifest.extra['denominator']}")  # fmt: skip


@app.command("selection-frequency")
def selection_frequency_command(
    compare: Annotated[
        list[str],
        typer.Option(help="A comparison, repeatable: A,B,X,INTRA_DIR (an 'intra-class' output of A vs B at x=X)."),
    ],
    out: Annotated[str, typer.Option(help="Output directory: proportions.parquet (+ pooled.parquet) + manifest.")],
    pooled: Annotated[
        list[str] | None,
        typer.Option(help="Pooled pairs of a dataset (Fig. 8a), repeatable: NAME,EMBEDDINGS_GLOB,LABELS_PARQUET."),
    ] = None,
    x_label: Annotated[str, typer.Option(help="What x is.")] = "average MTurk selection frequency",
    seed: Annotated[int, typer.Option(help="Random seed of the pooled resampling.")] = 0,
) -> None:
    """Paper Section 4.1 (Fig. 8): intra-class comparisons against ImageNetV2 versions collected against their
    selection frequency, with Wilson intervals on each proportion; pooled pair similarities per dataset."""
    from laionet.diagnostics.selection_frequency import Comparison, run_selection_frequency

    try:
        items = []
        for text in compare:
            a, b, x, intra = text.split(",", 3)
            items.append(Comparison(a=a, b=b, x=float(x), intra_dir=intra))
        sets = {}
        for text in pooled or []:
            name, emb, labels = text.split(",", 2)
            sets[name] = (emb, labels)
    except ValueError:
        fail("--compare takes A,B,X,INTRA_DIR and --pooled NAME,EMBEDDINGS_GLOB,LABELS_PARQUET")
    try:
        manifest = run_selection_frequency(items, out, pooled=sets or None, x_label=x_label, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command("filtered-variants")
def filtered_variants_command(
    candidates: Annotated[str, typer.Option(help="Candidate index parquet (key, wnid, class_index, text_similarity).")],
    image_scores: Annotated[str, typer.Option(help="Predictions glob/file with key, own_score (image→synset).")],
    out: Annotated[str, typer.Option(help="Output root: <out>/laionet-t<threshold>/labels.parquet per variant.")],
    text_threshold: Annotated[list[float], typer.Option(help="Text threshold, repeatable.")] = [  # noqa: B006
        0.72,
        0.76,
        0.79,
        0.81,
    ],
    target: Annotated[int | None, typer.Option(help="Samples per variant (default: the strictest one's).")] = None,
) -> None:
    """Image+text-filtered variants (Appendix D): per text threshold, the image threshold that keeps exactly TARGET
    samples; written like 'laionet variants' so accuracy and intra-class similarity run on them unchanged."""
    from laionet.diagnostics.filtered import run_filtered_variants

    try:
        manifests = run_filtered_variants(candidates, image_scores, out, text_thresholds=text_threshold, target=target)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for manifest in manifests:
        echo_manifest(manifest)
        typer.echo(f"  text > {manifest.config['text_threshold']}, image > {manifest.extra['image_threshold']:.4f}")
