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
from functools import partial
from typing import Any

import pandas as pd
from fsspec.core import url_to_fs

from laionet.core.layout import dataset_of, report_dir, shards_dir, slug, stage_outputs
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
from laionet.images.shards import keys_by_tar, read_images
from laionet.report import figures, section4
from laionet.report.page import (
    _ID_COLUMNS,
    _Context,
    _dirname,
    _esc,
    _frame_table,
    _glob,
    _int,
    _interval,
    _missing,
    _num,
    _pct,
    _table,
    _when,
)

STAGE = "report"
DEFAULT_TITLE = "LAIONet report"
# sections -----------------------------------------------------------------------------------------------------------


def _pipeline(ctx: _Context) -> str | None:
    manifests = [(p, m) for p in stage_outputs(ctx.run_dir) if (m := read_manifest(p)) is not None]
    if not manifests:
        return None
    manifests.sort(key=lambda pm: (pm[1].created_at, pm[0]))
    rows = []
    for path, m in manifests:
        dropped = ", ".join(f"{_esc(k)}: {_int(v)}" for k, v in m.dropped.items() if v) or "–"
        adds_up = m.rows_out + sum(m.dropped.values()) == m.rows_in
        rows.append([_esc(m.stage), f"<code>{_esc(ctx.rel(path))}</code>", _int(m.rows_in), _int(m.rows_out), dropped,
                     "✓" if adds_up else "<b>✗</b>", f"{m.wall_time_s:,.1f} s", _esc(_when(m.created_at))])  # fmt: skip
    header = ["stage", "output", "rows in", "rows out", "dropped by reason", "adds up", "wall time", "finished"]
    return _table(header, rows, {2, 3, 6})


# the paper's headline numbers (REFERENCE.md, "Headline results"), shown beside this run's
PAPER_ACCURACY_DROP = ("classifiers: ≈ −10 points on LAIONet vs ImageNet val; CLIP zero-shot: +9.6 top-1 "
                       "(66.5 vs 56.9), +6.0 top-5 (90.5 vs 84.5)")  # fmt: skip
PAPER_WEIGHTING = "LAION-weighted 5-10 points below equally weighted"
PAPER_INTRA = ("A significantly lower in ≈ 58-66 % of classes vs ImageNet val (CLIP image encoder: 502/872 = 57.6 %); "
               "70.6 % vs ImageNet-Captions; 32.0 % lower / 38.3 % higher vs ImageNetV2-b")  # fmt: skip


def _headline(ctx: _Context) -> str | None:
    """Each headline number of the paper beside this run's, with the class set it was computed on."""
    rows = []
    for path in _glob(ctx.path("evaluate", "recall-difference", "*", "*", "accuracy.parquet")):
        frame = ctx.read(path)
        if frame is None:
            continue
        pair, model = path.rsplit("/", 3)[-3:-1]
        a, _, b = pair.partition("--")
        for r in frame[(frame["class_set"] == "both") & (frame["weighting"] == "equal")].itertuples():
            value = (f"<b>{_pct(r.difference)}</b> ({_pct(r.accuracy_a)} vs {_pct(r.accuracy_b)}; 95 % "
                     f"{_interval(r.lower, r.upper)})")  # fmt: skip
            rows.append([_esc(_title(a, b, model, f"top-{r.k} accuracy A − B")), _esc(PAPER_ACCURACY_DROP), value,
                         _esc(f"the {r.classes_a} classes scored in both")])  # fmt: skip
    for path in _glob(ctx.path("evaluate", "accuracy", "*", "*", "summary.parquet")):
        frame = ctx.read(path)
        if frame is None or "laion" not in set(frame["weighting"]):
            continue
        variant, model = path.rsplit("/", 3)[-3:-1]
        top1 = frame[frame["k"] == 1]
        acc = dict(zip(top1["weighting"], top1["accuracy"].astype(float), strict=True))
        if "equal" not in acc:
            continue
        shown = [f"<b>{_pct(acc[w] - acc['equal'])}</b> ({w})" for w in ("laion", "laion-paper") if w in acc]
        classes = int(top1["classes"].iloc[0])
        quantity = f"{variant} — {model}, top-1 accuracy LAION-weighted − equally weighted"
        rows.append([_esc(quantity), _esc(PAPER_WEIGHTING), "; ".join(shown), _esc(f"all {classes} scored classes")])
    for path in _glob(ctx.path("evaluate", "intra", "*", "*", "summary.parquet")):
        frame = ctx.read(path)
        if frame is None or frame.empty:
            continue
        pair, model = path.rsplit("/", 3)[-3:-1]
        a, _, b = pair.partition("--")
        verdicts = "; ".join(f"<b>{_pct(r['lower'])}</b> lower, {_pct(r['higher'])} higher ({_esc(r['method'])})"
                             for r in frame.to_dict("records"))  # fmt: skip
        first = frame.iloc[0]
        where = str(first["class_set"]) if "class_set" in frame else "classes compared"
        rows.append([_esc(_title(a, b, model, "classes with significantly lower intra-class similarity")),
                     _esc(PAPER_INTRA), verdicts, _esc(f"{int(first['classes'])} {where}")])  # fmt: skip
    if not rows:
        return None
    note = ("<p class=note>The paper's values come from its full-scale run (LAION-400M, CLIP, 29 classifiers); a run "
            "on other data or models is not expected to match them.</p>")  # fmt: skip
    return _table(["quantity", "paper", "this run", "class set"], rows) + note


