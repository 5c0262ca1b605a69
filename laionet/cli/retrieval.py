"""``laionet`` commands of the retrieval stages (paper Section 4.3): caption-embeddings, caption-index,
nearest-captions.

Each command unpacks its options into explicit keyword arguments of a driver in ``laionet.retrieval``; the root app in
``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from laionet.cli.common import echo_manifest, fail

app = typer.Typer()


@app.command("caption-embeddings")
def caption_embeddings_command(
    corpus: Annotated[str, typer.Option(help="Corpus parts: a glob ('DIR/*.parquet'), a directory or one file.")],
    out: Annotated[
        str, typer.Option(help="Output directory: text_emb/text_emb_<i>.npy + metadata/metadata_<i>.parquet.")
    ],
    encoder: Annotated[
        str, typer.Option(help="Text encoder: minilm (offline), mpnet, clip, st:<name>, ...")
    ] = "minilm",
    text_col: Annotated[str, typer.Option(help="Caption column.")] = "TEXT",
    url_col: Annotated[str, typer.Option(help="URL column ('' to skip).")] = "URL",
    key_col: Annotated[str | None, typer.Option(help="Unique key column; default: '<part stem>/<row>'.")] = None,
    max_parts: Annotated[int | None, typer.Option(help="Only the first N parts (sorted).")] = None,
) -> None:
    """Embed every distinct caption of a corpus (not only the matched ones) in clip-retrieval's layout, resumable
    per part; LAION's released text embeddings in the same layout need no re-encoding."""
    from laionet.retrieval.embed import EmbedConfig, run_caption_embeddings
    from laionet.selection.encoders import EncoderError
    from laionet.text.corpus import ColumnMap, CorpusError

    columns = ColumnMap(
        key=key_col or None,
        text=text_col,
        url=url_col or None,
        nsfw=None,
        width=None,
        height=None,
        laion_similarity=None,
    )
    try:
        manifest = run_caption_embeddings(
            corpus, out, EmbedConfig(encoder=encoder, columns=columns), max_parts=max_parts
        )
    except (CorpusError, EncoderError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)


@app.command("caption-index")
def caption_index_command(
    embeddings: Annotated[str, typer.Option(help="A clip-retrieval layout directory (text_emb/, metadata/).")],
    out: Annotated[str, typer.Option(help="Output directory: index.faiss + manifest.")],
    kind: Annotated[Literal["auto", "flat", "ivfpq"], typer.Option(help="Exact, IVF-PQ, or by corpus size.")] = "auto",
    nlist: Annotated[int | None, typer.Option(help="IVF lists (default ≈ 4·√N).")] = None,
    m: Annotated[int | None, typer.Option(help="PQ sub-quantisers per vector (default D/8).")] = None,
    nprobe: Annotated[int, typer.Option(help="Lists searched per query.")] = 32,
    recall_queries: Annotated[int, typer.Option(help="Held-out queries for the recall@1 measurement.")] = 1000,
) -> None:
    """Build a faiss inner-product index over caption embeddings; its size and recall@1 against exact search go in
    the manifest."""
    from laionet.retrieval.index import IndexConfig, run_index
    from laionet.selection.precomputed import EmbeddingShardError

    config = IndexConfig(kind=kind, nlist=nlist, m=m, nprobe=nprobe, recall_queries=recall_queries)
    try:
        manifest = run_index(embeddings, out, config)
    except (EmbeddingShardError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)
    extra = manifest.extra
    recall = extra["recall_at_1"]
    typer.echo(
        f"  {extra['kind']}: {extra['bytes_per_vector']:.1f} bytes/vector; recall@1 "
        f"{'not measured' if recall is None else f'{recall:.3f}'}"
    )


@app.command("nearest-captions")
def nearest_captions_command(
    queries: Annotated[str, typer.Option(help="Labelled queries: ImageNet-Captions JSON, or parquet key/text/wnid.")],
    embeddings: Annotated[str, typer.Option(help="The corpus's caption-embeddings directory.")],
    index: Annotated[str, typer.Option(help="Its caption-index directory.")],
    catalog: Annotated[str, typer.Option(help="Catalog parquet (class indices).")],
    out: Annotated[str, typer.Option(help="Output directory: index.parquet (selection format), pairs, sweep.")],
    threshold: Annotated[float, typer.Option(help="Keep iff similarity > threshold.")] = 0.7,
    k: Annotated[int, typer.Option(help="Candidates per query re-scored exactly.")] = 10,
    exclude_keys: Annotated[bool, typer.Option(help="Skip corpus captions whose key is a query's key.")] = False,
) -> None:
    """Paper Section 4.3: the most similar corpus caption of every labelled query, kept above the threshold and
    labelled with the query's class — an index that download, verify, inference and evaluation read unchanged."""
    from laionet.retrieval.search import run_nearest_captions

    try:
        manifest = run_nearest_captions(
            queries, embeddings, index, catalog, out, threshold=threshold, k=k, exclude_keys=exclude_keys
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    echo_manifest(manifest)
    typer.echo(f"  {manifest.rows_out} captions over {manifest.extra['classes']} classes")
