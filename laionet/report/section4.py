"""The report's Section 4 sections (why LAIONet differs): text alone (4.2, Fig. 9), selection frequency (4.1, Fig. 8),
the image+text-filtered variants (Appendix D) and the nearest-caption dataset (4.3, Figs. 10 and 16).

Reads what the diagnose flow wrote (``laionet.diagnostics``, ``laionet.retrieval``): ``diagnose/text-alone/``
(``summary``, ``histogram``, ``bins``), ``diagnose/selection-frequency/`` (``proportions``, ``pooled``),
``diagnose/filtered/summary.parquet`` with the variants' accuracy and intra-class outputs under ``evaluate/``, and
``diagnose/nearest/`` (the index manifest, ``run/selection/`` sweep and manifest) with
``evaluate/intra/nearest-captions--<b>/``. A section whose tables are absent returns None ("not computed"). When a
diagnostic ran on the offline stand-in (no ImageNet-Captions, no ImageNetV2), the section says so.
"""

from __future__ import annotations

from functools import partial

import pandas as pd

from laionet.core.layout import slug
from laionet.core.manifest import read_manifest
from laionet.report import figures
from laionet.report.page import _Context, _dirname, _esc, _glob, _int, _interval, _num, _pct, _table

NEAREST = "nearest-captions"


def _stand_in(note: str) -> str:
    return f'<p class="note stand-in"><b>Stand-in:</b> {_esc(note)}</p>'


def text_alone(ctx: _Context) -> str | None:
    """4.2: how often a caption's own class is the most similar, against its own similarity (Fig. 9)."""
    out = ctx.path("diagnose", "text-alone")
    summary = ctx.read(f"{out}/summary.parquet")
    if summary is None or summary.empty:
        return None
    manifest = read_manifest(out)
    captions_path = str(manifest.config.get("captions", "")) if manifest else ""
    s = summary.iloc[0]
    sufficient = None if pd.isna(s["sufficient_similarity"]) else float(s["sufficient_similarity"])
    parts = []
    if captions_path.endswith("matched_captions.parquet"):
        parts.append(_stand_in("no labelled caption set (ImageNet-Captions) was given: the captions are this run's "
                               "single-class matched captions, labelled with their matched class."))  # fmt: skip
    rows = [
        ["captions", _int(s["captions"])],
        ["classes of the catalog", _int(s["classes"])],
        ["p(t) is the share of", _esc(s["denominator"])],
        ["mean similarity to the own synset, s(t, y)", _num(s["mean_own_similarity"])],
        ["mean p(t)", _pct(s["mean_p"])],
        ["captions whose own class is the most similar", _pct(s["share_own_class_first"])],
        [f"sufficient similarity (every bin above has mean p(t) ≤ {_pct(s['tolerance'])})",
         f"<b>{_num(sufficient) if sufficient is not None else 'none'}</b> <small>(paper: ≈ 0.7)</small>"],
    ]  # fmt: skip
    parts.append(_table(["", "value"], rows, {1}))
    histogram = ctx.read(f"{out}/histogram.parquet")
    if histogram is not None and not histogram.empty:
        alt = "Captions by their similarity to their own synset text (paper Fig. 9a)"
        parts.append(ctx.figure("fig_text_alone_histogram.png", partial(figures.caption_histogram, histogram,
                                                                          sufficient), alt))  # fmt: skip
    bins = ctx.read(f"{out}/bins.parquet")
    if bins is not None and (bins["captions"] > 0).any():
        alt = ("Mean share of other classes more similar to the caption than its own, per bin of own similarity, "
               "95 % intervals (paper Fig. 9b)")  # fmt: skip
        parts.append(ctx.figure("fig_text_alone_p.png", partial(figures.caption_p_by_bin, bins, sufficient), alt))
    parts.append("<p class=note>Above the sufficient similarity a caption's own class is (almost) always the most "
                 "similar: a text filter at that threshold needs no image to pick the class. Below it, text alone "
                 "does not identify the class: ImageNet's selection leaned on the images.</p>")  # fmt: skip
    return "\n".join(parts)