def _selection(ctx: _Context) -> str | None:
    sweep = ctx.read(ctx.path("selection", "sweep.parquet"))
    if sweep is None:
        return None
    manifest = read_manifest(ctx.path("selection"))
    extra = manifest.extra if manifest else {}
    threshold = extra.get("threshold")
    parts = []
    if manifest is not None:
        facts = [
            ("text encoder", _esc(extra.get("encoder", "–"))),
            ("chosen threshold", f"<b>{_esc(threshold)}</b> ({_esc(extra.get('threshold_rule', ''))})"),
            ("captions in", _int(manifest.rows_in)),
            ("selected", _int(manifest.rows_out)),
            ("classes", _int(extra.get("classes"))),
        ]
        parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>")
    alt = "Classes with at least one sample and dataset size against the similarity threshold (paper Fig. 3b, c)"
    parts.append(ctx.figure("fig_threshold_sweep.png", partial(figures.threshold_sweep, sweep, threshold), alt))
    hist = ctx.read(ctx.path("selection", "histogram.parquet"))
    if hist is not None:
        alt = "Distribution of the candidates' text-to-synset similarities (paper Fig. 3a)"
        draw = partial(figures.similarity_histogram, hist, threshold)
        parts.append(ctx.figure("fig_similarity_histogram.png", draw, alt))
    return "\n".join(parts)


def _frequencies(ctx: _Context) -> str | None:
    freq = ctx.read(ctx.path("selection", "class_frequency.parquet"))
    if freq is None or freq.empty:
        return None
    freq = freq.sort_values("n", ascending=False).reset_index(drop=True)
    alt = "Relative class frequencies in LAIONet, sorted, log scale; red: uniform weight (paper Fig. 4)"
    parts = [ctx.figure("fig_class_frequency.png", partial(figures.class_frequency, freq), alt)]
    n = min(10, len(freq))

    def rows(frame: pd.DataFrame) -> list[list[Any]]:
        return [[_int(i + 1), f"<code>{_esc(r.wnid)}</code>", _esc(r.name), _int(r.n), _pct(r.share)]
                for i, r in zip(frame.index, frame.itertuples(), strict=True)]  # fmt: skip

    header = ["rank", "wnid", "class", "samples", "share"]
    if len(freq) <= 2 * n:
        parts.append(f"<h3>All {len(freq)} classes</h3>{_table(header, rows(freq), {0, 3, 4})}")
    else:
        top, bottom = _table(header, rows(freq.head(n)), {0, 3, 4}), _table(header, rows(freq.tail(n)), {0, 3, 4})
        parts.append(f"<div class=cols><div><h3>{n} most frequent</h3>{top}</div>")
        parts.append(f"<div><h3>{n} least frequent</h3>{bottom}</div></div>")
    return "\n".join(parts)


