"""The ``laionet`` command line: one command per stage, each calling the same driver the Prefect tasks call.

Unpacks options into explicit keyword arguments; the library never sees this module's types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from laionet.text import MODES

app = typer.Typer(
    help="LAIONet: recreate ImageNet from an image-text corpus by selecting on captions alone.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
wordnet_app = typer.Typer(help="Offline WordNet 3.0 for nltk.", no_args_is_help=True)
corpus_app = typer.Typer(help="Build corpus metadata parts from data available offline.", no_args_is_help=True)
app.add_typer(wordnet_app, name="wordnet")
app.add_typer(corpus_app, name="corpus")


def _mode(value: str) -> str:
    if value not in MODES:
        raise typer.BadParameter(f"expected one of {', '.join(MODES)}")
    return value


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _echo_manifest(manifest: Any) -> None:
    dropped = ", ".join(f"{k}={v}" for k, v in manifest.dropped.items() if v) or "none"
    typer.echo(
        f"[{manifest.stage}] rows in={manifest.rows_in} out={manifest.rows_out} dropped: {dropped} "
        f"({manifest.wall_time_s:.1f} s)"
    )


@wordnet_app.command("install")
def wordnet_install(
    data_dir: Annotated[
        Path | None, typer.Option(help="nltk data directory to write (default: <venv>/nltk_data).")
    ] = None,
    source: Annotated[Path, typer.Option(help="Directory of Debian's wordnet-base files.")] = Path(
        "/usr/share/wordnet"
    ),
    force: Annotated[bool, typer.Option(help="Rewrite even if already installed.")] = False,
    quiet: Annotated[bool, typer.Option(help="Print nothing on success.")] = False,
) -> None:
    """Copy Debian's WordNet 3.0 into nltk's data path (adds the lexnames file nltk needs) and check it loads."""
    from laionet import wordnet

    try:
        target = wordnet.install_from_debian(data_dir, source, force=force)
        if data_dir:
            wordnet.ensure_on_path(data_dir)
        wn = wordnet.open_wordnet()
    except wordnet.WordNetUnavailableError as exc:
        _fail(str(exc))
    if not quiet:
        typer.echo(f"WordNet {wn.get_version()} ready at {target}")


@app.command()
def catalog(
    out: Annotated[str, typer.Option(help="Output parquet path (manifest written beside it).")],
    classes: Annotated[
        str, typer.Option(help="imagenet1k, imagenet21k, or a text file with one wnid per line.")
    ] = "imagenet1k",
) -> None:
    """Build the class catalog: class_index, wnid, name, lemmas, definition, synset_text."""
    from laionet.catalog import run_catalog

    try:
        manifest = run_catalog(classes, out)
    except ValueError as exc:
        _fail(str(exc))
    _echo_manifest(manifest)


@app.command()
def lemmas(
    out: Annotated[str, typer.Option(help="Output lemma map parquet (lemma, wnid, sources).")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet from `laionet catalog`.")],
    policy: Annotated[str, typer.Option(help="paper (reference rule) or default (normalised).", callback=_mode)] = (
        "default"
    ),
) -> None:
    """Build the lemma → wnid map under a policy; dropped lemmas go to <out stem>.dropped.parquet."""
    from laionet.lemmas import run_lemmas

    try:
        manifest = run_lemmas(catalog, policy, out)  # type: ignore[arg-type]
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _echo_manifest(manifest)
    reach = manifest.extra["reachability"]
    typer.echo(
        f"  {manifest.extra['lemmas']} lemmas over {manifest.extra['classes_covered']} classes; "
        f"{reach['lemmas_never_matching']} lemmas can never match, {reach['nested_pairs']} nested lemma pairs, "
        f"{reach['classes_unreachable']} classes unreachable by a single-class caption"
    )


@app.command()
def match(
    corpus: Annotated[str, typer.Option(help="Corpus parts: a glob ('DIR/*.parquet'), a directory or one file.")],
    out: Annotated[str, typer.Option(help="Output directory: one parquet per part + _manifest.json.")],
    lemma_map: Annotated[str, typer.Option(help="Lemma map parquet from `laionet lemmas` (same policy as --mode).")],
    mode: Annotated[str, typer.Option(help="paper (reference rule) or default.", callback=_mode)] = "default",
    key_col: Annotated[str | None, typer.Option(help="Unique key column; default: '<part stem>/<row>'.")] = None,
    text_col: Annotated[str, typer.Option(help="Caption column.")] = "TEXT",
    url_col: Annotated[str, typer.Option(help="URL column ('' to skip).")] = "URL",
    nsfw_col: Annotated[str, typer.Option(help="NSFW tag column ('' to skip).")] = "NSFW",
    width_col: Annotated[str, typer.Option(help="Image width column ('' to skip).")] = "WIDTH",
    height_col: Annotated[str, typer.Option(help="Image height column ('' to skip).")] = "HEIGHT",
    similarity_col: Annotated[str, typer.Option(help="LAION image-text similarity column ('' to skip).")] = (
        "similarity"
    ),
    batch_size: Annotated[int, typer.Option(help="Rows per record batch (memory bound).")] = 65_536,
    max_text_bytes: Annotated[int, typer.Option(help="Longer captions are skipped and counted.")] = 65_536,
    workers: Annotated[int, typer.Option(help="Parts matched in parallel, one process each.")] = 1,
) -> None:
    """Find catalog lemmas in every caption of a corpus; write matched rows per part (resumable)."""
    from laionet.corpus import ColumnMap, CorpusError
    from laionet.match_stage import MatchConfig, run_match

    columns = ColumnMap(
        key=key_col or None,
        text=text_col,
        url=url_col or None,
        nsfw=nsfw_col or None,
        width=width_col or None,
        height=height_col or None,
        laion_similarity=similarity_col or None,
    )
    config = MatchConfig(mode=mode, columns=columns, batch_size=batch_size, max_text_bytes=max_text_bytes)
    try:
        manifest = run_match(corpus, out, lemma_map, config, workers=workers)
    except (CorpusError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _echo_manifest(manifest)


@app.command()
def similarity(
    matches: Annotated[str, typer.Option(help="Output directory of `laionet match`.")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet (synset texts).")],
    out: Annotated[str, typer.Option(help="Base directory; similarities go to <out>/<encoder slug>/.")],
    encoder: Annotated[
        str,
        typer.Option(
            help="minilm (offline default), mpnet, clip (ViT-B-32-quickgelu/openai), 'st:<name or dir>', "
            "'open_clip:<model>[@<tag or checkpoint>]'."
        ),
    ] = "minilm",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Captions per forward pass (default per backend).")] = None,
    precision: Annotated[
        str, typer.Option(help="auto (GPU: fp16; CPU: bf16 where native, else fp32), fp32, fp16, bf16.")
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
    from laionet.encoders import EncoderError
    from laionet.similarity import SimilarityConfig, run_similarity, similarity_dir

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
        target = similarity_dir(out, encoder)
        manifest = run_similarity(matches, catalog, target, config)
    except (EncoderError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _echo_manifest(manifest)
    typer.echo(f"  written to {target}")


@app.command()
def select(
    matches: Annotated[str, typer.Option(help="Output directory of `laionet match`.")],
    similarity: Annotated[str, typer.Option(help="Per-encoder directory written by `laionet similarity`.")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet.")],
    out: Annotated[str, typer.Option(help="Output directory: laionet.parquet, class_frequency, sweep, histogram.")],
    threshold: Annotated[
        str, typer.Option(help="'auto' (paper value for CLIP/MPNet, else calibrated) or a number; keep iff sim > t.")
    ] = "auto",
    multi_label: Annotated[str, typer.Option(help="drop (paper) or best (keep the most similar class).")] = "drop",
    nsfw_keep: Annotated[str, typer.Option(help="Comma-separated NSFW tags to keep; '' keeps every row.")] = "UNLIKELY",
    calibration: Annotated[str, typer.Option(help="knee or coverage (used when the threshold is calibrated).")] = (
        "knee"
    ),
    top_k: Annotated[int, typer.Option(help="Rows per class of the top-k variant (0: none).")] = 50,
) -> None:
    """Apply the selection rules and threshold; write the LAIONet index, class frequencies and the sweep."""
    from laionet.selection import SelectionConfig, run_select

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
        _fail(str(exc))
    _echo_manifest(manifest)
    extra = manifest.extra
    typer.echo(f"  threshold {extra['threshold']:.3f} ({extra['threshold_rule']}); {extra['classes']} classes")


@corpus_app.command("openclipart")
def corpus_openclipart(
    out: Annotated[str, typer.Option(help="Output directory (openclipart.parquet + _manifest.json).")],
    root: Annotated[Path, typer.Option(help="Root of the SVG files.")] = Path("/usr/share/openclipart/svg"),
    base_url: Annotated[str, typer.Option(help="URL prefix under which the root will be served.")] = (
        "http://127.0.0.1:8000"
    ),
    limit: Annotated[int | None, typer.Option(help="Only the first N files (sorted by path).")] = None,
) -> None:
    """Convert Debian's openclipart-svg into a LAION-style parquet (TEXT = title + description + keywords)."""
    from laionet.openclipart import build_openclipart_corpus

    try:
        manifest = build_openclipart_corpus(out, root=root, base_url=base_url, limit=limit)
    except FileNotFoundError as exc:
        _fail(str(exc))
    _echo_manifest(manifest)


