"""One download attempt: an img2dataset run in a spawned child process, fetching with our guarded fetch (the only
module that imports img2dataset), and the download's settings (``DownloadConfig``).

``run_attempt(index, folder, config, mirrors)`` runs img2dataset over ``index`` into ``folder`` (the download stage's
``<out>/_attempts/<n>/``; ``laionet.images.download`` turns its shards into final ones) in its own shard layout: a
killed run resumes there (shards whose ``_stats.json`` exists are not fetched again).

Untrusted URLs: img2dataset opens URLs itself with ``urllib`` (any scheme, any address, unbounded reads, no header
check before OpenCV decodes). It cannot be configured to do otherwise, so this module gives it our fetch: the
``Downloader`` img2dataset builds is wrapped (``_GuardedDownloader``, pickled to img2dataset's spawned worker
processes), and in each worker it replaces ``img2dataset.downloader.download_image_with_retry`` with
``_guarded_download``, which fetches with ``laionet.images.fetch`` (http/https only, public addresses unless named
in ``allow_host``, every redirect hop and the connected address checked, ``max_bytes`` counted while streaming, one
timeout for the whole response) and refuses an image whose header declares more than ``max_pixels`` before OpenCV
decodes it; ``OPENCV_IO_MAX_IMAGE_PIXELS`` is set to the same limit in the workers' environment. Refusals are
counted by reason (``bad_scheme``, ``private_address``, ``redirect_refused``, ``too_large``, ``too_many_pixels``) and
never retried. The hosts in ``mirrors`` are allowed besides ``allow_host`` (the download stage passes the host of a
mirror that ``prepare_index`` rewrote URLs to, read from ``<index>.source.json``). The fetch lives in its own module
(``fetch.py``, standard library only) so that it can be tested without img2dataset; this module is its only user and
the only one that imports img2dataset.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
import pandas as pd
from fsspec.core import url_to_fs
from pydantic import BaseModel, Field, field_validator

from laionet.core.manifest import atomic_path, join
from laionet.core.runtime import MAX_IMAGE_PIXELS, cores
from laionet.images.child import run_in_child
from laionet.images.fetch import Policy, RefusedError, fetch, image_pixels, parse_allowed

OPT_OUT_DIRECTIVES = ["noai", "noimageai", "noindex", "noimageindex"]


class DownloadConfig(BaseModel):
    """img2dataset settings. Images are resized so their shorter side is at most ``image_size`` (aspect kept,
    never upscaled): 448 keeps enough resolution for 384-px models."""

    image_size: int = Field(448, gt=0)
    encode_quality: int = Field(95, ge=1, le=100)
    processes: int = Field(default_factory=cores)
    threads: int = Field(64, gt=0)
    samples_per_shard: int = Field(10_000, gt=0)
    timeout: int = Field(10, gt=0)
    retries: int = Field(1, ge=0, description="img2dataset's immediate retries per URL")
    attempts: int = Field(2, ge=1, description="passes over rows that failed for a transient reason")
    respect_opt_out: bool = True
    user_agent_token: str | None = None
    allow_host: list[str] = Field(
        default_factory=list, description="HOST[:PORT] fetched even on a loopback/private address (a local mirror)"
    )
    max_bytes: int = Field(20_000_000, gt=0, description="largest response body; larger ones are counted too_large")
    max_pixels: int = Field(MAX_IMAGE_PIXELS, gt=0, description="largest image (w × h) decoded: too_many_pixels")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = Field(
        "multiprocessing",
        description="img2dataset's distributor: its processes on this machine, a Spark session, or Ray tasks on the "
        "cluster at `ray_address` (every node needs this package installed)",
    )
    subjob_size: int = Field(1000, gt=0, description="img2dataset: shards per distributed sub-job (pyspark)")
    ray_address: str | None = Field(
        None, description="distributor ray: the cluster ('auto', 'ray://host:10001'); None: a local Ray instance"
    )

    @field_validator("allow_host")
    @classmethod
    def _check_allow_host(cls, value: list[str]) -> list[str]:
        parse_allowed(value)  # raises ValueError naming the entry
        return value


def run_attempt(index: pd.DataFrame, folder: str, config: DownloadConfig, mirrors: tuple[str, ...] = ()) -> None:
    """One img2dataset run over ``index`` (our columns renamed around img2dataset's reserved ``key``), fetching with
    ``_guarded_download``; ``mirrors`` are allowed hosts besides ``config.allow_host``."""
    source = join(folder, "_input.parquet")
    fs, real = url_to_fs(folder)
    fs.makedirs(real, exist_ok=True)
    frame = index.rename(columns={"key": "sample_key"})[["sample_key", "url", "text", "wnid", "class_index"]]
    with atomic_path(source) as tmp, fsspec.open(tmp, "wb") as f:
        frame.to_parquet(f, index=False)
    kwargs = dict(
        url_list=source,
        input_format="parquet",
        url_col="url",
        caption_col="text",
        save_additional_columns=["sample_key", "wnid", "class_index"],
        output_format="webdataset",
        output_folder=join(folder, "shards"),
        processes_count=config.processes,
        thread_count=config.threads,
        number_sample_per_shard=config.samples_per_shard,
        image_size=config.image_size,
        resize_mode="keep_ratio",
        resize_only_if_bigger=True,
        encode_quality=config.encode_quality,
        timeout=config.timeout,
        retries=config.retries,
        enable_wandb=False,
        incremental_mode="incremental",
        disallowed_header_directives=OPT_OUT_DIRECTIVES if config.respect_opt_out else [],
        user_agent_token=config.user_agent_token,
        distributor=config.distributor,
        subjob_size=config.subjob_size,
    )
    guard = _Guard(Policy.of([*config.allow_host, *mirrors]), config.max_bytes, config.max_pixels)
    # img2dataset runs in a spawned child process, from any thread: it installs a SIGINT handler, which Python allows
    # only in the main thread (a Prefect task runs in a worker thread), and the child, which runs nothing else, loads
    # it without torch (see _rebuild_guarded), so the caller never holds img2dataset's memory. Its failure comes back
    # classified (ChildError: transient → the task retries, configuration → it does not).
    call = {"guard": guard, "isolated": True, "ray_address": config.ray_address, **kwargs}
    run_in_child(_img2dataset_download, call, f"img2dataset into {folder} ({config.distributor})")


@dataclass(frozen=True)
class _Guard:
    """What ``_guarded_download`` enforces in img2dataset's worker processes."""

    policy: Policy
    max_bytes: int
    max_pixels: int


def _img2dataset_download(guard: _Guard, isolated: bool = False, ray_address: str | None = None, **kwargs: Any) -> None:
    """``img2dataset.download(**kwargs)`` with the Downloader it builds wrapped in ``_GuardedDownloader`` and OpenCV's
    pixel limit in the environment its worker processes start with. ``isolated``: this process runs nothing else, so
    torch is kept from loading (see ``_rebuild_guarded``). With the ``ray`` distributor, Ray is joined at
    ``ray_address`` (or started locally, with this package's root on its workers' path) before img2dataset sends its
    shards there as Ray tasks."""
    import importlib
    import sys

    if kwargs.get("distributor") == "ray":
        import ray

        if not ray.is_initialized():
            root = str(Path(__file__).resolve().parents[2])
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}}
            ray.init(address=ray_address, runtime_env=None if ray_address else env, include_dashboard=False,
                     log_to_driver=False)  # fmt: skip

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if isolated and "img2dataset" not in sys.modules:
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    main: Any = importlib.import_module("img2dataset.main")  # the module (the package exports a function ``main``)
    original, saved = main.Downloader, os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")
    original_logger = main.LoggerProcess
    main.Downloader = lambda **kw: _GuardedDownloader(original(**kw), guard)
    if isolated:
        main.LoggerProcess = sys.modules[__name__]._LightLoggerProcess  # its process too: no torch
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(guard.max_pixels)
    try:
        main.download(**kwargs)
    finally:
        main.Downloader, main.LoggerProcess = original, original_logger
        if saved is None:
            os.environ.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
        else:
            os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = saved