def _accuracy(ctx: _Context) -> str | None:
    frames = []
    for path in _glob(ctx.path("evaluate", "accuracy", "*", "*", "summary.parquet")):
        frame = ctx.read(path)
        if frame is not None:
            variant, model = path.rsplit("/", 3)[-3:-1]
            frames.append(frame.assign(variant=variant, model=model))
    if not frames:
        return None
    summary = pd.concat(frames, ignore_index=True).sort_values(["variant", "model", "k", "weighting"])
    method = summary["bootstrap_method"] if "bootstrap_method" in summary else pd.Series("binomial", summary.index)
    rows = [[_esc(r.variant), _esc(r.model), f"top-{_esc(r.k)}", _esc(r.weighting), f"<b>{_pct(r.accuracy)}</b>",
             _interval(r.paper_lower, r.paper_upper), _interval(r.bootstrap_lower, r.bootstrap_upper), _esc(m),
             f"all {_int(r.classes)} scored classes of the variant"]
            for r, m in zip(summary.itertuples(), method, strict=True)]  # fmt: skip
    header = ["variant", "model", "k", "weighting", "accuracy", "paper 95 % interval", "bootstrap 95 % interval",
              "bootstrap method", "class set"]  # fmt: skip
    parts = [_table(header, rows, {4, 5, 6})]
    parts.append("<p class=note>Paper interval: the reference's Wilson-per-class combination, symmetric around the "
                 "accuracy (so it can leave [0 %, 100 %]); bootstrap <i>jeffreys</i>: each class's correct count "
                 "redrawn from Binomial(n, (correct + ½)/(n + 1)), recentred on the accuracy (holds its level with "
                 "classes of 1-2 images, where a plain binomial resample has no variance). Weighting <i>laion</i>: "
                 "Σ share·recall / Σ share over the scored classes (default); <i>laion-paper</i>: the reference's "
                 "Σ share·recall with the shares of the full pre-OCR LAIONet, an unscored class counting as 0."
                 "</p>")  # fmt: skip
    parts.append(_compared_accuracy(ctx))
    for k in sorted(set(summary.loc[summary["weighting"] == "laion", "k"])):
        alt = f"LAION-weighted against equally weighted top-{k} accuracy, per variant and model (paper Fig. 5)"
        draw = partial(figures.weighted_vs_equal, summary, k=int(k))
        parts.append(ctx.figure(f"fig_weighted_accuracy_top-{k}.png", draw, alt))
    parts.extend(_accuracy_pairs(ctx))
    return "\n".join(parts)


def _accuracy_pairs(ctx: _Context) -> list[str]:
    """Fig. 1 per compared pair and k: accuracy on B against accuracy on A over the classes both have, per model."""
    frames = []
    for path in _glob(ctx.path("evaluate", "recall-difference", "*", "*", "accuracy.parquet")):
        frame = ctx.read(path)
        if frame is not None:
            pair, model = path.rsplit("/", 3)[-3:-1]
            frames.append(frame.assign(pair=pair, model=model))
    if not frames:
        return []
    table = pd.concat(frames, ignore_index=True)
    table = table[(table["class_set"] == "both") & (table["weighting"] == "equal")]
    parts = []
    keys = sorted(set(zip(table["pair"].astype(str), table["k"].astype(int), strict=True)))
    for pair, k in keys:
        group = table[(table["pair"] == pair) & (table["k"] == k)]
        a, _, b = pair.partition("--")
        alt = (f"{a} vs {b} — top-{k} accuracy on {b} against on {a}, one point per model, over the classes both "
               f"have; dashed: y = x (paper Fig. 1)")  # fmt: skip
        draw = partial(figures.accuracy_pairs, group, a, b, k=k)
        parts.append(ctx.figure(f"fig_accuracy_{_file_stem(a, b, '', f'top-{k}')}.png", draw, alt))
    return parts


