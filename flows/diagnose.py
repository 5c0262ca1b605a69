"""The diagnose flow: the paper's Section 4 on a run — text alone (4.2), selection frequency (4.1) and the
image+text-filtered variants (Appendix D) — fanned out per diagnostic and per compared pair.

Runs after the evaluate flow (it reuses the run's label sets, inference outputs and OCR flags). Outputs under
``run_dir/diagnose/`` (tables) and, for the filtered variants, ``run_dir/variants/laionet-t<threshold>/`` with their
accuracy and intra-class comparison under ``run_dir/evaluate/`` like any variant. What a preset asks for is in
``Preset.diagnose`` (``laionet.core.config.Diagnose``); the offline demo runs the stand-ins (matched captions for
4.2, image filters of increasing strictness for 4.1, quantile text thresholds for the filtered variants).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from laionet.core.config import Preset, load_preset
from laionet.core.layout import accuracy_dir, inference_dir, intra_dir, shards_dir, variant_labels
from laionet.core.manifest import join
from tasks._common import flow_name, resolve
from tasks.diagnose import filtered_variants, matched_captions, selection_frequency, text_alone
from tasks.evaluate import accuracy, intra_class, variants
from tasks.runners import task_runner


def filter_variant(k: int) -> str:
    """The name of the stand-in variant 'class in the filter model's top-k'."""
    return f"laionet-filter-top{k}"


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="diagnose", flow_run_name=flow_name("diagnose"), task_runner=task_runner())
def diagnose(run_dir: str, preset: Preset | str = "demo") -> dict[str, Any]:
    """Every Section 4 diagnostic the preset asks for; returns the manifests by diagnostic."""
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
        captions = d.captions or matched_captions.submit(
            join(run_dir, "matches"), join(out, "matched_captions.parquet")
        )
        futures["text-alone"] = text_alone.submit(captions, catalog, join(out, "text-alone"), config.encoder)

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
        summary = filtered_variants.submit(
            d.candidates or join(run_dir, "selection", "laionet.parquet"), inference_dir(run_dir, "laionet", scorer),
            join(run_dir, "variants"), join(out, "filtered"), d.text_thresholds, d.text_quantiles, d.filtered_target,
        )  # fmt: skip
        futures["filtered-variants"] = summary
        names = summary.result()["extra"]["variants"]
        b = config.compare[0][1] if config.compare else "laionet"
        scored = [*config.models, *([config.zero_shot] if config.zero_shot else [])]
        for v in names:  # each variant evaluated like LAIONet: accuracy, intra-class against the compared dataset
            for m in scored:
                futures[f"accuracy:{v}:{m}"] = accuracy.submit(
                    inference_dir(run_dir, "laionet", m), variant_labels(run_dir, v), accuracy_dir(run_dir, v, m),
                    weights=join(run_dir, "selection", "class_frequency.parquet"), ocr_dir=ocr, n_boot=config.n_boot,
                    seed=config.seed,
                )  # fmt: skip
            futures[f"intra:{v}--{b}"] = intra_class.submit(
                inference_dir(run_dir, "laionet", emb), variant_labels(run_dir, v),
                inference_dir(run_dir, b if b in config.references else "laionet", emb), variant_labels(run_dir, b),
                intra_dir(run_dir, v, b, emb), config.intra_cap, config.n_boot, config.seed, ocr_dir_a=ocr,
                ocr_dir_b=ocr if b.startswith("laionet") else None,
            )  # fmt: skip
    return resolve(futures)  # every future; a failure names the task run that failed