class _GuardedDownloader:
    """img2dataset's ``Downloader`` (called once per shard in a worker process) with ``_guarded_download`` installed
    as the worker's fetch first. Picklable: img2dataset sends it to spawned processes (or Ray tasks)."""

    def __init__(self, inner: Any, guard: _Guard) -> None:
        self.inner, self.guard = inner, guard

    def __reduce__(self) -> tuple[Any, ...]:  # the inner Downloader travels as bytes: see _rebuild_guarded
        import pickle

        return (_rebuild_guarded, (pickle.dumps(self.inner), self.guard))

    def __call__(self, row: Any) -> Any:
        import functools

        import img2dataset.downloader

        from laionet.core.runtime import limit_image_pixels

        limit_image_pixels(self.guard.max_pixels)
        img2dataset.downloader.download_image_with_retry = functools.partial(_guarded_download, self.guard)
        return self.inner(row)


def _without_torch() -> None:
    """Keep torch from loading in a process spawned to run img2dataset alone (see ``_rebuild_guarded``)."""
    import multiprocessing
    import sys

    if multiprocessing.parent_process() is not None and "img2dataset" not in sys.modules:
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]


def __getattr__(name: str) -> Any:
    """``_LightLoggerProcess``: img2dataset's ``LoggerProcess``, built on first use (img2dataset is imported lazily) so
    that its spawned process, unpickling this name, keeps torch out before img2dataset loads."""
    if name != "_LightLoggerProcess":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import sys

    if "img2dataset" not in sys.modules:  # only the logger's process, unpickling itself, gets here before img2dataset
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    from img2dataset.logger import LoggerProcess

    cls = type("_LightLoggerProcess", (LoggerProcess,), {"__module__": __name__})
    globals()[name] = cls
    return cls


