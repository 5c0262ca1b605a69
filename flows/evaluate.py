"""The evaluate flow: label sets, accuracies, intra-class comparisons, recall differences, own-synset similarity and
relations for a run, fanned out per (variant, model) and per compared pair, and per class group of the per-class
statistics (``Preset.class_groups``: ``laionet.evaluation.groups``).

Variants (``Preset.compare`` names them): ``laionet`` (the text-only selection: every downloaded, non-quarantined
sample), ``laionet-image`` (those of them the preset's image filter agrees with), and each reference dataset.
Outputs under ``run_dir/variants/`` and ``run_dir/evaluate/`` (``laionet.core.layout``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from laionet.core.config import Preset, load_preset
from laionet.core.layout import (
    accuracy_dir,
    dataset_of,
    inference_dir,
    intra_dir,
    own_similarity_dir,
    recall_difference_dir,
    relations_dir,
    shards_dir,
    slug,
    variant_labels,
)
from laionet.core.manifest import join
from laionet.evaluation.groups import part_dirs
from tasks._common import flow_name, resolve
from tasks.evaluate import (
    accuracy,
    intra_class,
    intra_class_group,
    intra_class_merge,
    own_similarity,
    own_similarity_group,
    own_similarity_merge,
    recall_difference,
    recall_difference_group,
    recall_difference_merge,
    relations,
    top_k_variant,
    variants,
)
from tasks.runners import task_runner


def submit_by_class_group(
    single: Any,
    group_task: Any,
    merge_task: Any,
    out_dir: str,
    evaluate_dir: str,
    groups: int,
    args: tuple[Any, ...],
    options: dict[str, Any],
    parts: dict[str, Any],
) -> Any:
    """Submit one stage output: the ``single`` task (``groups`` = 1), or one ``group_task`` per class group (their
    futures added to ``parts``) then the ``merge_task``, which writes the same output. Returns the future of the task
    that writes ``out_dir``. ``options`` may hold ``wait_for``."""
    wait_for = options.pop("wait_for", None)
    if groups == 1:
        return single.submit(*args, out_dir, **options, wait_for=wait_for)
    dirs = part_dirs(out_dir, evaluate_dir, groups)
    started = [
        group_task.submit(*args, out_dir, part, g, groups, **options, wait_for=wait_for) for g, part in enumerate(dirs)
    ]
    parts.update({f"{group_task.name}:{out_dir}:{g}": f for g, f in enumerate(started)})
    return merge_task.submit(*args, out_dir, dirs, **options, wait_for=started)


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="evaluate", persist_result=True, flow_run_name=flow_name("evaluate"), task_runner=task_runner())
def evaluate(run_dir: str, preset: Preset | str = "demo") -> dict[str, Any]:
    """Every metric of the preset's comparisons; returns the manifests by stage and target. With
    ``preset.class_groups`` > 1 the intra-class comparisons, recall differences and Appendix C run as one task per
    (comparison, class group) and a merge task per comparison, which writes the same tables as the single task."""
    config = load_preset(preset)
    filt = config.image_filter
    made = {
        "laionet": variants.submit(
            shards_dir(run_dir),
            join(run_dir, "variants", "laionet"),
            quarantine=join(run_dir, "verify", "quarantine.parquet"),
            predictions=inference_dir(run_dir, "laionet", filt.model) if filt else None,
            image_filter=filt.model_dump() if filt else None,
            filtered_name="laionet-image" if filt else None,
        )
    }
    for name in config.references:
        made[name] = variants.submit(shards_dir(run_dir, name), join(run_dir, "variants", name))
    top = f"laionet-top{config.top_k}" if config.top_k else None
    if top:  # the reference's top-50 variant: per class the most similar samples of LAIONet, after the OCR filter
        made[top] = top_k_variant.submit(
            variant_labels(run_dir, "laionet"), join(run_dir, "selection", "laionet.parquet"),
            join(run_dir, "variants", top), config.top_k, ocr_dir=join(run_dir, "ocr") if config.ocr else None,
            wait_for=[made["laionet"]],
        )  # fmt: skip
    names = ["laionet", *(["laionet-image"] if filt else []), *([top] if top else []), *config.references]
    source = {v: made.get(v, made[dataset_of(v)]) for v in names}
    weights = join(run_dir, "selection", "class_frequency.parquet")
    scored = [*config.models, *([config.zero_shot] if config.zero_shot else [])]
    ocr = {v: join(run_dir, "ocr") if dataset_of(v) == "laionet" and config.ocr else None for v in names}
    acc = {
        (v, m): accuracy.submit(
            inference_dir(run_dir, dataset_of(v), m),
            variant_labels(run_dir, v),
            accuracy_dir(run_dir, v, m),
            weights=weights,
            ocr_dir=ocr[v],
            n_boot=config.n_boot,
            seed=config.seed,
            wait_for=[source[v]],
        )
        for v in names
        for m in scored
    }
    futures: dict[str, Any] = {f"accuracy:{v}:{m}": f for (v, m), f in acc.items()}
    groups = config.class_groups
    parts: dict[str, Any] = {}  # the class-group tasks (class_groups > 1): resolved too, so a failed group is named

    def grouped(single: Any, group_task: Any, merge_task: Any, out_dir: str, *args: Any, **options: Any) -> Any:
        evaluate_dir = join(run_dir, "evaluate")
        return submit_by_class_group(
            single, group_task, merge_task, out_dir, evaluate_dir, groups, args, options, parts
        )

    for a, b in config.compare:
        emb = config.embedding_model
        intra = grouped(
            intra_class, intra_class_group, intra_class_merge, intra_dir(run_dir, a, b, emb),
            inference_dir(run_dir, dataset_of(a), emb), variant_labels(run_dir, a),
            inference_dir(run_dir, dataset_of(b), emb), variant_labels(run_dir, b),
            cap=config.intra_cap, n_boot=config.n_boot, seed=config.seed, ocr_dir_a=ocr[a], ocr_dir_b=ocr[b],
            wait_for=[source[a], source[b]],
        )  # fmt: skip
        futures[f"intra:{a}--{b}"] = intra
        for m in scored:
            futures[f"recall-difference:{a}--{b}:{m}"] = grouped(
                recall_difference, recall_difference_group, recall_difference_merge,
                recall_difference_dir(run_dir, a, b, m), accuracy_dir(run_dir, a, m), accuracy_dir(run_dir, b, m),
                weights=weights, wait_for=[acc[a, m], acc[b, m]],
            )  # fmt: skip
        if config.zero_shot:
            z = config.zero_shot
            futures[f"own-similarity:{a}--{b}"] = grouped(
                own_similarity, own_similarity_group, own_similarity_merge, own_similarity_dir(run_dir, a, b, z),
                inference_dir(run_dir, dataset_of(a), z), variant_labels(run_dir, a),
                inference_dir(run_dir, dataset_of(b), z), variant_labels(run_dir, b),
                ocr_dir_a=ocr[a], ocr_dir_b=ocr[b], n_boot=config.n_boot, seed=config.seed,
                wait_for=[source[a], source[b]],
            )  # fmt: skip
        for m in scored:  # Figs. 7 and 14: one panel per model, against the same intra-class disparity; the relations
            # are correlations across classes (Spearman over all of them): one task each, after the merged tables
            futures[f"relations:{a}--{b}:{m}"] = relations.submit(
                accuracy_dir(run_dir, a, m), accuracy_dir(run_dir, b, m), intra_dir(run_dir, a, b, emb),
                weights, join(relations_dir(run_dir), f"{a}--{b}", slug(m)), n_boot=config.n_boot, seed=config.seed,
                wait_for=[acc[a, m], acc[b, m], intra],
            )  # fmt: skip
    # every future, the label sets' too: a failure names the task run that failed, not one it kept from running
    results = resolve({**{f"variants:{name}": future for name, future in made.items()}, **parts, **futures})
    return {key: results[key] for key in futures}
