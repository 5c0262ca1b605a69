"""The diagnose flow: the paper's Section 4 on a run — text alone (4.2), selection frequency (4.1) and the
image+text-filtered variants (Appendix D) — fanned out per diagnostic and per compared pair.

Runs after the evaluate flow (it reuses the run's label sets, inference outputs and OCR flags). Outputs under
``run_dir/diagnose/`` (tables) and, for the filtered variants, ``run_dir/variants/laionet-t<threshold>/`` with their
accuracy and intra-class comparison under ``run_dir/evaluate/`` like any variant. What a preset asks for is in
``Preset.diagnose`` (``laionet.core.config.Diagnose``); the offline demo runs the stand-ins (matched captions for
4.2, image filters of increasing strictness for 4.1, quantile text thresholds for the filtered variants, the
captions of the image-filtered variant as the queries of 4.3).

Section 4.3 (``nearest_captions_flow``, a subflow) writes under ``run_dir/diagnose/nearest/``: ``embeddings/``
(clip-retrieval layout), ``index/`` (faiss), ``queries.parquet`` (the stand-in's), and ``run/`` — a run directory of
its own whose ``selection/laionet.parquet`` is the nearest-caption dataset, taken through the acquire and infer flows
like LAIONet; its intra-class comparisons go to ``run_dir/evaluate/intra/nearest-captions--<b>/``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.acquire import acquire
from flows.infer import infer_flow
from laionet.core.config import Preset, load_preset
from laionet.core.layout import accuracy_dir, inference_dir, intra_dir, shards_dir, variant_labels
from laionet.core.manifest import join
from laionet.selection.similarity import similarity_dir
from tasks._common import flow_name, resolve
from tasks.build import select
from tasks.diagnose import filtered_variants, matched_captions, selection_frequency, text_alone
from tasks.evaluate import accuracy, intra_class, variants
from tasks.retrieval import caption_embeddings, caption_index, nearest_captions, run_catalog, variant_queries
from tasks.runners import gpu_options, task_runner

NEAREST = "nearest-captions"  # the nearest-caption dataset's name in evaluate/intra/<name>--<b>/


def filter_variant(k: int) -> str:
    """The name of the stand-in variant 'class in the filter model's top-k'."""
    return f"laionet-filter-top{k}"


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="diagnose", persist_result=True, flow_run_name=flow_name("diagnose"), task_runner=task_runner())
def diagnose(run_dir: str, preset: Preset | str = "demo", rewrite_urls: dict[str, str] | None = None) -> dict[str, Any]:
    """Every Section 4 diagnostic the preset asks for; returns the manifests by diagnostic.

    ``rewrite_urls``: URL prefix → replacement for the download of the nearest-caption images (a local mirror).
    """
    config = load_preset(preset)
    d = config.diagnose
    if d is None:
        return {}
    out = join(run_dir, "diagnose")
    catalog = join(run_dir, "catalog.parquet")
    emb = config.embedding_model
    ocr = join(run_dir, "ocr") if config.ocr else None
    futures: dict[str, Any] = {}

    if d.text_alone:  # 4.2
        captions, made_captions = d.captions, []
        if captions is None:  # the stand-in: the run's single-class matched captions
            captions = join(out, "matched_captions.parquet")
            made_captions = [matched_captions.submit(join(run_dir, "matches"), captions)]
            futures["matched-captions"] = made_captions[0]
        with gpu_options():  # on a Ray cluster with GPUs: one GPU for the text encoder (tasks/runners.py)
            futures["text-alone"] = text_alone.submit(captions, catalog, join(out, "text-alone"), config.encoder,
                                                      wait_for=made_captions)  # fmt: skip

    banded: dict[str, Any] = {}  # the candidate band's manifests (subflows)
    comparisons: list[dict[str, Any]] = []
    intra_futures = []
    pooled: dict[str, list[str]] = {}
    x_label = "average MTurk selection frequency"
    if d.selection_frequency:  # 4.1 with ImageNetV2 versions (reference datasets of the preset)
        sides = ["laionet", *([d.selection_frequency_reference] if d.selection_frequency_reference else [])]
        for version, frequency in d.selection_frequency.items():
            for a in sides:
                target = intra_dir(run_dir, a, version, emb)
                intra_futures.append(intra_class.submit(
                    inference_dir(run_dir, a if a in config.references else "laionet", emb), variant_labels(run_dir, a),
                    inference_dir(run_dir, version, emb), variant_labels(run_dir, version), target, config.intra_cap,
                    config.n_boot, config.seed, ocr_dir_a=ocr if a == "laionet" else None,
                ))  # fmt: skip
                comparisons.append({"a": a, "b": version, "x": frequency, "intra_dir": target})
        ordered = sorted(d.selection_frequency, key=d.selection_frequency.__getitem__)
        for version in (ordered[0], ordered[-1]) if len(ordered) > 1 else ():
            pooled[version] = [join(inference_dir(run_dir, version, emb), "*.npy"), variant_labels(run_dir, version)]
    elif d.filter_strictness and config.image_filter:  # 4.1 stand-in: image filters of increasing strictness
        x_label = "share of text-selected samples the image filter rejects (stand-in for selection frequency)"
        model = config.image_filter.model
        for k in d.filter_strictness:
            name = filter_variant(k)
            # the label-set driver writes a text-only set beside every filtered one: give it a directory of its own,
            # so evaluate's `variants/laionet` (and the caches keyed on its manifest) are never rewritten here
            made = variants.submit(
                shards_dir(run_dir), join(run_dir, "variants", f"{name}-base"),
                quarantine=join(run_dir, "verify", "quarantine.parquet"),
                predictions=inference_dir(run_dir, "laionet", model),
                image_filter={"model": model, "rule": "topk", "k": k}, filtered_name=name,
            )  # fmt: skip
            target = intra_dir(run_dir, name, "laionet", emb)
            intra_futures.append(intra_class.submit(
                inference_dir(run_dir, "laionet", emb), variant_labels(run_dir, name),
                inference_dir(run_dir, "laionet", emb), variant_labels(run_dir, "laionet"), target, config.intra_cap,
                config.n_boot, config.seed, ocr_dir_a=ocr, ocr_dir_b=ocr, wait_for=[made],
            ))  # fmt: skip
            comparisons.append({"a": name, "b": "laionet", "x": k, "intra_dir": target, "variant": made})
    if comparisons:
        resolve(dict(enumerate(intra_futures)))  # a failed comparison is named here, before collecting
        for c in comparisons:  # the stand-in's x: the share the filter rejects, from the variant's own counts
            made = c.pop("variant", None)
            if made is not None:
                filtered = made.result()["extra"]["filtered"]
                rows_in = filtered["rows_out"] + sum(filtered["dropped"].values())
                c["x"] = 1 - filtered["rows_out"] / max(rows_in, 1)
        futures["selection-frequency"] = selection_frequency.submit(
            comparisons, join(out, "selection-frequency"), pooled or None, x_label, config.seed,
            wait_for=intra_futures,
        )  # fmt: skip

    if (d.text_thresholds or d.text_quantiles) and (config.zero_shot or config.image_filter):
        scorer = config.zero_shot or (config.image_filter.model if config.image_filter else "")
        data = run_dir  # the run directory whose images and inference the variants are carved from
        candidates = d.candidates or join(run_dir, "selection", "laionet.parquet")
        if d.candidate_band is not None:  # text thresholds below the selection's: a candidate band of its own
            banded = {f"band-{k}": v for k, v in candidate_band_flow(run_dir, config, rewrite_urls).items()}
            data = band_dir(run_dir)
            candidates = join(data, "selection", "laionet.parquet")
        data_ocr = join(data, "ocr") if config.ocr else None
        summary = filtered_variants.submit(
            candidates, inference_dir(data, "laionet", scorer), join(run_dir, "variants"), join(out, "filtered"),
            d.text_thresholds, d.text_quantiles, d.filtered_target,
        )  # fmt: skip
        futures["filtered-variants"] = summary
        names = summary.result()["extra"]["variants"]
        b = config.compare[0][1] if config.compare else "laionet"
        scored = [*config.models, *([config.zero_shot] if config.zero_shot else [])]
        for v in names:  # each variant evaluated like LAIONet: accuracy, intra-class against the compared dataset
            for m in scored:
                futures[f"accuracy:{v}:{m}"] = accuracy.submit(
                    inference_dir(data, "laionet", m), variant_labels(run_dir, v), accuracy_dir(run_dir, v, m),
                    weights=join(run_dir, "selection", "class_frequency.parquet"), ocr_dir=data_ocr,
                    n_boot=config.n_boot, seed=config.seed,
                )  # fmt: skip
            futures[f"intra:{v}--{b}"] = intra_class.submit(
                inference_dir(data, "laionet", emb), variant_labels(run_dir, v),
                inference_dir(run_dir, b if b in config.references else "laionet", emb), variant_labels(run_dir, b),
                intra_dir(run_dir, v, b, emb), config.intra_cap, config.n_boot, config.seed, ocr_dir_a=data_ocr,
                ocr_dir_b=ocr if b.startswith("laionet") else None,
            )  # fmt: skip
    done = {**banded, **resolve(futures)}  # every future; a failure names the task run that failed
    if d.nearest is not None:  # 4.3, after the rest: its downloads and inference are the longest part
        done.update(nearest_captions_flow(run_dir, config, rewrite_urls))
    return done