@app.command()
def summary(
    matches: Annotated[str, typer.Argument(help="Output directory of `laionet match`.")],
    catalog: Annotated[str | None, typer.Option(help="Catalog parquet, to print class names.")] = None,
    top: Annotated[int, typer.Option(help="How many top classes to list.")] = 15,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Summarise a match stage: rows, classes hit, multi-label rows, top classes."""
    from laionet.report import match_summary

    try:
        result = match_summary(matches, catalog)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"{result['rows_in']} captions read, {result['rows_matched']} matched "
        f"({result['rows_single_class']} to one class, {result['rows_multi_class']} to several); "
        f"{result['classes_hit']} classes hit, {result['classes_hit_single']} by single-class captions"
    )
    typer.echo(f"dropped: {result['dropped']}")
    for row in result["top_classes"][:top]:
        typer.echo(f"  {row['n']:6d}  {row['wnid']}  {row.get('name', '')}")


@app.command()
def demo(
    run_dir: Annotated[str, typer.Option(help="Where the demo run writes everything.")] = "runs/demo",
    mode: Annotated[str, typer.Option(help="Matching mode / lemma policy.", callback=_mode)] = "default",
    images: Annotated[bool, typer.Option(help="Also download, verify and OCR the selected images.")] = True,
    image_limit: Annotated[int | None, typer.Option(help="Download only the first N selected samples.")] = None,
) -> None:
    """The demo's data stages without Prefect, on real offline data: catalog, lemma maps, openclipart corpus,
    matching, MiniLM text-to-synset similarity, selection (threshold sweep, calibrated threshold), and the selected
    images downloaded over a loopback HTTP server into verified shards with the OCR filter. The whole pipeline
    (inference, metrics, report) runs as the Prefect demo flow: `make demo` / `python -m flows.demo`."""
    from laionet.demo import run_demo

    run_demo(run_dir, mode=mode, echo=typer.echo, images=images, image_limit=image_limit)  # type: ignore[arg-type]


# the image, evaluation and report commands live in their own modules; importing them registers them on ``app``
from laionet import cli_eval, cli_images, cli_report  # noqa: E402, F401


def main() -> None:
    app()