def selection_frequency(ctx: _Context) -> str | None:
    """4.1: the share of classes significantly lower in intra-class similarity against the selection frequency."""
    out = ctx.path("diagnose", "selection-frequency")
    props = ctx.read(f"{out}/proportions.parquet")
    if props is None or props.empty:
        return None
    manifest = read_manifest(out)
    x_label = str(manifest.extra.get("x_label", "x")) if manifest else "x"
    parts = []
    if "stand-in" in x_label:
        parts.append(_stand_in("no ImageNetV2 versions in this run: image filters of increasing strictness on the "
                               "same text-selected images stand in for the MTurk selection frequency; each filtered "
                               "set (A) is compared with the text-only set (B)."))  # fmt: skip
    default = props[props["method"] == props["method"].iloc[0]] if "bootstrap" not in set(props["method"]) else (
        props[props["method"] == "bootstrap"])  # fmt: skip
    rows = [[_esc(r["a"]), _esc(r["b"]), _num(r["x"]), _esc(r["method"]),
             "A lower" if r["side"] == "a_lower" else "B lower", f"<b>{_pct(r['share'])}</b>",
             _interval(r["lower"], r["upper"]), _int(r["classes"])]
            for r in props.sort_values(["x", "a", "method", "side"]).to_dict("records")]  # fmt: skip
    header = ["A", "B", _esc(x_label), "test", "side", "share of classes significantly lower", "Wilson 95 % interval",
              "classes compared"]  # fmt: skip
    parts.append(_table(header, rows, {2, 5, 6, 7}))
    alt = (f"Share of classes where each side is significantly lower in intra-class similarity against "
           f"{x_label}, {default['method'].iloc[0]} test, Wilson 95 % intervals (paper Fig. 8b/8c)")  # fmt: skip
    parts.append(ctx.figure("fig_selection_frequency.png", partial(figures.proportions_against, default, x_label), alt))
    pooled = ctx.read(f"{out}/pooled.parquet")
    if pooled is not None and not pooled.empty:
        alt = "Within-class pair similarities of two versions pooled over classes, resampled per class (paper Fig. 8a)"
        parts.append(ctx.figure("fig_selection_frequency_pooled.png", partial(figures.pooled_by_dataset, pooled), alt))
    parts.append("<p class=note>The paper's claim: the more strongly the image decided whether a candidate was kept "
                 "(higher selection frequency), the less diverse each class (more classes lower in intra-class "
                 "similarity). This section shows what this run's data gives.</p>")  # fmt: skip
    return "\n".join(parts)


def filtered_variants(ctx: _Context) -> str | None:
    """Appendix D: image+text-filtered variants of equal size, each evaluated like LAIONet."""
    summary = ctx.read(ctx.path("diagnose", "filtered", "summary.parquet"))
    if summary is None or summary.empty:
        return None
    parts = []
    manifest = read_manifest(ctx.path("diagnose", "filtered"))
    if manifest and manifest.config.get("text_quantiles"):
        parts.append(_stand_in("text thresholds at quantiles of the selected index's text similarity (the paper's "
                               "0.72–0.81 need CLIP similarities)."))  # fmt: skip
    rows = []
    for r in summary.sort_values("text_threshold").to_dict("records"):
        variant = str(r["variant"])
        accuracy = _first_accuracy(ctx, variant)
        intra = _first_intra(ctx, variant)
        rows.append([_esc(variant), _num(r["text_threshold"]), _num(r.get("image_threshold")), _int(r.get("kept")),
                     _int(r.get("target")), accuracy, intra])  # fmt: skip
    header = ["variant", "text threshold (>)", "image threshold (>)", "samples", "target", "top-1 accuracy (equal)",
              "classes significantly lower in intra-class similarity than the compared set"]  # fmt: skip
    parts.append(_table(header, rows, {1, 2, 3, 4, 5}))
    parts.append("<p class=note>Every variant keeps the same number of samples (the image threshold is the order "
                 "statistic that hits the target): differences between rows come from where the text threshold "
                 "sits, not from size.</p>")  # fmt: skip
    return "\n".join(parts)


def _first_accuracy(ctx: _Context, variant: str) -> str:
    for path in _glob(ctx.path("evaluate", "accuracy", variant, "*", "summary.parquet")):
        frame = ctx.read(path)
        if frame is None:
            continue
        row = frame[(frame["k"] == 1) & (frame["weighting"] == "equal")]
        if len(row):
            model = _dirname(path).rsplit("/", 1)[-1]
            return f"{_pct(row['accuracy'].iloc[0])} <small>{_esc(model)}</small>"
    return "–"