def _rebuild_guarded(inner: bytes, guard: _Guard) -> _GuardedDownloader:
    """Unpickle a ``_GuardedDownloader`` in a worker process. In img2dataset's own pool workers, which run nothing but
    downloads, torch is kept from loading first (webdataset imports it when it can, and does without): a worker then
    holds ~250 MB instead of ~930 MB (the CUDA build's libraries), so each of the run's processes stays far from the
    memory bound. Elsewhere (a Ray worker that may run other tasks) nothing is changed."""
    import multiprocessing
    import pickle

    if multiprocessing.current_process().name.startswith("SpawnPoolWorker"):
        _without_torch()
    return _GuardedDownloader(pickle.loads(inner), guard)


_USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


def _guarded_download(
    guard: _Guard,
    row: tuple[int, str],
    timeout: int,
    retries: int,
    user_agent_token: str | None,
    disallowed_header_directives: set[str] | None,
) -> tuple[int, io.BytesIO | None, str | None]:
    """img2dataset's ``download_image_with_retry`` under the policy: (key, body or None, error message or None).
    Refusals are final (not retried); other failures are tried ``retries`` more times, as img2dataset does."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    agent = _USER_AGENT
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"

    def check(headers: Any) -> str | None:
        if disallowed_header_directives and is_disallowed(headers, user_agent_token, disallowed_header_directives):
            return "Use of image disallowed by X-Robots-Tag directive"
        return None

    error = "not attempted"
    for _ in range(retries + 1):
        try:
            response = fetch(str(url), guard.policy, timeout, guard.max_bytes, {"User-Agent": agent}, check)
        except RefusedError as exc:
            return key, None, str(exc)
        except Exception as exc:  # every failure of one URL is that row's outcome, never the shard's
            error = str(exc) or type(exc).__name__
            if isinstance(exc, PermissionError):  # an opt-out directive answers the same every time
                return key, None, error
            continue
        pixels = image_pixels(response.data)
        if pixels is not None and pixels > guard.max_pixels:
            return key, None, str(RefusedError("too_many_pixels", f"the header declares {pixels} > {guard.max_pixels}"))
        return key, io.BytesIO(response.data), None
    return key, None, error
