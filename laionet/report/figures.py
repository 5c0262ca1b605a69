"""Report figures: one pure function per figure, tables in, PNG path out (matplotlib's Agg canvas, no pyplot state).

Each function draws one figure from the columns named in its docstring, writes it atomically to ``path`` (local or
fsspec URL) and returns ``path``. The figures follow the paper: threshold sweep (Fig. 3), class frequencies (Fig. 4),
LAION-weighted vs equal accuracy (Fig. 5), intra-class similarity distributions and per-class differences (Fig. 6),
scatter of two per-class quantities (Fig. 7); ``image_grid`` tiles sample thumbnails.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from laionet.core.manifest import atomic_path

BLUE, RED, ORANGE, GREY = "#1f77b4", "#d62728", "#ff7f0e", "#7f7f7f"
_SIZE = (6.4, 3.6)
_DPI = 110


def _figure(size: tuple[float, float] = _SIZE) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Any, integer_x: bool = False, integer_y: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if integer_y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _write_png(data: bytes, path: str) -> str:
    with atomic_path(path) as tmp, fsspec.open(tmp, "wb") as f:
        f.write(data)
    return path


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return _write_png(buffer.getvalue(), path)


def threshold_sweep(sweep: pd.DataFrame, threshold: float | None, path: str) -> str:
    """Fig. 3b/c: classes with ≥1 sample and dataset size against the similarity threshold, the chosen threshold
    dashed. ``sweep``: ``threshold``, ``n_samples``, ``n_classes``."""
    fig = _figure((9.0, 3.4))
    axes = fig.subplots(1, 2)
    for ax, column, label, color in (
        (axes[0], "n_classes", "classes with ≥ 1 sample", BLUE),
        (axes[1], "n_samples", "dataset size (samples)", ORANGE),
    ):
        ax.plot(sweep["threshold"], sweep[column], color=color, linewidth=1.8)
        if threshold is not None:
            ax.axvline(threshold, color=GREY, linestyle="--", linewidth=1.2, label=f"chosen threshold {threshold:g}")
            ax.legend(loc="upper right", frameon=False, fontsize=8)
        ax.set_xlabel("text-to-synset similarity threshold")
        ax.set_ylabel(label)
        _style(ax)
    return _save(fig, path)


def similarity_histogram(histogram: pd.DataFrame, threshold: float | None, path: str) -> str:
    """Fig. 3a: distribution of the candidates' text-to-synset similarities. ``histogram``: ``bin_left``,
    ``bin_right``, ``count`` (the empty tails are trimmed)."""
    used = histogram[histogram["count"] > 0]
    lo, hi = (used["bin_left"].min(), used["bin_right"].max()) if len(used) else (-1.0, 1.0)
    shown = histogram[(histogram["bin_left"] >= lo) & (histogram["bin_right"] <= hi)]
    fig = _figure()
    ax = fig.subplots()
    width = (shown["bin_right"] - shown["bin_left"]).to_numpy()
    ax.bar(shown["bin_left"], shown["count"], width=width, align="edge", color=BLUE, edgecolor="white", linewidth=0.3)
    if threshold is not None:
        ax.axvline(threshold, color=GREY, linestyle="--", linewidth=1.2, label=f"chosen threshold {threshold:g}")
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("text-to-synset similarity")
    ax.set_ylabel("candidate captions")
    _style(ax)
    return _save(fig, path)


def class_frequency(freq: pd.DataFrame, path: str, top: int = 500, labels: int = 8) -> str:
    """Fig. 4: relative class frequencies in descending order (log scale) for the ``top`` most frequent classes,
    a few class names shown, the uniform weight in red. ``freq``: ``share``, and ``name`` or ``wnid``."""
    ordered = freq.sort_values("share", ascending=False).reset_index(drop=True)
    shown = ordered.head(top)
    fig = _figure()
    ax = fig.subplots()
    rank = np.arange(1, len(shown) + 1)
    ax.plot(rank, shown["share"], color=BLUE, linewidth=1.6, marker="o" if len(shown) <= 60 else None, markersize=2.5)
    if len(ordered):
        ax.axhline(1 / len(ordered), color=RED, linewidth=1.0, label=f"uniform (1/{len(ordered)})")
        ax.legend(frameon=False, fontsize=8, loc="upper right")
    names = shown["name"] if "name" in shown else shown["wnid"]
    for i in np.unique(np.linspace(0, len(shown) - 1, num=min(labels, len(shown))).astype(int)):
        ax.annotate(str(names.iloc[i]), (rank[i], shown["share"].iloc[i]), textcoords="offset points",
                    xytext=(3, 4), fontsize=7, rotation=30, color="#333333")  # fmt: skip
    ax.set_yscale("log")
    cut = f" (the {len(shown)} most frequent of {len(ordered)})" if len(shown) < len(ordered) else ""
    ax.set_xlabel(f"class rank{cut}")
    ax.set_ylabel("share of LAIONet")
    _style(ax, integer_x=True)
    return _save(fig, path)


def weighted_vs_equal(summary: pd.DataFrame, path: str, k: int = 1) -> str:
    """Fig. 5: LAION-weighted against equally weighted top-``k`` accuracy, one point per variant and model.
    ``summary``: ``variant``, ``model``, ``k``, ``weighting``, ``accuracy``."""
    at_k = summary[summary["k"] == k]
    wide = at_k.pivot_table(index=["variant", "model"], columns="weighting", values="accuracy").dropna()
    fig = _figure((4.6, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1.0)
    variants = list(dict.fromkeys(v for v, _ in wide.index))
    colors = [BLUE, ORANGE, RED, "#2ca02c", "#9467bd", "#8c564b"]
    for i, variant in enumerate(variants):
        part = wide.loc[variant]
        ax.scatter(part["equal"], part["laion"], s=22, color=colors[i % len(colors)], label=variant)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"equally weighted top-{k} accuracy")
    ax.set_ylabel(f"LAION-weighted top-{k} accuracy")
    ax.legend(frameon=False, fontsize=8)
    _style(ax)
    return _save(fig, path)


def intra_distributions(intra_a: pd.DataFrame, intra_b: pd.DataFrame, label_a: str, label_b: str, path: str) -> str:
    """Fig. 6a (per-class version): histograms of the per-class mean intra-class similarity of A and B.
    ``intra_a``/``intra_b``: ``mean``."""
    a, b = intra_a["mean"].dropna().to_numpy(), intra_b["mean"].dropna().to_numpy()
    both = np.concatenate([a, b])
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, 31)
    fig = _figure()
    ax = fig.subplots()
    ax.hist(a, bins=edges, color=BLUE, alpha=0.55, label=f"{label_a} ({len(a)} classes, mean {np.mean(a):.3f})")
    ax.hist(b, bins=edges, color=ORANGE, alpha=0.55, label=f"{label_b} ({len(b)} classes, mean {np.mean(b):.3f})")
    ax.set_xlabel("mean pairwise cosine similarity within a class")
    ax.set_ylabel("classes")
    ax.legend(frameon=False, fontsize=8)
    _style(ax, integer_y=True)
    return _save(fig, path)


def pair_distributions(pooled: pd.DataFrame, label_a: str, label_b: str, path: str) -> str:
    """Fig. 6a as the paper draws it: densities of the pooled within-class pair similarities of A and B, each class
    drawn to the same size in both. ``pooled``: ``group`` (a/b), ``value``."""
    a = pooled.loc[pooled["group"] == "a", "value"].to_numpy(float)
    b = pooled.loc[pooled["group"] == "b", "value"].to_numpy(float)
    both = np.concatenate([a, b])
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    fig = _figure()
    ax = fig.subplots()
    for values, color, label in ((a, BLUE, label_a), (b, ORANGE, label_b)):
        if len(values):
            ax.hist(values, bins=edges, density=True, color=color, alpha=0.55,
                    label=f"{label} ({len(values)} pairs, mean {values.mean():.3f})")  # fmt: skip
    ax.set_xlabel("cosine similarity of two images of the same class")
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    _style(ax)
    return _save(fig, path)


def sorted_differences(compare: pd.DataFrame, path: str, ylabel: str) -> str:
    """Fig. 6b: per-class differences A − B sorted ascending, with the upper (blue) and lower (red) 95 % bounds.
    ``compare``: ``delta``, ``lower``, ``upper``."""
    ordered = compare.sort_values("delta").reset_index(drop=True)
    x = np.arange(1, len(ordered) + 1)
    fig = _figure()
    ax = fig.subplots()
    ax.fill_between(x, ordered["lower"], ordered["upper"], color="#cccccc", alpha=0.5, linewidth=0)
    ax.plot(x, ordered["upper"], color=BLUE, linewidth=1.0, label="upper 95 % bound")
    ax.plot(x, ordered["lower"], color=RED, linewidth=1.0, label="lower 95 % bound")
    ax.plot(x, ordered["delta"], color="black", linewidth=1.4, marker="o" if len(x) <= 60 else None, markersize=2.5,
            label="difference")  # fmt: skip
    ax.axhline(0, color=GREY, linewidth=0.8)
    ax.set_xlabel("classes (sorted by difference)")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8)
    _style(ax, integer_x=True)
    return _save(fig, path)


def scatter(frame: pd.DataFrame, x: str, y: str, path: str, title: str | None = None) -> str:
    """Fig. 7: one point per row of ``frame`` (e.g. per class: recall against intra-class disparity), with a least
    squares line. ``frame``: the numeric columns ``x`` and ``y``."""
    data = frame[[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
    fig = _figure((5.2, 4.0))
    ax = fig.subplots()
    ax.scatter(data[x], data[y], s=14, color=BLUE, alpha=0.75, edgecolors="none")
    if len(data) >= 3 and data[x].nunique() > 1:
        slope, intercept = np.polyfit(data[x], data[y], 1)
        xs = np.linspace(data[x].min(), data[x].max(), 2)
        ax.plot(xs, slope * xs + intercept, color=RED, linewidth=1.2, label=f"least squares (slope {slope:.3g})")
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title, fontsize=9)
    _style(ax)
    return _save(fig, path)


def accuracy_pairs(frame: pd.DataFrame, label_a: str, label_b: str, path: str, k: int = 1) -> str:
    """Fig. 1: top-``k`` accuracy on B (x, e.g. ImageNet val) against on A (y, e.g. LAIONet), one point per model,
    with the line y = x. ``frame``: ``model``, ``accuracy_a``, ``accuracy_b`` (one class set for both)."""
    fig = _figure((4.6, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1.0, label="y = x")
    ax.scatter(frame["accuracy_b"], frame["accuracy_a"], s=24, color=BLUE)
    for model, x, y in zip(frame["model"], frame["accuracy_b"].astype(float), frame["accuracy_a"].astype(float),
                           strict=True):  # fmt: skip
        ax.annotate(str(model), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"top-{k} accuracy on {label_b}")
    ax.set_ylabel(f"top-{k} accuracy on {label_a}")
    ax.legend(frameon=False, fontsize=8)
    _style(ax)
    return _save(fig, path)


def own_similarity_distributions(distribution: pd.DataFrame, label_a: str, label_b: str, path: str) -> str:
    """Fig. 13a: densities of each image's similarity to its own class's synset text, A resampled to B's per-class
    counts (``a_matched``) against B. ``distribution``: ``group`` (a, a_matched, b), ``value``."""
    values = {g: distribution.loc[distribution["group"] == g, "value"].to_numpy(float) for g in ("a_matched", "b")}
    both = np.concatenate(list(values.values()))
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    fig = _figure()
    ax = fig.subplots()
    for group, color, label in (("a_matched", BLUE, f"{label_a} (B's class sizes)"), ("b", ORANGE, label_b)):
        v = values[group]
        if len(v):
            ax.hist(v, bins=edges, density=True, color=color, alpha=0.55, label=f"{label} (mean {v.mean():.3f})")
    ax.set_xlabel("image-to-own-synset-text similarity")
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    _style(ax)
    return _save(fig, path)


def image_grid(images: Sequence[Any], path: str, thumb: int = 128, columns: int = 8, pad: int = 4) -> str:
    """Tile PIL images as square ``thumb``-pixel thumbnails (aspect kept, centred on white), ``columns`` per row."""
    from PIL import Image

    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * (thumb + pad) + pad, rows * (thumb + pad) + pad), "white")
    for i, image in enumerate(images):
        small = image.convert("RGB")
        small.thumbnail((thumb, thumb))
        left = pad + (i % columns) * (thumb + pad) + (thumb - small.width) // 2
        top = pad + (i // columns) * (thumb + pad) + (thumb - small.height) // 2
        sheet.paste(small, (left, top))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return _write_png(buffer.getvalue(), path)


def caption_histogram(histogram: pd.DataFrame, sufficient: float | None, path: str) -> str:
    """Fig. 9a: captions per bin of their similarity to their own synset, the sufficient similarity dashed.
    ``histogram``: ``bin_left``, ``bin_right``, ``captions``."""
    filled = histogram[histogram["captions"] > 0]
    fig = _figure()
    ax = fig.subplots()
    if len(filled):
        width = (filled["bin_right"] - filled["bin_left"]).to_numpy(float)
        ax.bar(filled["bin_left"], filled["captions"], width=width, align="edge", color=BLUE, alpha=0.8)
    if sufficient is not None:
        ax.axvline(sufficient, color=GREY, linestyle="--", linewidth=1.2, label=f"sufficient similarity {sufficient:g}")
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("similarity of a caption to its own synset text, s(t, y)")
    ax.set_ylabel("captions")
    _style(ax, integer_y=True)
    return _save(fig, path)


def caption_p_by_bin(bins: pd.DataFrame, sufficient: float | None, path: str) -> str:
    """Fig. 9b: per bin of own similarity, the mean share of other classes more similar than the own class, with its
    95 % interval. ``bins``: ``bin_left``, ``bin_right``, ``captions``, ``mean_p``, ``lower``, ``upper``."""
    filled = bins[bins["captions"] > 0]
    centre = ((filled["bin_left"] + filled["bin_right"]) / 2).to_numpy(float)
    mean = filled["mean_p"].to_numpy(float)
    fig = _figure()
    ax = fig.subplots()
    ax.errorbar(centre, mean, yerr=[mean - filled["lower"].to_numpy(float), filled["upper"].to_numpy(float) - mean],
                color=BLUE, marker="o", markersize=3, linewidth=1.2, capsize=2)  # fmt: skip
    if sufficient is not None:
        ax.axvline(sufficient, color=GREY, linestyle="--", linewidth=1.2, label=f"sufficient similarity {sufficient:g}")
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("similarity of a caption to its own synset text, s(t, y)")
    ax.set_ylabel("share of other classes more similar, p(t)")
    _style(ax)
    return _save(fig, path)


def proportions_against(proportions: pd.DataFrame, x_label: str, path: str) -> str:
    """Fig. 8b/8c: per compared pair side (A lower, B lower), the share of classes significantly lower against x,
    with its 95 % interval; the sides are drawn a little apart so equal values stay visible. ``proportions``: ``a``,
    ``b``, ``x``, ``side``, ``share``, ``lower``, ``upper``."""
    import textwrap

    fig = _figure()
    ax = fig.subplots()
    colors = [BLUE, RED, ORANGE, GREY, "#2ca02c", "#9467bd"]
    markers = ["o", "s", "^", "D", "v", "P"]
    fixed = "b" if proportions["a"].nunique() >= proportions["b"].nunique() else "a"  # the side that names a line
    span = float(proportions["x"].max() - proportions["x"].min()) or 1.0
    groups = list(proportions.groupby(["side", fixed]))
    for i, ((side, name), frame) in enumerate(groups):
        frame = frame.sort_values("x")
        share = frame["share"].to_numpy(float)
        err = [share - frame["lower"].to_numpy(float), frame["upper"].to_numpy(float) - share]
        x = frame["x"].to_numpy(float) + (i - (len(groups) - 1) / 2) * 0.012 * span
        lower, other = ("A", "B") if side == "a_lower" else ("B", "A")
        label = f"{lower} significantly lower than {other}" + (f" ({fixed.upper()} = {name})" if name else "")
        ax.errorbar(x, share, yerr=err, color=colors[i % len(colors)], marker=markers[i % len(markers)],
                    markersize=4, linewidth=1.2, capsize=2, label=label)  # fmt: skip
    ax.set_xlabel("\n".join(textwrap.wrap(x_label, 80)))
    ax.set_ylabel("share of classes")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(frameon=False, fontsize=7)
    _style(ax)
    return _save(fig, path)


def pooled_by_dataset(pooled: pd.DataFrame, path: str) -> str:
    """Fig. 8a: densities of the pooled within-class pair similarities of each dataset, each class drawn to the same
    size. ``pooled``: ``dataset``, ``similarity``."""
    values = pooled["similarity"].to_numpy(float)
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    fig = _figure()
    ax = fig.subplots()
    for color, (name, frame) in zip([BLUE, ORANGE, RED, GREY], pooled.groupby("dataset"), strict=False):
        v = frame["similarity"].to_numpy(float)
        label = f"{name} ({len(v)} pairs, mean {v.mean():.3f})"
        ax.hist(v, bins=edges, density=True, color=color, alpha=0.55, label=label)
    ax.set_xlabel("cosine similarity of two images of the same class")
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    _style(ax)
    return _save(fig, path)


def nearest_sweep(sweep: pd.DataFrame, threshold: float | None, path: str) -> str:
    """Fig. 16 (coverage): nearest captions kept and classes covered against the query–caption similarity threshold.
    ``sweep``: ``threshold`` and the count columns (``captions`` / ``kept``, ``classes``)."""
    fig = _figure((9.0, 3.4))
    axes = fig.subplots(1, 2)
    counts = [c for c in sweep.columns if c != "threshold" and pd.api.types.is_numeric_dtype(sweep[c])]
    classes = next((c for c in counts if "class" in c), None)
    kept = next((c for c in counts if c != classes), None)
    for ax, column, color in ((axes[0], classes, BLUE), (axes[1], kept, ORANGE)):
        if column is None:
            continue
        ax.plot(sweep["threshold"], sweep[column], color=color, linewidth=1.8, marker="o", markersize=3)
        if threshold is not None:
            ax.axvline(threshold, color=GREY, linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}")
            ax.legend(frameon=False, fontsize=8)
        ax.set_xlabel("query–caption similarity threshold")
        ax.set_ylabel(column.replace("_", " "))
        _style(ax)
    return _save(fig, path)
