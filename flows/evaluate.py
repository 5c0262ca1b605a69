"""The evaluate flow: label sets, accuracies, intra-class comparisons, recall differences, own-synset similarity and
relations for a run, fanned out per (variant, model) and per compared pair.

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
from tasks._common import flow_name, resolve
from tasks.evaluate import accuracy, intra_class, own_similarity, recall_difference, relations, top_k_variant, variants
from tasks.runners import task_runner


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="evaluate", flow_run_name=flow_name("evaluate"), task_runner=task_runner())
def evaluate(run_dir: str, preset: Preset | str = "demo") -> dict[str, Any]:
    """Every metric of the preset's comparisons; returns the manifests by stage and target."""
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
    for a, b in config.compare:
        emb = config.embedding_model
        intra = intra_class.submit(
            inference_dir(run_dir, dataset_of(a), emb), variant_labels(run_dir, a),
            inference_dir(run_dir, dataset_of(b), emb), variant_labels(run_dir, b),
            intra_dir(run_dir, a, b, emb), config.intra_cap, config.n_boot, config.seed,
            ocr_dir_a=ocr[a], ocr_dir_b=ocr[b], wait_for=[source[a], source[b]],
        )  # fmt: skip
        futures[f"intra:{a}--{b}"] = intra
        for m in scored:
            futures[f"recall-difference:{a}--{b}:{m}"] = recall_difference.submit(
                accuracy_dir(run_dir, a, m), accuracy_dir(run_dir, b, m),
                recall_difference_dir(run_dir, a, b, m), weights=weights,
                wait_for=[acc[a, m], acc[b, m]],
            )  # fmt: skip
        if config.zero_shot:
            z = config.zero_shot
            futures[f"own-similarity:{a}--{b}"] = own_similarity.submit(
                inference_dir(run_dir, dataset_of(a), z), variant_labels(run_dir, a),
                inference_dir(run_dir, dataset_of(b), z), variant_labels(run_dir, b),
                own_similarity_dir(run_dir, a, b, z), ocr_dir_a=ocr[a], ocr_dir_b=ocr[b],
                n_boot=config.n_boot, seed=config.seed, wait_for=[source[a], source[b]],
            )  # fmt: skip
        for m in scored:  # Figs. 7 and 14: one panel per model, against the same intra-class disparity
            futures[f"relations:{a}--{b}:{m}"] = relations.submit(
                accuracy_dir(run_dir, a, m), accuracy_dir(run_dir, b, m), intra_dir(run_dir, a, b, emb),
                weights, join(relations_dir(run_dir), f"{a}--{b}", slug(m)), n_boot=config.n_boot, seed=config.seed,
                wait_for=[acc[a, m], acc[b, m], intra],
            )  # fmt: skip
    # every future, the label sets' too: a failure names the task run that failed, not one it kept from running
    results = resolve({**{f"variants:{name}": future for name, future in made.items()}, **futures})
    return {key: results[key] for key in futures}
