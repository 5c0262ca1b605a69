"""The report's evaluate sections: accuracy (equal and LAION-weighted, compared pairs, Figs. 1 and 5), intra-class
similarity (Fig. 6), per-class differences (recall, own-synset similarity; Appendices B, C) and relations (Fig. 7),
with the helpers that name a table's pair, model and metric from its path. Each returns HTML, or None when its tables
are absent.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd

from laionet.core.layout import slug
from laionet.core.manifest import join, read_manifest
from laionet.report import figures
from laionet.report.page import (
    _ID_COLUMNS,
    _Context,
    _dirname,
    _esc,
    _frame_table,
    _glob,
    _int,
    _interval,
    _num,
    _pct,
    _table,
)


def accuracy(ctx: _Context) -> str | None:
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


def intra(ctx: _Context) -> str | None:
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


def differences(ctx: _Context, kind: str, ylabel: str) -> str | None:
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
        title = pair_title(a, b, model, metric)
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


def pair_title(a: str, b: str, model: str, metric: str) -> str:
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


def relations(ctx: _Context) -> str | None:
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
        title = pair_title(a, b, model, metric)
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