def _compared_accuracy(ctx: _Context) -> str:
    """The accuracy of each compared pair over the classes both have, and each over all its own classes."""
    frames = []
    for path in _glob(ctx.path("evaluate", "recall-difference", "*", "*", "accuracy.parquet")):
        frame = ctx.read(path)
        if frame is not None:
            pair, model = path.rsplit("/", 3)[-3:-1]
            frames.append(frame.assign(pair=pair, model=model))
    if not frames:
        return ""
    table = pd.concat(frames, ignore_index=True).sort_values(["pair", "model", "k", "weighting", "class_set"])
    rows = []
    for r in table.itertuples():
        a, _, b = str(r.pair).partition("--")
        if r.class_set == "both":
            where = f"the {_int(r.classes_a)} classes scored in both"
        else:
            where = f"all scored classes of each ({_int(r.classes_a)} / {_int(r.classes_b)})"
        rows.append([_esc(a), _esc(b), _esc(r.model), f"top-{_esc(r.k)}", _esc(r.weighting), _esc(where),
                     _pct(r.accuracy_a), _pct(r.accuracy_b), f"<b>{_pct(r.difference)}</b>",
                     _interval(r.lower, r.upper), _esc(r.interval)])  # fmt: skip
    header = ["A", "B", "model", "k", "weighting", "class set", "accuracy A", "accuracy B", "A − B", "95 % interval",
              "interval method"]  # fmt: skip
    return ("<h3>Compared pairs</h3><p class=note>A against B on the same classes (the paper's comparison), and each "
            "over all its own classes as its own row (not a like-for-like difference).</p>"
            + _table(header, rows, {6, 7, 8, 9}))  # fmt: skip


def _intra(ctx: _Context) -> str | None:
    parts = []
    for summary_path in _glob(ctx.path("evaluate", "intra", "*", "*", "summary.parquet")):
        model_dir = _dirname(summary_path)
        pair, model = _dirname(model_dir).rsplit("/", 1)[-1], model_dir.rsplit("/", 1)[-1]
        a, _, b = pair.partition("--")
        summary = ctx.read(summary_path)
        intra_a, intra_b = ctx.read(join(model_dir, "intra_a.parquet")), ctx.read(join(model_dir, "intra_b.parquet"))
        boot = ctx.read(join(model_dir, "compare_bootstrap.parquet"))
        parts.append(f"<h3>{_esc(a)} vs {_esc(b)} <small>image encoder {_esc(model)}</small></h3>")
        if summary is not None:
            rows = [[_esc(r["method"]), _int(r["classes"]), _pct(r["lower"]), _pct(r["higher"])]
                    for r in summary.to_dict("records")]  # fmt: skip
            header = ["method", "classes compared", f"{a} significantly lower", f"{a} significantly higher"]
            parts.append(_table(header, rows, {1, 2, 3}))
        stem = f"{slug(pair)}_{slug(model)}"
        pooled = ctx.read(join(model_dir, "pooled_pairs.parquet"))
        if pooled is not None and not pooled.empty:
            alt = (f"Within-class pair similarities of {a} and {b}, pooled over classes, each class drawn to the same "
                   f"size in both (paper Fig. 6a) — image encoder {model}")  # fmt: skip
            draw = partial(figures.pair_distributions, pooled, a, b)
            parts.append(ctx.figure(f"fig_intra_{stem}.png", draw, alt))
        elif intra_a is not None and intra_b is not None:
            alt = f"Per-class mean intra-class similarity of {a} and {b} (per-class version of Fig. 6a)"
            draw = partial(figures.intra_distributions, intra_a, intra_b, a, b)
            parts.append(ctx.figure(f"fig_intra_{stem}.png", draw, alt))
        if boot is not None and not boot.empty:
            alt = f"Per-class intra-class similarity of {a} minus {b}, sorted, bootstrap 95 % bounds (paper Fig. 6b)"
            draw = partial(figures.sorted_differences, boot, ylabel=f"intra-class similarity {a} − {b}")
            parts.append(ctx.figure(f"fig_intra_diff_{stem}.png", draw, alt))
            parts.append(_extremes(ctx, boot, a, b))
    return "\n".join(parts) or None


def _extremes(ctx: _Context, compare: pd.DataFrame, a: str, b: str, n: int = 5) -> str:
    """The classes with the most negative and most positive difference, with bounds."""
    ordered = compare.sort_values("delta")
    picked = pd.concat([ordered.head(n), ordered.tail(n)]).drop_duplicates(subset="class")
    rows = [[_esc(ctx.name(r["class"])), _num(r["mean_a"]), _num(r["mean_b"]), f"<b>{_num(r['delta'])}</b>",
             _interval(r["lower"], r["upper"], _num)] for r in picked.to_dict("records")]  # fmt: skip
    return _table(["class", a, b, "difference", "95 % interval"], rows, {1, 2, 3, 4})


