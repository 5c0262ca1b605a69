"""Per-class relations behind the paper's Figures 7, 14 and 15, with Spearman correlations and bootstrap intervals.

``run_relations`` reads one model's ``run_accuracy`` per-class tables on datasets A and B (``class``, ``n``,
``recall@k``), the ``run_intra_class`` output directory of A vs B (``intra_a``, ``compare_bootstrap``) and the
selection's ``class_frequency.parquet`` (``class_index``, ``share``: the class's share of the full text-selected
LAIONet), all joined on the ImageNet-1k class index (``class``). It writes one parquet per relation, one row per class
(classes where x or y is undefined left out), with the columns ``class``, ``x``, ``y`` and the same two values again
under the descriptive names below (``<x column>``, ``<y column>``), so a plot of ``y`` against ``x`` needs nothing
else. For each k of recall@k (1 and 5 by default):

``recall_vs_intra_disparity_at_<k>`` (Figure 7): x = ``intra_disparity`` = mean intra-class similarity of A − of B
(``compare_bootstrap.delta``: classes with enough images in both); y = ``recall_at_<k>_a`` = recall@k on A.

``recall_drop_vs_intra_disparity_at_<k>`` (Figure 7, as a difference): x = ``intra_disparity`` as above;
y = ``recall_drop_at_<k>`` = recall@k on A − recall@k on B (classes scored in both).

``recall_vs_frequency_at_<k>`` (Figure 14): x = ``class_share`` = the class's share of the text-selected LAIONet;
y = ``recall_at_<k>_a`` = recall@k on A.

and once:

``intra_vs_frequency`` (Figure 15): x = ``class_share`` as above; y = ``intra_similarity_a`` = mean intra-class
similarity of A (``intra_a.mean``).

``summary.parquet``: one row per relation: ``relation`` (the file stem), ``figure``, ``k`` (0 for
``intra_vs_frequency``), ``x_name``, ``y_name`` (the descriptive column names), ``x_label``, ``y_label``, ``title``
(plain-language axis labels and plot title, naming A and B), ``n`` (points), ``spearman``, ``lower``, ``upper``
(``stats.spearman_interval``: percentile bootstrap over classes, 95 %). The directory manifest's ``extra["axes"]``
maps each relation stem to ``{"x": x_name, "y": y_name, "x_name", "y_name", "x_label", "y_label", "title",
"figure"}``; ``extra["labels"]`` holds the names used for A and B. Relations whose inputs are not given (no B
table, no intra-class directory, no class frequencies) are not written. Counts: classes in any input = classes in at
least one relation + ``in_no_relation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import rebuilds
from laionet.core.tables import read_columns
from laionet.evaluation.stats import spearman_interval


@dataclass(frozen=True)
class Relation:
    """One relation: its file stem, paper figure, k (0 = none), descriptive column names, labels and title."""

    stem: str
    figure: str
    k: int
    x_name: str
    y_name: str
    x_label: str
    y_label: str
    title: str


def _pair_labels(out_dir: str, labels: tuple[str, str] | None) -> tuple[str, str]:
    """A and B's names: given, or from the output directory named ``<a>--<b>`` or its parent (the run layout:
    ``relations/<a>--<b>/<model>``), else A and B."""
    if labels:
        return labels
    for part in out_dir.rstrip("/").rsplit("/", 2)[::-1][:2]:
        if "--" in part:
            a, b = part.split("--", 1)
            return a, b
    return "A", "B"


def _recall(path: str, k: int) -> pd.Series:
    table = read_columns(path, ["class", "n", f"recall@{k}"])
    table = table[table["n"] > 0]
    return table.set_index("class")[f"recall@{k}"].astype(float).dropna()


def _relation_frame(x: pd.Series, y: pd.Series, rel: Relation) -> pd.DataFrame:
    joined = pd.concat([x.rename("x"), y.rename("y")], axis=1, join="inner").dropna().sort_index()
    frame = joined.rename_axis("class").reset_index()
    frame[rel.x_name] = frame["x"]
    frame[rel.y_name] = frame["y"]
    return frame


def relation_tables(
    per_class_a: str,
    per_class_b: str | None,
    intra_dir: str | None,
    class_frequency: str | None,
    ks: Sequence[int],
    labels: tuple[str, str],
) -> tuple[dict[Relation, pd.DataFrame], set[object]]:
    """Every relation computable from the given inputs: ({relation: table}, every class seen in any input)."""
    a, b = labels
    seen: set[object] = set()
    disparity = intra_a = share = None
    if intra_dir:
        compare = read_columns(join(intra_dir, "compare_bootstrap.parquet"), ["class", "delta"])
        intra = read_columns(join(intra_dir, "intra_a.parquet"), ["class", "mean"])
        disparity = compare.set_index("class")["delta"].astype(float)
        intra_a = intra.set_index("class")["mean"].astype(float)
        seen |= set(compare["class"]) | set(intra["class"])
    if class_frequency:
        freq = read_columns(class_frequency, ["class_index", "share"]).dropna(subset=["class_index"])
        share = freq.assign(class_index=freq["class_index"].astype("int64")).groupby("class_index")["share"].sum()
        share.index.name = "class"
        seen |= set(share.index)
    tables: dict[Relation, pd.DataFrame] = {}
    for k in ks:
        recall_a = _recall(per_class_a, k)
        seen |= set(read_columns(per_class_a, ["class"])["class"])
        ya = f"recall_at_{k}_a"
        if disparity is not None:
            rel = Relation(f"recall_vs_intra_disparity_at_{k}", "Fig. 7", k, "intra_disparity", ya,
                           f"intra-class similarity {a} − {b}", f"recall@{k} on {a}",
                           f"Recall@{k} on {a} vs intra-class disparity ({a} − {b})")  # fmt: skip
            tables[rel] = _relation_frame(disparity, recall_a, rel)
        if per_class_b:
            recall_b = _recall(per_class_b, k)
            seen |= set(read_columns(per_class_b, ["class"])["class"])
            if disparity is not None:
                drop = (recall_a - recall_b).dropna()
                rel = Relation(f"recall_drop_vs_intra_disparity_at_{k}", "Fig. 7", k, "intra_disparity",
                               f"recall_drop_at_{k}", f"intra-class similarity {a} − {b}",
                               f"recall@{k} {a} − {b}",
                               f"Recall@{k} drop ({a} − {b}) vs intra-class disparity ({a} − {b})")  # fmt: skip
                tables[rel] = _relation_frame(disparity, drop, rel)
        if share is not None:
            rel = Relation(f"recall_vs_frequency_at_{k}", "Fig. 14", k, "class_share", ya,
                           "class share of the text-selected LAIONet", f"recall@{k} on {a}",
                           f"Recall@{k} on {a} vs class frequency in LAIONet")  # fmt: skip
            tables[rel] = _relation_frame(share, recall_a, rel)
    if share is not None and intra_a is not None:
        rel = Relation("intra_vs_frequency", "Fig. 15", 0, "class_share", "intra_similarity_a",
                       "class share of the text-selected LAIONet", f"mean intra-class similarity of {a}",
                       f"Intra-class similarity of {a} vs class frequency in LAIONet")  # fmt: skip
        tables[rel] = _relation_frame(share, intra_a, rel)
    return tables, seen


@rebuilds("relations")
def run_relations(
    per_class_a: str,
    out_dir: str,
    per_class_b: str | None = None,
    intra_dir: str | None = None,
    class_frequency: str | None = None,
    ks: Sequence[int] = (1, 5),
    labels: tuple[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """Write every relation the inputs allow (see the module docstring), ``summary.parquet`` and the manifest.

    Args:
        per_class_a: ``per_class.parquet`` of ``run_accuracy`` for the model on A.
        out_dir: output directory (the run layout: ``evaluate/relations/<a>--<b>``).
        per_class_b: the same on B (the recall-drop relations).
        intra_dir: the ``run_intra_class`` output directory of A vs B (Figures 7 and 15).
        class_frequency: the selection's ``class_frequency.parquet`` (Figures 14 and 15).
        labels: names of A and B for labels and titles; default: from ``out_dir``'s ``<a>--<b>`` name, else A, B.

    Raises:
        ValueError: when the inputs allow no relation, or a file lacks a column (naming both).
    """
    timer = Timer()
    names = _pair_labels(out_dir, labels)
    tables, seen = relation_tables(per_class_a, per_class_b, intra_dir, class_frequency, ks, names)
    if not tables:
        raise ValueError("no relation to compute: give intra_dir and/or class_frequency besides per_class_a")
    outputs, rows, axes = [], [], {}
    used: set[object] = set()
    for i, (rel, frame) in enumerate(tables.items()):
        path = join(out_dir, f"{rel.stem}.parquet")
        write_parquet_atomic(pa.Table.from_pandas(frame, preserve_index=False), path)
        outputs.append(path)
        used |= set(frame["class"])
        rho, lower, upper = spearman_interval(frame["x"].to_numpy(), frame["y"].to_numpy(), n_boot, seed + i)
        described = {"x_name": rel.x_name, "y_name": rel.y_name, "x_label": rel.x_label, "y_label": rel.y_label,
                     "title": rel.title}  # fmt: skip
        rows.append({"relation": rel.stem, "figure": rel.figure, "k": rel.k, **described, "n": len(frame),
                     "spearman": rho, "lower": lower, "upper": upper})  # fmt: skip
        axes[rel.stem] = {"x": rel.x_name, "y": rel.y_name, **described, "figure": rel.figure}
    summary = pd.DataFrame(rows)
    outputs.append(join(out_dir, "summary.parquet"))
    write_parquet_atomic(pa.Table.from_pandas(summary, preserve_index=False), outputs[-1])
    config = {"per_class_a": per_class_a, "per_class_b": per_class_b, "intra_dir": intra_dir,
              "class_frequency": class_frequency, "ks": list(ks), "labels": list(names), "n_boot": n_boot,
              "seed": seed}  # fmt: skip
    manifest = Manifest(
        stage="relations",
        config=config,
        config_hash=config_hash(config),
        inputs=[p for p in (per_class_a, per_class_b, intra_dir, class_frequency) if p],
        outputs=outputs,
        rows_in=len(seen),
        rows_out=len(used),
        dropped={"in_no_relation": len(seen - used)},
        wall_time_s=timer.elapsed,
        extra={"axes": axes, "labels": {"a": names[0], "b": names[1]}, "spearman": summary.to_dict("records")},
    )
    write_manifest(out_dir, manifest)
    return manifest
