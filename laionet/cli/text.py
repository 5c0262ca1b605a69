"""``laionet`` commands of the text stages: wordnet, catalog, lemmas, corpus, match, summary.

Each command unpacks its options into explicit keyword arguments of a driver in ``laionet.text`` or
``laionet.report``; the root app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from laionet.cli.common import MODE_HELP, WORKERS_HELP, Mode, deprecated, echo_manifest, fail

app = typer.Typer()
wordnet_app = typer.Typer(help="Offline WordNet 3.0 for nltk.", no_args_is_help=True)
corpus_app = typer.Typer(help="Build corpus metadata parts from data available offline.", no_args_is_help=True)
app.add_typer(wordnet_app, name="wordnet")
app.add_typer(corpus_app, name="corpus")


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
    from laionet.text import wordnet

    try:
        target = wordnet.install_from_debian(data_dir, source, force=force)
        if data_dir:
            wordnet.ensure_on_path(data_dir)
        wn = wordnet.open_wordnet()
    except wordnet.WordNetUnavailableError as exc:
        fail(str(exc))
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
    from laionet.text.catalog import run_catalog

    try:
        manifest = run_catalog(classes, out)
    except ValueError as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command()
def lemmas(
    out: Annotated[str, typer.Option(help="Output lemma map parquet (lemma, wnid, sources).")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet from `laionet catalog`.")],
    mode: Annotated[Mode, typer.Option(help=f"The matching mode the map is built for: {MODE_HELP}")] = "default",
    policy: Annotated[Mode | None, typer.Option(hidden=True, help="Deprecated alias of --mode.")] = None,
) -> None:
    """Build the lemma → wnid map for a matching mode; dropped lemmas go to <out stem>.dropped.parquet."""
    from laionet.text.lemmas import run_lemmas

    if policy is not None:
        deprecated("--policy", "--mode")
        mode = policy
    try:
        manifest = run_lemmas(catalog, mode, out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    echo_manifest(manifest)
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
    lemma_map: Annotated[
        str, typer.Option(help="Lemma map parquet from `laionet lemmas` (built for the same --mode).")
    ],
    mode: Annotated[Mode, typer.Option(help=MODE_HELP)] = "default",
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
    workers: Annotated[
        int, typer.Option(help=f"{WORKERS_HELP}: corpus parts matched in parallel, one per process (1: as 0).")
    ] = 0,
) -> None:
    """Find catalog lemmas in every caption of a corpus; write matched rows per part (resumable)."""
    from laionet.text.corpus import ColumnMap, CorpusError
    from laionet.text.match import MatchConfig, run_match

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
        fail(str(exc))
    echo_manifest(manifest)


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
    from laionet.text.openclipart import build_openclipart_corpus

    try:
        manifest = build_openclipart_corpus(out, root=root, base_url=base_url, limit=limit)
    except FileNotFoundError as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command()
def summary(
    matches: Annotated[str | None, typer.Option(help="Output directory of `laionet match`.")] = None,
    catalog: Annotated[str | None, typer.Option(help="Catalog parquet, to print class names.")] = None,
    top: Annotated[int, typer.Option(help="How many top classes to list.")] = 15,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    matches_arg: Annotated[str | None, typer.Argument(hidden=True, metavar="MATCHES")] = None,
) -> None:
    """Summarise a match stage: rows, classes hit, multi-label rows, top classes."""
    from laionet.report.summary import match_summary

    matches = matches or matches_arg  # the directory as a positional argument: the old spelling, still accepted
    if matches is None:
        fail("missing option --matches (the output directory of `laionet match`)")
    try:
        result = match_summary(matches, catalog)
    except FileNotFoundError as exc:
        fail(str(exc))
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