def _differences(ctx: _Context, kind: str, ylabel: str) -> str | None:
    """Per-class difference tables (``delta``, ``lower``, ``upper``) under ``evaluate/<kind>/``; other small tables
    shown as they are."""
    parts = []
    for path in _glob(ctx.path("evaluate", kind, "**", "*.parquet")):
        if path.endswith("/accuracy.parquet"):  # the pair's accuracy: shown in the accuracy section
            continue
        frame = ctx.read(path)
        if frame is None:
            continue
        where = ctx.rel(path).removeprefix(f"evaluate/{kind}/")
        (a, b), model, metric = _named_path(where, ylabel)
        title = _title(a, b, model, metric)
        parts.append(f"<h3>{_esc(title)}</h3>")
        if {"delta", "lower", "upper"} <= set(frame.columns) and len(frame):
            lower, higher = (frame["upper"] < 0).mean(), (frame["lower"] > 0).mean()
            parts.append(f"<p>{_int(len(frame))} classes; {_esc(a)} significantly lower than {_esc(b)} in "
                         f"<b>{_pct(lower)}</b>, significantly higher in <b>{_pct(higher)}</b>.</p>")  # fmt: skip
            name = f"fig_{slug(kind)}_{_file_stem(a, b, model, metric)}.png"
            label = f"{metric} {a} − {b}"
            draw = partial(figures.sorted_differences, frame, ylabel=label)
            parts.append(ctx.figure(name, draw, f"{title}: {label}, per class, sorted, 95 % bounds"))
        elif {"group", "value"} <= set(frame.columns) and (frame["group"] == "a_matched").any():
            alt = f"{title}: A resampled to B's class sizes against B (paper Fig. 13a)"
            draw = partial(figures.own_similarity_distributions, frame, a, b)
            parts.append(ctx.figure(f"fig_{slug(kind)}_{_file_stem(a, b, model, 'distribution')}.png", draw, alt))
        elif len(frame) <= 30:
            parts.append(_frame_table(_named(ctx, frame)))
        else:
            columns = _esc(", ".join(map(str, frame.columns)))
            parts.append(f"<p class=note>{_int(len(frame))} rows; columns {columns}</p>")
    return "\n".join(parts) or None


def _named_path(where: str, default_metric: str) -> tuple[tuple[str, str], str, str]:
    """((A, B), model, metric) of an evaluate table from its path below its stage: ``<a>--<b>/<model>/<table>``
    (``recall_at_1`` → ``recall@1``; ``per_class``/``summary`` → ``default_metric``)."""
    parts = where.removesuffix(".parquet").split("/")
    pair = next((p for p in parts if "--" in p), "")
    a, b = pair.split("--", 1) if pair else ("A", "B")
    model = "/".join(p for p in parts[:-1] if p != pair)
    table = parts[-1]
    if table.startswith("recall_at_"):
        metric = f"recall@{table.removeprefix('recall_at_')}"
    elif table in ("per_class", "summary"):
        metric = default_metric if table == "per_class" else f"{default_metric} (summary)"
    else:
        metric = table
    return (a, b), model, metric


def _title(a: str, b: str, model: str, metric: str) -> str:
    """``"laionet vs imagenet-val — efficientnet_lite0, recall@1"``."""
    return f"{a} vs {b} — {model}, {metric}" if model else f"{a} vs {b} — {metric}"


def _file_stem(a: str, b: str, model: str, metric: str) -> str:
    return "_".join(slug(p) for p in (f"{a}-vs-{b}", model, metric.replace("@", "-at-")) if p)


