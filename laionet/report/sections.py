"""The report's run-level sections: pipeline counts (every stage manifest), the paper's headline numbers beside this
run's, the selection's threshold sweep and similarity histogram (Fig. 3), class frequencies (Fig. 4) and sample image
grids per class (shards, ``variants/<variant>/labels.parquet``). Each returns HTML, or None when its tables are absent.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd

from laionet.core.layout import dataset_of, shards_dir, slug, stage_outputs
from laionet.core.manifest import join, read_manifest
from laionet.images.shard_list import keys_by_tar
from laionet.images.shards import read_images
from laionet.report import figures
from laionet.report.comparisons import pair_title
from laionet.report.page import _Context, _esc, _glob, _int, _interval, _pct, _table, _when


def pipeline(ctx: _Context) -> str | None:
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


def headline(ctx: _Context) -> str | None:
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
            rows.append([_esc(pair_title(a, b, model, f"top-{r.k} accuracy A − B")), _esc(PAPER_ACCURACY_DROP), value,
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
        rows.append([_esc(pair_title(a, b, model, "classes with significantly lower intra-class similarity")),
                     _esc(PAPER_INTRA), verdicts, _esc(f"{int(first['classes'])} {where}")])  # fmt: skip
    if not rows:
        return None
    note = ("<p class=note>The paper's values come from its full-scale run (LAION-400M, CLIP, 29 classifiers); a run "
            "on other data or models is not expected to match them.</p>")  # fmt: skip
    return _table(["quantity", "paper", "this run", "class set"], rows) + note


def selection(ctx: _Context) -> str | None:
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


def frequencies(ctx: _Context) -> str | None:
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


def grids(ctx: _Context, n_classes: int, per_class: int) -> str | None:
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
