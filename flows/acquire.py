"""The acquire flow: the LAIONet index downloaded into verified shards with the OCR filter, and the reference
datasets ingested into the same format.

Under ``run_dir`` (``laionet.core.layout``): ``download_index.parquet``, ``shards/``, ``verify/``, ``ocr/``,
``references/<name>/``. Download, the reference ingests and (after download) verify run concurrently.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from prefect import flow

from laionet.core.config import Preset, load_preset
from laionet.core.layout import shards_dir
from laionet.core.manifest import join
from laionet.images.ocr import per_task_workers
from laionet.images.shard_list import shard_groups
from tasks._common import flow_name, resolve
from tasks.acquire import download, download_index, ingest_reference, ocr, ocr_shards, verify
from tasks.runners import gpu_options, task_runner


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="acquire", persist_result=True, flow_run_name=flow_name("acquire"), task_runner=task_runner())
def acquire(
    run_dir: str,
    preset: Preset | str = "demo",
    rewrite_urls: dict[str, str] | None = None,
    image_limit: int | None = None,
) -> dict[str, Any]:
    """Download, verify and OCR-filter the LAIONet images; ingest the preset's reference datasets.

    Args:
        run_dir: the run directory (its ``selection/laionet.parquet`` is downloaded).
        preset: a preset name (``demo``, ``laion400m``) or a preset file; gives the download settings, whether to
            run OCR and the reference datasets.
        rewrite_urls: URL prefix → replacement (a local mirror; the demo's loopback server).
        image_limit: download only the first N rows of the index (try a real run small first).

    Returns:
        The manifest of each stage, by stage name.
    """
    config = load_preset(preset)
    out = shards_dir(run_dir)
    index = download_index(join(run_dir, "selection", "laionet.parquet"), join(run_dir, "download_index.parquet"),
                           rewrite_urls, image_limit, out)  # fmt: skip
    downloaded = download.submit(index, out, config.download)
    references = {
        name: ingest_reference.submit(ref.kind, shards_dir(run_dir, name), ref.paths)
        for name, ref in config.references.items()
    }
    verified = verify.submit(out, join(run_dir, "verify"), wait_for=[downloaded])
    catalog, ocr_dir, quarantine = (
        join(run_dir, "catalog.parquet"),
        join(run_dir, "ocr"),
        join(run_dir, "verify", "quarantine.parquet"),
    )
    groups: list[Any] = []
    flagged = None
    # on a Ray cluster with GPUs, OCR on a GPU asks Ray for one per task (tasks/runners.py)
    with gpu_options() if config.ocr and config.ocr_device != "cpu" else nullcontext():
        if config.ocr:  # after verify: quarantined samples are skipped, a truncated shard never reaches OCR unseen
            settings = (quarantine, config.ocr_workers, config.ocr_device)
            if config.shard_batches > 1:  # one task per shard group (the shards exist once verify is done)
                # the tasks are the fan-out: with "auto", one OCR process each, not one per core each
                per_task = (quarantine, per_task_workers(config.ocr_workers, config.shard_batches), config.ocr_device)
                verified.wait()
                if verified.state.is_completed():
                    groups = [
                        ocr_shards.submit(out, catalog, ocr_dir, group, *per_task)
                        for group in shard_groups(out, config.shard_batches)
                    ]
            flagged = ocr.submit(out, catalog, ocr_dir, *settings, wait_for=[verified, *groups])
    futures: dict[str, Any] = {"download": downloaded, "verify": verified}
    futures.update({f"ocr:{i}": group for i, group in enumerate(groups)})  # a failed group is named as the cause
    if flagged is not None:
        futures["ocr"] = flagged
    futures.update({f"ingest:{name}": future for name, future in references.items()})
    return resolve(futures)  # every future; a failure names the task run that failed