def _axes(frame: pd.DataFrame, hint: Any) -> tuple[str, str] | None:
    """The (x, y) columns of a relations table: named by its manifest, or ``x``/``y``, or its only two numeric
    columns (identifiers and interval bounds aside)."""
    if isinstance(hint, list | tuple) and len(hint) == 2 and set(hint) <= set(frame.columns):
        return str(hint[0]), str(hint[1])
    if isinstance(hint, dict) and {"x", "y"} <= set(hint) and {hint["x"], hint["y"]} <= set(frame.columns):
        return str(hint["x"]), str(hint["y"])
    if {"x", "y"} <= set(frame.columns):
        return "x", "y"
    numeric = [
        str(c)
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        and str(c) not in _ID_COLUMNS and not str(c).endswith(("lower", "upper"))
    ]  # fmt: skip
    return (numeric[0], numeric[1]) if len(numeric) == 2 else None


def _relations(ctx: _Context) -> str | None:
    parts = []
    for path in _glob(ctx.path("evaluate", "relations", "**", "*.parquet")):
        frame = ctx.read(path)
        if frame is None:
            continue
        stem = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        manifest = read_manifest(path) or read_manifest(_dirname(path))
        extra = manifest.extra if manifest else {}
        hint = extra.get("axes", {}).get(stem) if isinstance(extra.get("axes"), dict) else None
        hint = hint or (extra.get(stem) if isinstance(extra.get(stem), dict | list) else None)
        where = ctx.rel(path).removeprefix("evaluate/relations/")
        labels = extra.get("labels")
        names: dict[str, Any] = labels if isinstance(labels, dict) else {}
        (a, b), model, metric = _named_path(where, stem)
        a, b = names.get("a", a), names.get("b", b)
        described = hint if isinstance(hint, dict) else {}
        metric = str(described.get("title", metric.replace("_", " ")))
        figure = str(described.get("figure", "paper Fig. 7"))
        title = _title(a, b, model, metric)
        parts.append(f"<h3>{_esc(title)}</h3>")
        axes = _axes(frame, hint)
        if axes is not None and len(frame) > 1:
            name = f"fig_relations_{_file_stem(a, b, model, stem)}.png"
            alt = f"{title}: {axes[1]} against {axes[0]}, one point per class ({figure})"
            parts.append(ctx.figure(name, partial(figures.scatter, frame, axes[0], axes[1]), alt))
        if len(frame) <= 30:
            parts.append(_frame_table(_named(ctx, frame)))
    return "\n".join(parts) or None


