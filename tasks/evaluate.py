"""Tasks of the evaluate flow: label sets (variants), accuracies, intra-class comparisons, recall differences,
image-to-own-synset similarity and the per-class relations. Each wraps one driver of ``laionet.evaluation``'s
``variants``, ``accuracy``, ``intra_class``, ``recall``, ``own_similarity`` or ``relations``; paths in, the manifest
out; cached across runs."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task

from laionet.core.manifest import join
from laionet.evaluation.accuracy import run_accuracy
from laionet.evaluation.intra_class import merge_intra_class, run_intra_class, run_intra_class_group
from laionet.evaluation.own_similarity import merge_own_similarity, run_own_similarity, run_own_similarity_group
from laionet.evaluation.recall import merge_recall_difference, run_recall_difference, run_recall_difference_group
from tasks._common import below, publish, publish_table, run_name, stage_cache

Manifest = dict[str, Any]
_PREDICTIONS = "*.predictions.parquet"  # a model's predictions in its inference directory


@task(
    name="variants",
    task_run_name=run_name(below("out_dir", 1)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def variants(
    shards_dir: str,
    out_dir: str,
    quarantine: str | None = None,
    predictions: str | None = None,
    image_filter: dict[str, Any] | None = None,
    filtered_name: str | None = None,
) -> Manifest:
    """The evaluated label set of one dataset, ``<out_dir>/labels.parquet`` (``out_dir`` = ``variants/<name>``),
    and, with an image filter, the image-filtered variant ``variants/<filtered_name>/labels.parquet``."""
    from laionet.evaluation.variants import run_variants

    out_root, name = out_dir.rstrip("/").rsplit("/", 1)
    manifest = run_variants(
        shards_dir, out_root, name=name, quarantine=quarantine, predictions=predictions,
        image_filter=image_filter, filtered_name=filtered_name,
    )  # fmt: skip
    return publish(manifest, out_dir)


@task(
    name="accuracy",
    task_run_name=run_name(below("out_dir", 2)),  # variant/model
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def accuracy(
    model_dir: str,
    labels: str,
    out_dir: str,
    weights: str | None = None,
    ocr_dir: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """Per-class recall@1/5 and equally / LAION-weighted accuracy of one model (its inference directory) on one
    variant, both intervals; samples flagged in ``ocr_dir`` excluded. Directories, not globs, are passed so their
    manifests enter the cache key."""
    flags = join(ocr_dir, "*.parquet") if ocr_dir else None
    manifest = run_accuracy(join(model_dir, "*.predictions.parquet"), labels, out_dir, weights, flags, n_boot=n_boot,
                            seed=seed)  # fmt: skip
    summary = pd.read_parquet(join(out_dir, "summary.parquet")).round(4)
    publish_table(summary.to_dict("records"), f"accuracy-{out_dir.rsplit('/', 2)[-2]}-{out_dir.rsplit('/', 1)[-1]}",
                  f"accuracy of {model_dir} on {labels}")  # fmt: skip
    return publish(manifest, out_dir)


@task(
    name="intra-class",
    task_run_name=run_name(below("out_dir", 2)),  # variant pair/model
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def intra_class(
    model_dir_a: str,
    labels_a: str,
    model_dir_b: str,
    labels_b: str,
    out_dir: str,
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
    ocr_dir_a: str | None = None,
    ocr_dir_b: str | None = None,
) -> Manifest:
    """Intra-class similarity of two variants (embeddings of one model's inference directories) and their per-class
    comparison (bootstrap over images; paper mode); OCR-flagged samples excluded, as for accuracy."""
    inputs, flags = _comparison(model_dir_a, labels_a, model_dir_b, labels_b, ocr_dir_a, ocr_dir_b, "*.npy")
    return publish(run_intra_class(*inputs, out_dir, cap, n_boot, seed, **flags), out_dir)


@task(
    name="recall-difference",
    task_run_name=run_name(below("out_dir", 2)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def recall_difference(accuracy_a: str, accuracy_b: str, out_dir: str, weights: str | None = None) -> Manifest:
    """Per-class recall A − B of one model with confidence bounds (Appendix B), and the pair's accuracy over the
    classes both have, from two accuracy stage outputs (LAION-weighted too, with ``weights``)."""
    return publish(run_recall_difference(*_per_class(accuracy_a, accuracy_b), out_dir, weights=weights), out_dir)


@task(
    name="own-similarity",
    task_run_name=run_name(below("out_dir", 2)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def own_similarity(
    model_dir_a: str,
    labels_a: str,
    model_dir_b: str,
    labels_b: str,
    out_dir: str,
    ocr_dir_a: str | None = None,
    ocr_dir_b: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """Image-to-own-synset similarity (the zero-shot model's ``own_score``) of A resampled to B's per-class counts,
    and per-class mean differences with bounds (Appendix C); OCR-flagged samples excluded."""
    inputs, flags = _comparison(model_dir_a, labels_a, model_dir_b, labels_b, ocr_dir_a, ocr_dir_b, _PREDICTIONS)
    return publish(run_own_similarity(*inputs, out_dir, n_boot=n_boot, seed=seed, **flags), out_dir)


@task(
    name="relations",
    task_run_name=run_name(below("out_dir", 2)),  # variant pair/model
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def relations(
    accuracy_a: str,
    accuracy_b: str,
    intra: str,
    class_frequency: str,
    out_dir: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """Per-class relations with Spearman correlations: recall drop vs intra-class disparity (Fig. 7), frequency vs
    intra-class similarity (Fig. 15), recall vs frequency (Fig. 14)."""
    from laionet.evaluation.relations import run_relations

    manifest = run_relations(
        per_class_a=join(accuracy_a, "per_class.parquet"), per_class_b=join(accuracy_b, "per_class.parquet"),
        intra_dir=intra, class_frequency=class_frequency, out_dir=out_dir, n_boot=n_boot, seed=seed,
    )  # fmt: skip
    return publish(manifest, out_dir)


@task(
    name="top-k-variant",
    task_run_name=run_name(below("out_dir", 1)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def top_k_variant(source: str, index: str, out_dir: str, k: int = 50, ocr_dir: str | None = None) -> Manifest:
    """The top-k variant (the reference's top-50): per class the k samples of the text-only variant most similar to
    their synset text, after the OCR filter (``laionet.evaluation.variants.run_top_k_variant``)."""
    from laionet.evaluation.variants import run_top_k_variant

    flags = join(ocr_dir, "*.parquet") if ocr_dir else None
    return publish(run_top_k_variant(source, index, out_dir, k, flags), out_dir)


# class groups (Preset.class_groups > 1): one task per comparison and group, then one merge task per comparison that
# writes exactly the stage output of the single task above (laionet.evaluation.groups)


def _group_span(params: dict[str, Any]) -> str:
    return f"group {params.get('group')}/{params.get('groups')}"


@task(
    name="intra-class-group",
    task_run_name=run_name(below("out_dir", 2), _group_span),
    cache_policy=stage_cache("part_dir", exclude=("out_dir",)),
    persist_result=True,
)
def intra_class_group(
    model_dir_a: str,
    labels_a: str,
    model_dir_b: str,
    labels_b: str,
    out_dir: str,
    part_dir: str,
    group: int,
    groups: int,
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
    ocr_dir_a: str | None = None,
    ocr_dir_b: str | None = None,
) -> Manifest:
    """One class group of ``intra_class`` (``out_dir``: the stage output it is part of) → ``part_dir``."""
    inputs, flags = _comparison(model_dir_a, labels_a, model_dir_b, labels_b, ocr_dir_a, ocr_dir_b, "*.npy")
    return run_intra_class_group(*inputs, part_dir, group, groups, cap, n_boot, seed, **flags).model_dump(mode="json")


@task(
    name="intra-class-merge",
    task_run_name=run_name(below("out_dir", 2)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def intra_class_merge(
    model_dir_a: str,
    labels_a: str,
    model_dir_b: str,
    labels_b: str,
    out_dir: str,
    part_dirs: list[str],
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
    ocr_dir_a: str | None = None,
    ocr_dir_b: str | None = None,
) -> Manifest:
    """``intra_class``'s output from the parts of every class group."""
    inputs, flags = _comparison(model_dir_a, labels_a, model_dir_b, labels_b, ocr_dir_a, ocr_dir_b, "*.npy")
    return publish(merge_intra_class(*inputs, out_dir, part_dirs, cap, n_boot, seed, **flags), out_dir)


@task(
    name="recall-difference-group",
    task_run_name=run_name(below("out_dir", 2), _group_span),
    cache_policy=stage_cache("part_dir", exclude=("out_dir",)),
    persist_result=True,
)
def recall_difference_group(
    accuracy_a: str, accuracy_b: str, out_dir: str, part_dir: str, group: int, groups: int, weights: str | None = None
) -> Manifest:
    """One class group of ``recall_difference`` → ``part_dir``."""
    manifest = run_recall_difference_group(
        *_per_class(accuracy_a, accuracy_b), part_dir, group, groups, weights=weights
    )
    return manifest.model_dump(mode="json")


@task(
    name="recall-difference-merge",
    task_run_name=run_name(below("out_dir", 2)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def recall_difference_merge(
    accuracy_a: str, accuracy_b: str, out_dir: str, part_dirs: list[str], weights: str | None = None
) -> Manifest:
    """``recall_difference``'s output from the parts of every class group."""
    manifest = merge_recall_difference(*_per_class(accuracy_a, accuracy_b), out_dir, part_dirs, weights=weights)
    return publish(manifest, out_dir)


@task(
    name="own-similarity-group",
    task_run_name=run_name(below("out_dir", 2), _group_span),
    cache_policy=stage_cache("part_dir", exclude=("out_dir",)),
    persist_result=True,
)
def own_similarity_group(
    model_dir_a: str,
    labels_a: str,
    model_dir_b: str,
    labels_b: str,
    out_dir: str,
    part_dir: str,
    group: int,
    groups: int,
    ocr_dir_a: str | None = None,
    ocr_dir_b: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """One class group of ``own_similarity`` → ``part_dir``."""
    inputs, flags = _comparison(model_dir_a, labels_a, model_dir_b, labels_b, ocr_dir_a, ocr_dir_b, _PREDICTIONS)
    manifest = run_own_similarity_group(*inputs, part_dir, group, groups, n_boot=n_boot, seed=seed, **flags)
    return manifest.model_dump(mode="json")


@task(
    name="own-similarity-merge",
    task_run_name=run_name(below("out_dir", 2)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def own_similarity_merge(
    model_dir_a: str,
    labels_a: str,
    model_dir_b: str,
    labels_b: str,
    out_dir: str,
    part_dirs: list[str],
    ocr_dir_a: str | None = None,
    ocr_dir_b: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """``own_similarity``'s output from the parts of every class group."""
    inputs, flags = _comparison(model_dir_a, labels_a, model_dir_b, labels_b, ocr_dir_a, ocr_dir_b, _PREDICTIONS)
    return publish(merge_own_similarity(*inputs, out_dir, part_dirs, n_boot=n_boot, seed=seed, **flags), out_dir)


def _comparison(
    model_dir_a: str,
    labels_a: str,
    model_dir_b: str,
    labels_b: str,
    ocr_dir_a: str | None,
    ocr_dir_b: str | None,
    files: str,
) -> tuple[tuple[str, str, str, str], dict[str, str | None]]:
    """A comparison driver's inputs from a task's directories: (the ``files`` glob of each model directory and each
    labels file, in the drivers' order A, labels A, B, labels B), and the OCR flags ``flags_a``, ``flags_b``."""
    inputs = (join(model_dir_a, files), labels_a, join(model_dir_b, files), labels_b)
    return inputs, {"flags_a": _flags(ocr_dir_a), "flags_b": _flags(ocr_dir_b)}


def _per_class(accuracy_a: str, accuracy_b: str) -> tuple[str, str]:
    """The per-class tables of two accuracy stage outputs."""
    return join(accuracy_a, "per_class.parquet"), join(accuracy_b, "per_class.parquet")


def _flags(ocr_dir: str | None) -> str | None:
    return join(ocr_dir, "*.parquet") if ocr_dir else None