def band_dir(run_dir: str) -> str:
    """The run directory of the filtered variants' candidate band."""
    return join(run_dir, "diagnose", "candidates")


@flow(name="candidate-band", persist_result=True, flow_run_name=flow_name("candidate-band"), task_runner=task_runner())
def candidate_band_flow(
    run_dir: str, preset: Preset | str = "demo", rewrite_urls: dict[str, str] | None = None
) -> dict[str, Any]:
    """The candidates of the image+text-filtered variants when their text thresholds go below the selection's: the
    run's matches and similarities selected again at ``Diagnose.candidate_band`` (no top-k) into a run directory of
    its own (``diagnose/candidates``), downloaded, verified, OCR-filtered and inferred with every model like LAIONet."""
    config = load_preset(preset)
    band = config.diagnose.candidate_band if config.diagnose else None
    if band is None:
        return {}
    sub = band_dir(run_dir)
    catalog = join(run_dir, "catalog.parquet")
    sim_dir = similarity_dir(join(run_dir, "similarity"), config.encoder)
    futures = {
        "select": select.submit(join(run_dir, "matches"), sim_dir, catalog, join(sub, "selection"), band, top_k=None),
        "catalog": run_catalog.submit(catalog, sub),
    }
    done = resolve(futures)
    sub_preset = config.model_copy(update={"name": f"{config.name}-candidates", "references": {}, "diagnose": None})
    done.update({f"acquire-{k}": v for k, v in acquire(sub, sub_preset, rewrite_urls=rewrite_urls).items()})
    done.update({f"infer-{k}": v for k, v in infer_flow(sub, sub_preset).items()})
    return done


