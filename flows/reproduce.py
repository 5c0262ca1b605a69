"""The reproduce flow: build → acquire → infer → evaluate → diagnose → report, one run directory, one preset.

Each stage is a subflow of its own (deployable and re-runnable alone); every task inside is cached across runs
(``tasks._common.stage_cache``), so re-running after a failure, or with one setting changed, recomputes only the
stages whose inputs, settings or code changed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, tags
from prefect.runtime import flow_run

from flows.acquire import acquire
from flows.build import build
from flows.diagnose import diagnose
from flows.evaluate import evaluate
from flows.infer import infer_flow
from flows.report import report_flow
from laionet.core.config import Preset, load_preset
from tasks._common import flow_name


@flow(name="reproduce", persist_result=True, flow_run_name=flow_name("reproduce"))
def reproduce(
    run_dir: str,
    preset: Preset | str = "demo",
    max_parts: int | None = None,
    image_limit: int | None = None,
    rewrite_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The whole pipeline for one preset.

    Args:
        run_dir: where every output goes (local path or fsspec URL).
        preset: ``demo`` (offline), ``laion400m`` (the paper's setting; edit its paths) or a preset file.
        max_parts: only the first N corpus parts (run the real preset on one part first).
        image_limit: download only the first N selected samples.
        rewrite_urls: URL prefix → replacement for the download (a local mirror).

    Returns:
        The manifests of every stage, by flow.
    """
    config = load_preset(preset, max_parts=max_parts)
    with tags(*flow_run.tags):  # the subflows carry this run's tags (a deployment's, `auto-scheduled`)
        built = build(
            run_dir,
            classes=config.classes,
            mode=config.mode,
            corpus=config.corpus,
            corpus_limit=config.corpus_limit,
            encoder=config.encoder,
            threshold=config.threshold,
            top_k=config.top_k,
            max_parts=config.max_parts,
        )
        # the subflows get the resolved preset (``max_parts`` included; the UI shows its fields on each subflow run)
        acquired = acquire(run_dir, config, rewrite_urls=rewrite_urls, image_limit=image_limit)
        inferred = infer_flow(run_dir, config)
        evaluated = evaluate(run_dir, config)
        diagnosed = diagnose(run_dir, config, rewrite_urls=rewrite_urls) if config.diagnose else {}
        reported = report_flow(run_dir, config)
    return {
        "build": built,
        "acquire": acquired,
        "infer": inferred,
        "evaluate": evaluated,
        "diagnose": diagnosed,
        "report": reported,
    }
