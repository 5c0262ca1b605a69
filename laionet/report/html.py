"""The report stage: one self-contained HTML page (``index.html`` + PNG figures) from the stage tables of a run.

Reads only what the stages wrote (paths from ``laionet.core.layout``): every stage manifest; ``selection/`` (``sweep``,
``histogram``, ``class_frequency``, manifest ``extra.threshold``); ``evaluate/accuracy/<variant>/<model>/summary``;
``evaluate/intra/<a>--<b>/<model>/`` (``intra_a``, ``intra_b``, ``compare_bootstrap``, ``summary``);
``evaluate/recall-difference`` and ``evaluate/own-similarity`` (any table with ``delta``, ``lower``, ``upper``);
``evaluate/relations`` (any table with two numeric columns); shards and ``variants/<variant>/labels.parquet`` for
image grids; the Section 4 diagnostics under ``diagnose/`` (``laionet.report.section4``). A section whose tables are
absent says "not computed in this run". Writes ``<out>/index.html``, the
figures beside it, then the manifest (stage ``report``; rows = tables: in = found, out = read, dropped unreadable).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from fsspec.core import url_to_fs

from laionet.core.layout import report_dir, stage_outputs
from laionet.core.manifest import (
    Manifest,
    Timer,
    code_version,
    config_hash,
    join,
    read_manifest,
    write_manifest,
    write_text_atomic,
)
from laionet.report import section4
from laionet.report.comparisons import accuracy, differences, intra, relations
from laionet.report.page import _Context, _esc, _missing, _table
from laionet.report.sections import frequencies, grids, headline, pipeline, selection

STAGE = "report"
DEFAULT_TITLE = "LAIONet report"
# page ---------------------------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1120px;margin:2em auto;
padding:0 1.2em;background:#fff}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #e4e4e4;padding-bottom:.2em;margin-top:2em}
h3{margin:1.4em 0 .4em}small{color:#666;font-weight:normal}code{font-size:.88em;color:#444}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em}th,td{padding:.28em .7em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f4f6f8;white-space:nowrap}tbody tr:nth-child(even){background:#fafbfc}
.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.disclaimer{background:#fff7e0;border-left:4px solid #f0b400;padding:.7em 1em;margin:1em 0}
.meta{color:#555;font-size:.9em}.missing{color:#888;font-style:italic}.note{color:#666;font-size:.85em}
.cols{display:flex;gap:2em;flex-wrap:wrap}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
dt{color:#555}dd{margin:0}.gridrow{display:flex;align-items:center;gap:1em;margin:.3em 0}
.gridrow span{width:9em;font-size:.85em;color:#555}.gridrow img{max-width:calc(100% - 10em)}
nav ol{columns:2}#figures-status{color:#888;font-size:.8em}
"""

_STATUS_JS = """window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);
var ok=i.filter(function(x){return x.complete&&x.naturalWidth>0;}).length;
var s=document.getElementById('figures-status');s.textContent=ok+' / '+i.length+' images loaded';
s.setAttribute('data-loaded',ok);s.setAttribute('data-total',i.length);});"""


