"""Tasks of the diagnose flow (the paper's Section 4): text alone (4.2), selection frequency (4.1), the image+text-
filtered variants. Each wraps one driver of ``laionet.diagnostics``; paths in, the manifest out; cached across runs."""

from __future__ import annotations

from typing import Any

from prefect import task

from laionet.core.manifest import join
from tasks._common import below, publish, run_name, stage_cache
from tasks.devices import gpu_slot

Manifest = dict[str, Any]


@task(
    name="matched-captions",
    task_run_name=run_name("match_dir"),
    cache_policy=stage_cache("out_path"),
    persist_result=True,
)
def matched_captions(match_dir: str, out_path: str) -> Manifest:
    """The stand-in labelled caption set: the run's single-class matched captions (key, text, wnid)."""
    from laionet.diagnostics.text_alone import matched_captions as build

    return publish(build(match_dir, out_path), out_path)


@task(
    name="text-alone",
    task_run_name=run_name(below("out_dir", 1)),
    tags=["gpu"],
    cache_policy=stage_cache("out_dir", exclude=("device",)),
    persist_result=True,
)
def text_alone(captions: str, catalog_path: str, out_dir: str, encoder: str, device: str = "auto") -> Manifest:
    """Section 4.2: each caption's similarity to its own synset and the share of other classes more similar (on the
    device of the slot it holds; the device is not part of the cache key)."""
    from laionet.diagnostics.text_alone import run_text_alone
    from laionet.selection.encoders import create_text_encoder

    with gpu_slot(device) as chosen:
        manifest = run_text_alone(captions, catalog_path, out_dir, encoder=encoder,
                                  encoder_factory=lambda spec: create_text_encoder(spec, device=chosen))  # fmt: skip
    return publish(manifest, out_dir)


@task(
    name="selection-frequency",
    task_run_name=run_name(below("out_dir", 1)),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def selection_frequency(
    comparisons: list[dict[str, Any]],
    out_dir: str,
    pooled: dict[str, list[str]] | None = None,
    x_label: str = "average MTurk selection frequency",
    seed: int = 0,
) -> Manifest:
    """Section 4.1: the intra-class comparisons collected against their x value, pooled pair similarities."""
    from laionet.diagnostics.selection_frequency import run_selection_frequency

    pairs = {name: (emb, labels) for name, (emb, labels) in (pooled or {}).items()}
    manifest = run_selection_frequency(comparisons, out_dir, pooled=pairs or None, x_label=x_label, seed=seed)
    return publish(manifest, out_dir)


@task(
    name="filtered-variants",
    task_run_name=run_name(below("summary_dir", 1)),
    cache_policy=stage_cache("summary_dir"),
    persist_result=True,
)
def filtered_variants(
    candidates: str,
    model_dir: str,
    out_root: str,
    summary_dir: str,
    text_thresholds: list[float] | None = None,
    text_quantiles: list[float] | None = None,
    target: int | None = None,
) -> Manifest:
    """Image+text-filtered variants of equal size under ``out_root`` (their names in the manifest's
    ``extra.variants``). With ``text_quantiles`` (the offline stand-in) the text thresholds are those quantiles of the
    candidates' text similarity."""
    import pandas as pd

    from laionet.diagnostics.filtered import run_filtered_variants

    thresholds = list(text_thresholds or [])
    if text_quantiles:
        sims = pd.read_parquet(candidates, columns=["text_similarity"])["text_similarity"]
        thresholds += [round(float(sims.quantile(q)), 4) for q in text_quantiles]
    run_filtered_variants(
        candidates, join(model_dir, "*.predictions.parquet"), out_root, text_thresholds=thresholds, target=target,
        summary_dir=summary_dir,
    )  # fmt: skip
    from laionet.core.manifest import read_manifest

    manifest = read_manifest(summary_dir)
    assert manifest is not None
    return publish(manifest, summary_dir)