@flow(
    name="nearest-captions", persist_result=True, flow_run_name=flow_name("nearest-captions"), task_runner=task_runner()
)
def nearest_captions_flow(
    run_dir: str, preset: Preset | str = "demo", rewrite_urls: dict[str, str] | None = None
) -> dict[str, Any]:
    """Section 4.3: caption embeddings of the corpus → faiss index → the nearest caption of each query → a run
    directory of its own (``diagnose/nearest/run``) through the acquire and infer flows → its intra-class similarity
    against each compared dataset (``evaluate/intra/nearest-captions--<b>/``)."""
    config = load_preset(preset)
    nc = config.diagnose.nearest if config.diagnose else None
    if nc is None:
        return {}
    root = join(run_dir, "diagnose", "nearest")
    sub = join(root, "run")
    emb = config.embedding_model
    catalog = join(run_dir, "catalog.parquet")
    if nc.embeddings:
        emb_dir, embedded = nc.embeddings, None
    else:
        emb_dir = join(root, "embeddings")
        corpus = nc.corpus or config.corpus or join(run_dir, "corpus")
        with gpu_options():
            embedded = caption_embeddings.submit(corpus, emb_dir, config.encoder, config.max_parts)
    index_dir = join(root, "index")
    indexed = caption_index.submit(emb_dir, index_dir, nc.index, wait_for=[embedded] if embedded else [])
    queries, upstream = nc.queries, [indexed]
    futures: dict[str, Any] = {}
    if queries is None:  # the stand-in: the captions of a variant of this run
        queries = join(root, "queries.parquet")
        futures["nearest-queries"] = variant_queries.submit(
            variant_labels(run_dir, nc.stand_in), join(run_dir, "selection", "laionet.parquet"), queries
        )
        upstream.append(futures["nearest-queries"])
    with gpu_options():
        searched = nearest_captions.submit(queries, emb_dir, index_dir, catalog, join(sub, "selection"), nc.threshold,
                                           nc.k, nc.exclude_query_keys, wait_for=upstream)  # fmt: skip
    futures.update({"nearest-captions": searched, "nearest-catalog": run_catalog.submit(catalog, sub)})
    resolve(futures)  # the search and the catalog before the subflows read them
    # the nearest-caption images: the same download, verify, OCR and inference as LAIONet's, with the embedding model
    # only and no reference datasets (those are the main run's)
    sub_preset = config.model_copy(
        update={"name": f"{config.name}-nearest", "references": {}, "models": [], "zero_shot": None,
                "image_filter": None, "diagnose": None},
    )  # fmt: skip
    acquired = acquire(sub, sub_preset, rewrite_urls=rewrite_urls, image_limit=nc.image_limit)
    infer_flow(sub, sub_preset)
    ocr = join(sub, "ocr") if config.ocr else None
    made = variants.submit(shards_dir(sub), join(sub, "variants", "laionet"),
                           quarantine=join(sub, "verify", "quarantine.parquet"))  # fmt: skip
    futures["nearest-variant"] = made
    main_ocr = join(run_dir, "ocr") if config.ocr else None
    for b in nc.compare:
        b_dataset = b if b in config.references else "laionet"
        futures[f"intra:nearest-captions--{b}"] = intra_class.submit(
            inference_dir(sub, "laionet", emb), variant_labels(sub, "laionet"),
            inference_dir(run_dir, b_dataset, emb), variant_labels(run_dir, b),
            intra_dir(run_dir, NEAREST, b, emb), config.intra_cap, config.n_boot, config.seed, ocr_dir_a=ocr,
            ocr_dir_b=main_ocr if b_dataset == "laionet" else None, wait_for=[made],
        )  # fmt: skip
    return {**resolve(futures), **{f"nearest-{stage}": manifest for stage, manifest in acquired.items()}}