def run_report(
    run_dir: str,
    out_dir: str | None = None,
    title: str = DEFAULT_TITLE,
    disclaimer: str | None = None,
    grid_classes: int = 12,
    grid_per_class: int = 8,
) -> Manifest:
    """Render ``<out_dir>/index.html`` (default ``<run_dir>/report``) and its PNG figures from the run's tables
    (see module docstring); returns the report's manifest, written last. Always re-renders."""
    timer = Timer()
    run_dir = run_dir.rstrip("/")
    out_dir = (out_dir or report_dir(run_dir)).rstrip("/")
    ctx = _Context(run_dir, out_dir)
    catalog = ctx.read(ctx.path("catalog.parquet"))
    if catalog is not None and {"wnid", "name"} <= set(catalog.columns):
        ctx.names.update(zip(catalog["wnid"], catalog["name"], strict=True))
        if "class_index" in catalog:
            ctx.names.update(zip(catalog["class_index"].astype(int), catalog["name"], strict=True))
    sections: list[tuple[str, str, Callable[[], str | None], str]] = [
        ("pipeline", "Pipeline counts", lambda: pipeline(ctx), "no stage manifests"),
        ("headline", "Paper vs this run", lambda: headline(ctx), "evaluate/ accuracy, recall-difference, intra"),
        ("selection", "Threshold sweep (Fig. 3)", lambda: selection(ctx), "selection/sweep.parquet"),
        ("frequency", "Class frequencies (Fig. 4)", lambda: frequencies(ctx), "selection/class_frequency.parquet"),
        ("accuracy", "Accuracy", lambda: accuracy(ctx), "evaluate/accuracy/*/*/summary.parquet"),
        ("intra", "Intra-class similarity (Fig. 6)", lambda: intra(ctx), "evaluate/intra/*/*/"),
        ("recall-difference", "Per-class recall differences (Appendix B)",
         lambda: differences(ctx, "recall-difference", "recall"), "evaluate/recall-difference/"),
        ("own-similarity", "Image-to-own-synset similarity (Appendix C)",
         lambda: differences(ctx, "own-similarity", "own-synset similarity"), "evaluate/own-similarity/"),
        ("relations", "Recall vs intra-class disparity (Fig. 7)", lambda: relations(ctx), "evaluate/relations/"),
        ("text-alone", "Text alone (Section 4.2, Fig. 9)", lambda: section4.text_alone(ctx),
         "diagnose/text-alone/"),
        ("selection-frequency", "Selection frequency (Section 4.1, Fig. 8)", lambda: section4.selection_frequency(ctx),
         "diagnose/selection-frequency/"),
        ("filtered", "Image+text-filtered variants (Appendix D)", lambda: section4.filtered_variants(ctx),
         "diagnose/filtered/"),
        ("nearest", "Nearest captions (Section 4.3, Figs. 10, 16)", lambda: section4.nearest_captions(ctx),
         "diagnose/nearest/"),
        ("grids", "Sample images per class", lambda: grids(ctx, grid_classes, grid_per_class), "no shards"),
    ]  # fmt: skip
    rendered, missing, failed = [], [], {}
    body = []
    for anchor, heading, render, needs in sections:
        try:
            content = render()
        except Exception as exc:  # one broken table must not take the whole report down
            failed[anchor] = f"{type(exc).__name__}: {exc}"
            content = f"<p class=missing>Could not be rendered: {_esc(failed[anchor])}</p>"
        if content is None:
            missing.append(anchor)
            content = _missing(needs)
        else:
            rendered.append(anchor)
        body.append(f'<section id="{anchor}"><h2>{_esc(heading)}</h2>\n{content}\n</section>')
    if ctx.unreadable:
        rows = [[f"<code>{_esc(ctx.rel(p))}</code>", _esc(e)] for p, e in ctx.unreadable.items()]
        body.append(f"<section id=unreadable><h2>Unreadable tables</h2>{_table(['table', 'error'], rows)}</section>")

    versions = sorted({m.code_version for p in stage_outputs(run_dir) if (m := read_manifest(p)) is not None})
    nav = "".join(
        f'<li><a href="#{a}">{_esc(h)}</a>{"" if a in rendered else " <small>(not computed)</small>"}</li>'
        for a, h, _, _ in sections
    )
    meta = [
        ("run", f"<code>{_esc(run_dir.rsplit('/', 1)[-1])}</code>"),  # its name: no absolute path on the page
        ("report created", _esc(datetime.now(UTC).isoformat(timespec="seconds"))),
        ("report code version", f"<code>{_esc(code_version())}</code>"),
        ("stage code versions", ", ".join(f"<code>{_esc(v)}</code>" for v in versions) or "–"),
    ]
    header = f"<h1>{_esc(title)}</h1><dl class=meta>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>"
    if disclaimer:
        header += f'<p class="disclaimer">{_esc(disclaimer)}</p>'
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>\n<body>\n'
        f"<header>{header}</header>\n<nav><ol>{nav}</ol></nav>\n" + "\n".join(body) +
        f'\n<footer><p id="figures-status"></p></footer>\n<script>{_STATUS_JS}</script>\n</body></html>\n'
    )  # fmt: skip
    index = join(out_dir, "index.html")
    write_text_atomic(index, page)
    _remove_stale(out_dir, set(ctx.figures))

    config = {"run_dir": run_dir, "title": title, "disclaimer": disclaimer, "grid_classes": grid_classes,
              "grid_per_class": grid_per_class}  # fmt: skip
    found = len(ctx.tables) + len(ctx.unreadable)
    manifest = Manifest(
        stage=STAGE,
        config=config,
        config_hash=config_hash(config),
        inputs=list(ctx.tables),
        outputs=[index, *ctx.figures],
        rows_in=found,
        rows_out=len(ctx.tables),
        dropped={"unreadable": len(ctx.unreadable)},
        wall_time_s=timer.elapsed,
        extra={
            "sections": rendered,
            "not_computed": missing,
            "failed": failed,
            "figures": len(ctx.figures),
            "unreadable": ctx.unreadable,
        },
    )
    write_manifest(out_dir, manifest)
    return manifest


def _remove_stale(out_dir: str, keep: set[str]) -> None:
    """Delete figures of an earlier rendering that this one did not write."""
    fs, real = url_to_fs(out_dir)
    kept = {url_to_fs(p)[1] for p in keep}
    for pattern in ("fig_*.png", "grid_*.png"):
        for path in fs.glob(f"{real}/{pattern}"):
            if path not in kept:
                fs.rm(path)
