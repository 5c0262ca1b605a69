"""``laionet`` commands of the evaluation stages: variants, accuracy, intra-class, and the paper's appendix
analyses recall-difference, own-similarity, relations.

Each command unpacks its options into explicit keyword arguments of a driver in ``laionet.evaluation`` and prints one
clear error line (naming the file or column at fault) on bad input; the root app in ``laionet.cli`` registers this
module's ``app``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from laionet.cli.common import echo_manifest, fail

app = typer.Typer()


@app.command()
def variants(
    shards: Annotated[str, typer.Option(help="Shard directory: <shard>.tar with <shard>.parquet listings.")],
    out: Annotated[str, typer.Option(help="Output root: <out>/<name>/labels.parquet (+ the filtered variant).")],
    name: Annotated[str, typer.Option(help="Name of the text-only variant.")] = "laionet",
    quarantine: Annotated[
        str | None, typer.Option(help="quarantine.parquet from 'laionet verify': those keys are left out.")
    ] = None,
    predictions: Annotated[
        str | None,
        typer.Option(
            help="Image filter: the filter model's predictions (inference directory or *.predictions.parquet glob). "
            "Without it only the text-only variant is written."
        ),
    ] = None,
    rule: Annotated[
        Literal["topk", "own_score"],
        typer.Option(help="topk: keep iff the class is in the model's top --k; own_score: score >= --threshold."),
    ] = "topk",
    k: Annotated[int, typer.Option(help="The k of the topk rule.")] = 5,
    threshold: Annotated[
        float | None, typer.Option(help="own_score rule: softmax probability (classifier) or cosine (CLIP).")
    ] = None,
    model: Annotated[str, typer.Option(help="Name of the filter model (recorded in the manifest).")] = (
        "efficientnet_lite0"
    ),
    filtered_name: Annotated[str | None, typer.Option(help="Name of the filtered variant (default <name>-image).")] = (
        None
    ),
) -> None:
    """The evaluated label sets (key, wnid, class_index): the text-only variant = every downloaded sample minus the
    quarantined ones; with --predictions, the image-filtered variant = those the image model agrees with (default:
    own class in the model's top-5). Counts by reason in each variant's manifest."""
    from pydantic import ValidationError

    from laionet.core.config import ImageFilter
    from laionet.evaluation.variants import run_variants

    try:
        settings = {"model": model, "rule": rule, "k": k, "threshold": threshold}
        image_filter = ImageFilter.model_validate(settings) if predictions else None
    except ValidationError as exc:
        error = exc.errors()[0]
        fail(f"invalid image filter --{'-'.join(map(str, error['loc']))}: {error['msg']}")
        return
    try:
        manifest = run_variants(
            shards, out, name=name, quarantine=quarantine, predictions=predictions, image_filter=image_filter,
            filtered_name=filtered_name,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    echo_manifest(manifest)
    if "filtered" in manifest.extra:
        f = manifest.extra["filtered"]
        dropped = ", ".join(f"{r}={n}" for r, n in f["dropped"].items())
        typer.echo(f"  {f['variant']}: {f['rows_out']} kept ({f['rule']}); dropped: {dropped}")


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
    from laionet.evaluation.accuracy import run_accuracy

    try:
        manifest = run_accuracy(predictions, labels, out, weights=weights, flags=flags, n_boot=n_boot, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)


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
    from laionet.evaluation.intra_class import run_intra_class

    try:
        manifest = run_intra_class(embeddings_a, labels_a, embeddings_b, labels_b, out, cap, n_boot, seed)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)
    for row in manifest.extra["proportions"]:
        share = f"A lower in {row['lower']:.1%}, higher in {row['higher']:.1%}"
        typer.echo(f"  {row['method']}: {share} of {row['classes']} classes")


@app.command("recall-difference")
def recall_difference_command(
    per_class_a: Annotated[str, typer.Option(help="per_class.parquet of 'laionet accuracy' on A (e.g. LAIONet).")],
    per_class_b: Annotated[str, typer.Option(help="per_class.parquet of the same model on B (e.g. ImageNet val).")],
    out: Annotated[str, typer.Option(help="Output directory: recall_at_<k>.parquet, summary.parquet, manifest.")],
    k: Annotated[list[int] | None, typer.Option(help="k of recall@k, repeatable (default: all in both tables).")] = (
        None
    ),
    method: Annotated[
        Literal["newcombe", "bootstrap"],
        typer.Option(help="newcombe (Wilson-score hybrid; default) or bootstrap (binomial resampling per class)."),
    ] = "newcombe",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    level: Annotated[float, typer.Option(help="Confidence level of the bounds.")] = 0.95,
) -> None:
    """Per-class recall@k of A minus B with confidence bounds (paper Appendix B), and the share of classes where A
    is significantly lower / higher."""
    from laionet.evaluation.recall import run_recall_difference

    if method not in ("bootstrap", "newcombe"):
        fail(f"unknown --method {method!r}; expected bootstrap or newcombe")
    try:
        manifest = run_recall_difference(
            per_class_a, per_class_b, out, ks=k or None, method=method, n_boot=n_boot, seed=seed, level=level,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    echo_manifest(manifest)
    for row in manifest.extra["proportions"]:
        typer.echo(
            f"  recall@{row['k']}: A lower in {row['lower']:.1%}, higher in {row['higher']:.1%} "
            f"of {row['classes']} classes"
        )


@app.command("own-similarity")
def own_similarity_command(
    predictions_a: Annotated[
        str, typer.Option(help="Zero-shot predictions of A: *.predictions.parquet glob with key, own_score.")
    ],
    labels_a: Annotated[str, typer.Option(help="Parquet with key, class_index for A (a variant's labels).")],
    predictions_b: Annotated[str, typer.Option(help="Zero-shot predictions of B.")],
    labels_b: Annotated[str, typer.Option(help="Parquet with key, class_index for B.")],
    out: Annotated[str, typer.Option(help="Output directory: per_class, distribution, summary parquet + manifest.")],
    flags_a: Annotated[str | None, typer.Option(help="Parquet with key, flagged (e.g. OCR) for A.")] = None,
    flags_b: Annotated[str | None, typer.Option(help="Parquet with key, flagged for B.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (bootstrap and matched resampling).")] = 0,
) -> None:
    """Image-to-own-synset similarity (paper Appendix C): distributions with A resampled to B's per-class counts,
    and per-class mean differences A − B with bootstrap bounds."""
    from laionet.evaluation.own_similarity import run_own_similarity

    try:
        manifest = run_own_similarity(
            predictions_a, labels_a, predictions_b, labels_b, out, flags_a=flags_a, flags_b=flags_b, n_boot=n_boot,
            seed=seed,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    echo_manifest(manifest)
    shares = manifest.extra["proportions"]
    typer.echo(f"  A lower in {shares['lower']:.1%}, higher in {shares['higher']:.1%} of {shares['classes']} classes")


@app.command()
def relations(
    per_class_a: Annotated[str, typer.Option(help="per_class.parquet of 'laionet accuracy' for the model on A.")],
    out: Annotated[str, typer.Option(help="Output directory: one parquet per relation, summary.parquet, manifest.")],
    per_class_b: Annotated[
        str | None, typer.Option(help="per_class.parquet on B: adds recall drop A − B vs intra-class disparity.")
    ] = None,
    intra: Annotated[
        str | None, typer.Option(help="Output directory of 'laionet intra-class' for A vs B (Figs. 7, 15).")
    ] = None,
    class_frequency: Annotated[
        str | None, typer.Option(help="selection/class_frequency.parquet (class_index, share) (Figs. 14, 15).")
    ] = None,
    k: Annotated[list[int] | None, typer.Option(help="k of recall@k, repeatable.")] = None,
    label_a: Annotated[str | None, typer.Option(help="Name of A in titles (default: from OUT's <a>--<b>).")] = None,
    label_b: Annotated[str | None, typer.Option(help="Name of B in titles.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of the Spearman interval.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Per-class relations with Spearman correlations and bootstrap intervals: recall (and recall drop A − B) vs
    intra-class disparity (Fig. 7), recall vs class frequency (Fig. 14), intra-class similarity vs class frequency
    (Fig. 15). Each table has columns class, x, y."""
    from laionet.evaluation.relations import run_relations

    if (label_a is None) != (label_b is None):
        fail("give both --label-a and --label-b, or neither")
    labels = (label_a, label_b) if label_a is not None and label_b is not None else None
    try:
        manifest = run_relations(
            per_class_a, out, per_class_b=per_class_b, intra_dir=intra, class_frequency=class_frequency,
            ks=k or (1, 5), labels=labels, n_boot=n_boot, seed=seed,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    echo_manifest(manifest)
    for row in manifest.extra["spearman"]:
        typer.echo(
            f"  {row['relation']}: Spearman {row['spearman']:.3f} [{row['lower']:.3f}, {row['upper']:.3f}] "
            f"over {row['n']} classes"
        )