def _first_intra(ctx: _Context, variant: str) -> str:
    for path in _glob(ctx.path("evaluate", "intra", f"{variant}--*", "*", "summary.parquet")):
        frame = ctx.read(path)
        if frame is None or frame.empty:
            continue
        row = frame[frame["method"] == "bootstrap"] if "bootstrap" in set(frame["method"]) else frame.head(1)
        b = _dirname(_dirname(path)).rsplit("/", 1)[-1].partition("--")[2]
        return f"{_pct(row['lower'].iloc[0])} <small>vs {_esc(b)}, {_int(row['classes'].iloc[0])} classes</small>"
    return "–"


def nearest_captions(ctx: _Context) -> str | None:
    """4.3: the nearest corpus caption of each query, its coverage by threshold, and its images' diversity."""
    root = ctx.path("diagnose", "nearest")
    search_dir = f"{root}/run/selection"
    search = read_manifest(search_dir)
    sweep = ctx.read(f"{search_dir}/sweep.parquet")
    if search is None or sweep is None:
        return None
    parts = []
    if not search.config.get("queries", "").endswith((".json", ".jsonl")) and search.config.get("exclude_keys"):
        parts.append(_stand_in("no ImageNet-Captions: the queries are the captions of the image-filtered variant, the "
                               "corpus is every other caption of the run's corpus, and the nearest-caption images are "
                               "compared with the image-filtered set."))  # fmt: skip
    index = read_manifest(f"{root}/index")
    threshold = float(search.extra.get("threshold", search.config.get("threshold", 0.7)))
    rows = [
        ["queries", _int(search.rows_in)],
        [f"nearest captions kept (similarity > {threshold:g})", f"<b>{_int(search.rows_out)}</b>"],
        *[[f"dropped: {_esc(k)}", _int(v)] for k, v in sorted(search.dropped.items())],
        ["classes covered", _int(search.extra.get("classes"))],
    ]
    if index is not None:
        extra = index.extra
        rows += [
            ["index", f"{_esc(extra.get('kind'))}, {_int(index.rows_out)} captions, "
                      f"{_num(extra.get('bytes_per_vector'), 1)} bytes per vector"],
            ["index recall@1 against exact search", _pct(extra.get("recall_at_1"))],
        ]  # fmt: skip
    parts.append(_table(["", "value"], rows, {1}))
    alt = "Nearest captions kept and classes covered against the similarity threshold (paper Fig. 16, coverage)"
    parts.append(ctx.figure("fig_nearest_sweep.png", partial(figures.nearest_sweep, sweep, threshold), alt))
    for summary_path in _glob(ctx.path("evaluate", "intra", f"{NEAREST}--*", "*", "summary.parquet")):
        model_dir = _dirname(summary_path)
        b = _dirname(model_dir).rsplit("/", 1)[-1].partition("--")[2]
        model = model_dir.rsplit("/", 1)[-1]
        summary = ctx.read(summary_path)
        if summary is None:
            continue
        rows = [[_esc(r["method"]), _int(r["classes"]), f"<b>{_pct(r['lower'])}</b>", _pct(r["higher"])]
                for r in summary.to_dict("records")]  # fmt: skip
        parts.append(f"<h3>nearest captions vs {_esc(b)} <small>image encoder {_esc(model)}</small></h3>")
        parts.append(_table(["test", "classes compared", "nearest captions significantly lower",
                             "nearest captions significantly higher"], rows, {1, 2, 3}))  # fmt: skip
        if int(summary["classes"].max()) == 0 if len(summary) else True:
            parts.append("<p class=note>No class has enough images in both sets to compare (a class needs ≥ 7 "
                         "within-class pairs in each).</p>")  # fmt: skip
        boot = ctx.read(f"{model_dir}/compare_bootstrap.parquet")
        if boot is not None and not boot.empty:
            alt = (f"Per-class intra-class similarity of the nearest-caption images minus {b}, sorted, bootstrap 95 % "
                   f"bounds (paper Fig. 10b)")  # fmt: skip
            draw = partial(figures.sorted_differences, boot, ylabel=f"intra-class similarity nearest − {b}")
            parts.append(ctx.figure(f"fig_nearest_{slug(b)}_{slug(model)}.png", draw, alt))
    parts.append("<p class=note>Paper: searching texts alone for ImageNet's captions gives a dataset whose classes "
                 "are less diverse than ImageNet's in ≈ 70 % of classes (REFERENCE.md: 70.6 %; 77.3 % against "
                 "ImageNet-Captions' images).</p>")  # fmt: skip
    return "\n".join(parts)
