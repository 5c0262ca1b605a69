"""Tasks of the acquire flow: download the LAIONet index into shards, ingest reference datasets, verify, OCR.

Same conventions as ``tasks.build``: one driver call each, paths in, the manifest (a plain dict) out, persisted and
cached across runs (``tasks._common.stage_cache``), a Markdown artifact per stage. The download talks to the network:
it retries with exponential backoff on I/O errors (its own per-URL retries and transient re-passes are inside the
driver); the others retry on I/O errors only. Download and OCR have a time limit (a timed-out run is retried and
resumes): ``LAIONET_DOWNLOAD_TIMEOUT_S`` (default 86400) and ``LAIONET_OCR_TIMEOUT_S`` (default 43200), read when this
module is imported (set them in the worker's environment, or the deployment's ``job_variables.env``); 0 or ``none``:
no limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.tasks import exponential_backoff

from laionet.images.attempt import DownloadConfig
from laionet.images.download import prepare_index, run_download
from laionet.images.ocr import ocr_providers, run_ocr, run_ocr_shards
from laionet.images.references import ingest
from laionet.images.verify import run_verify
from tasks._common import IO_RETRIES, is_transient, progress_artifact, publish, run_name, stage_cache
from tasks.devices import gpu_slot
from tasks.infer import shard_span

Manifest = dict[str, Any]


def timeout_s(variable: str, default: float) -> float | None:
    """A task time limit in seconds from the environment variable ``variable`` (0 or ``none``: no limit)."""
    text = os.environ.get(variable, "").strip().lower()
    if not text:
        return default
    return None if text in {"0", "none"} else float(text)


DOWNLOAD_TIMEOUT_S = timeout_s("LAIONET_DOWNLOAD_TIMEOUT_S", 24 * 3600.0)
OCR_TIMEOUT_S = timeout_s("LAIONET_OCR_TIMEOUT_S", 12 * 3600.0)


@task(
    name="download",
    task_run_name=run_name(),
    tags=["network"],
    cache_policy=stage_cache("out_dir", exclude=("processes", "threads")),
    persist_result=True,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=30),
    retry_condition_fn=is_transient,
    timeout_seconds=DOWNLOAD_TIMEOUT_S,  # the child process is polled, so the limit interrupts it
)
def download(
    index_path: str,
    out_dir: str,
    settings: dict[str, Any] | None = None,
    processes: int | None = None,
    threads: int | None = None,
) -> Manifest:
    """Images of a LAIONet index (``key, url, text, wnid, class_index``) → RGB WebDataset shards in ``out_dir``
    (img2dataset; resumable: a retry refetches only what is missing). ``processes``/``threads`` only change speed."""
    fields = {**(settings or {}), **{k: v for k, v in (("processes", processes), ("threads", threads)) if v}}
    return publish(run_download(index_path, out_dir, DownloadConfig(**fields)), out_dir)


@task(
    name="ingest",
    task_run_name=run_name("kind"),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
    **IO_RETRIES,
)
def ingest_reference(kind: str, out_dir: str, paths: dict[str, str], per_shard: int = 10_000) -> Manifest:
    """A reference dataset (imagenet-val, imagenetv2, imagenet-captions) → shards in the LAIONet format."""
    manifest = ingest(kind, out_dir, per_shard=per_shard, **{k: Path(v) for k, v in paths.items()})
    return publish(manifest, out_dir)


@task(
    name="verify",
    task_run_name=run_name(),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
    **IO_RETRIES,
)
def verify(shards_dir: str, out_dir: str) -> Manifest:
    """Read every shard; quarantine undecodable or inconsistent samples (``quarantine.parquet``)."""
    return publish(run_verify(shards_dir, out_dir), out_dir)


@task(
    name="ocr",
    task_run_name=run_name(),
    cache_policy=stage_cache("out_dir", exclude=("workers", "device")),
    persist_result=True,
    timeout_seconds=OCR_TIMEOUT_S,
    **IO_RETRIES,
)
def ocr(
    shards_dir: str,
    catalog_path: str,
    out_dir: str,
    quarantine: str | None = None,
    workers: int | Literal["auto"] = 1,
    device: str = "cpu",
) -> Manifest:
    """Flag samples whose image shows their class name as text (evaluation excludes them); ``workers`` shards at once,
    one process each, on ``device`` (how fast only: neither is part of the cache key)."""
    progress = progress_artifact(f"OCR over the shards of {shards_dir}")
    with ocr_device(device) as placed:
        manifest = run_ocr(
            shards_dir, catalog_path, out_dir, progress=progress, quarantine=quarantine, workers=workers, device=placed
        )
    return publish(manifest, out_dir)


@contextmanager
def ocr_device(device: str) -> Iterator[str]:
    """The device OCR runs on: a GPU one holds a device slot like inference (``tasks.devices.gpu_slot``); the CPU, or
    ``auto`` where onnxruntime has no CUDA provider, takes none."""
    if ocr_providers(device)[0] == "CPUExecutionProvider":
        yield "cpu"
        return
    with gpu_slot(device) as placed:  # cuda:<i> of the slot held; as given without GPUs or inside a Ray GPU task
        yield placed


@task(
    name="ocr-shards",
    task_run_name=run_name(shard_span),
    timeout_seconds=OCR_TIMEOUT_S,
    **IO_RETRIES,
)
def ocr_shards(
    shards_dir: str,
    catalog_path: str,
    out_dir: str,
    shards: list[str],
    quarantine: str | None = None,
    workers: int | Literal["auto"] = 1,
    device: str = "cpu",
) -> int:
    """OCR one group of the shards of ``shards_dir`` (part records only; the ``ocr`` task writes the manifest once
    every group is done); returns the number of shards OCR'd (0: all were done). A retry redoes only what a crash
    left."""
    progress = progress_artifact(f"OCR over {len(shards)} shards of {shards_dir}")
    with ocr_device(device) as placed:
        return run_ocr_shards(
            shards_dir, catalog_path, out_dir, shards, progress=progress, quarantine=quarantine, workers=workers,
            device=placed,
        )  # fmt: skip


@task(name="download-index", task_run_name=run_name())
def download_index(
    index_path: str, out_path: str, rewrite: dict[str, str] | None = None, limit: int | None = None,
    shards_dir: str | None = None,
) -> str:  # fmt: skip
    """The run's download index: the LAIONet index (first ``limit`` rows) with URL prefixes rewritten to a mirror;
    left untouched when unchanged and already downloaded (see ``laionet.images.download.prepare_index``)."""
    return prepare_index(index_path, out_path, rewrite, limit, shards_dir)