def _named(ctx: _Context, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the class name beside its ``class`` column (when it has one and no name yet)."""
    if "class" not in frame or "name" in frame or not ctx.names:
        return frame
    named = frame.copy()
    named.insert(list(frame.columns).index("class") + 1, "name", [ctx.name(c) for c in frame["class"]])
    return named


def _grids(ctx: _Context, n_classes: int, per_class: int) -> str | None:
    """Up to ``per_class`` thumbnails of each of the ``n_classes`` most frequent classes, per variant."""
    labels = {p.rsplit("/", 2)[-2]: p for p in _glob(ctx.path("variants", "*", "labels.parquet"))}
    plan: dict[str, pd.DataFrame] = {}  # variant → key, wnid
    for variant, path in sorted(labels.items()):
        frame = ctx.read(path)
        if frame is not None and {"key", "wnid"} <= set(frame.columns):
            plan[variant] = frame[["key", "wnid"]]
    if not plan and _glob(join(shards_dir(ctx.run_dir), "*.tar")):
        plan["laionet"] = _shard_labels(ctx, shards_dir(ctx.run_dir))
    plan = {v: f for v, f in plan.items() if not f.empty}
    if not plan:
        return None
    freq = ctx.read(ctx.path("selection", "class_frequency.parquet"))
    if freq is not None:
        ranked = list(freq.sort_values("n", ascending=False)["wnid"])
    else:
        ranked = list(next(iter(plan.values()))["wnid"].value_counts().index)
    classes = [str(w) for w in ranked][:n_classes]
    located = {d: keys_by_tar(shards_dir(ctx.run_dir, d)) for d in {dataset_of(v) for v in plan}}
    wanted: dict[str, dict[str, set[str]]] = {}  # dataset → tar → keys
    chosen: dict[tuple[str, str], list[str]] = {}
    for variant, frame in plan.items():
        dataset = dataset_of(variant)
        candidates = frame[frame["wnid"].isin(classes)]
        candidates = candidates.assign(tar=candidates["key"].astype(str).map(located[dataset]))
        # prefer keys held by the fewest, earliest shards: at scale, a handful of tars is read, not all of them
        candidates = candidates.dropna(subset=["tar"]).sort_values("tar", kind="stable")
        for key, wnid, tar in candidates.groupby("wnid", sort=False).head(per_class).itertuples(index=False):
            chosen.setdefault((variant, wnid), []).append(str(key))
            wanted.setdefault(dataset, {}).setdefault(tar, set()).add(str(key))
    images: dict[tuple[str, str], Any] = {}
    for dataset, by_tar in wanted.items():
        for tar, keys in sorted(by_tar.items()):
            images.update({(dataset, k): im for k, im in read_images(tar, keys).items()})
    parts = []
    for wnid in classes:
        cells = []
        for variant in plan:
            dataset = dataset_of(variant)
            shown = [images[dataset, k] for k in chosen.get((variant, wnid), []) if (dataset, k) in images]
            if not shown:
                cells.append(f"<div class=gridrow><span>{_esc(variant)}</span><em>no images</em></div>")
                continue
            name = f"grid_{slug(variant)}_{slug(wnid)}.png"
            alt = f"{len(shown)} {variant} images of {ctx.name(wnid)} ({wnid})"
            path = figures.image_grid(shown, join(ctx.out_dir, name))
            ctx.figures.append(path)
            cells.append(f'<div class=gridrow><span>{_esc(variant)}</span><img src="{name}" alt="{_esc(alt)}"></div>')
        parts.append(f"<h3>{_esc(ctx.name(wnid))} <small><code>{_esc(wnid)}</code></small></h3>" + "".join(cells))
    return "\n".join(parts)


def _shard_labels(ctx: _Context, shards: str) -> pd.DataFrame:
    """``key``, ``wnid`` of the successfully written samples of a shard directory (from the shards' parquet files)."""
    frames = []
    for path in _glob(join(shards, "*.parquet")):
        frame = ctx.read(path)
        if frame is None or not {"key", "wnid"} <= set(frame.columns):
            continue
        if "status" in frame:
            frame = frame[frame["status"] == "success"]
        frames.append(frame[["key", "wnid"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["key", "wnid"])


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
        ("pipeline", "Pipeline counts", lambda: _pipeline(ctx), "no stage manifests"),
        ("headline", "Paper vs this run", lambda: _headline(ctx), "evaluate/ accuracy, recall-difference, intra"),
        ("selection", "Threshold sweep (Fig. 3)", lambda: _selection(ctx), "selection/sweep.parquet"),
        ("frequency", "Class frequencies (Fig. 4)", lambda: _frequencies(ctx), "selection/class_frequency.parquet"),
        ("accuracy", "Accuracy", lambda: _accuracy(ctx), "evaluate/accuracy/*/*/summary.parquet"),
        ("intra", "Intra-class similarity (Fig. 6)", lambda: _intra(ctx), "evaluate/intra/*/*/"),
        ("recall-difference", "Per-class recall differences (Appendix B)",
         lambda: _differences(ctx, "recall-difference", "recall"), "evaluate/recall-difference/"),
        ("own-similarity", "Image-to-own-synset similarity (Appendix C)",
         lambda: _differences(ctx, "own-similarity", "own-synset similarity"), "evaluate/own-similarity/"),
        ("relations", "Recall vs intra-class disparity (Fig. 7)", lambda: _relations(ctx), "evaluate/relations/"),
        ("text-alone", "Text alone (Section 4.2, Fig. 9)", lambda: section4.text_alone(ctx),
         "diagnose/text-alone/"),
        ("selection-frequency", "Selection frequency (Section 4.1, Fig. 8)", lambda: section4.selection_frequency(ctx),
         "diagnose/selection-frequency/"),
        ("filtered", "Image+text-filtered variants (Appendix D)", lambda: section4.filtered_variants(ctx),
         "diagnose/filtered/"),
        ("nearest", "Nearest captions (Section 4.3, Figs. 10, 16)", lambda: section4.nearest_captions(ctx),
         "diagnose/nearest/"),
        ("grids", "Sample images per class", lambda: _grids(ctx, grid_classes, grid_per_class), "no shards"),
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
