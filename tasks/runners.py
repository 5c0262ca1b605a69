"""The task runner of a flow, chosen by configuration rather than by code.

``task_runner(spec)`` turns a short string into a Prefect task runner; with no spec it reads the environment variable
``LAIONET_TASK_RUNNER`` and falls back to ``threads``:

=====================  ==========================================================================================
``threads[:N]``        Prefect's ``ThreadPoolTaskRunner`` (the default; ``N`` worker threads, else Prefect's default)
``processes[:N]``      Prefect's ``ProcessPoolTaskRunner`` (``N`` worker processes, else one per CPU)
``ray``                prefect-ray's ``RayTaskRunner`` on a local Ray instance started for the flow run and shut down
                       after it (or the instance this process already initialised)
``ray://host:port``    ``RayTaskRunner`` connected to a running Ray cluster through Ray Client (the cluster's nodes
                       need this package installed (it carries ``flows`` and ``tasks``): the image, the same venv,
                       or a ``runtime_env``)
=====================  ==========================================================================================

A flow takes it with ``flow.with_options(task_runner=task_runner(spec))``, or ``with_task_runner(flow, spec)``::

    from flows.build import build
    from tasks.runners import with_task_runner

    with_task_runner(build, "ray")(run_dir="runs/build")          # or LAIONET_TASK_RUNNER=ray

Tasks pass paths and manifests only, so every runner moves the same small values between workers. On a local Ray
instance the directory ``tasks`` was imported from is put on the workers' ``PYTHONPATH`` (they are separate processes
and must import ``tasks`` and ``laionet`` like the flow does, even when the flow imported them from a source tree that
is not installed); ``ray_init`` adds or overrides ``ray.init`` keyword arguments (e.g.
``num_cpus``, ``object_store_memory``, ``include_dashboard``, ``runtime_env``).

GPU tasks are submitted inside ``gpu_options()``: on Ray, when the cluster has GPUs, each such task asks Ray for one
(``num_gpus=1`` through prefect-ray's ``remote_options``), so Ray schedules it on a node with a free GPU and sets its
``CUDA_VISIBLE_DEVICES``; CPU tasks ask for none. With any other runner, or a cluster without GPUs, it does nothing
(the task then takes a device slot itself: ``tasks.devices.gpu_slot``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Flow
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

ENV_VAR = "LAIONET_TASK_RUNNER"
DEFAULT = "threads"
FORMS = "'threads', 'threads:N', 'processes', 'processes:N', 'ray' or 'ray://host:port'"
REPO_ROOT = Path(__file__).resolve().parents[1]

P = ParamSpec("P")
R = TypeVar("R")


def _workers(kind: str, count: str, spec: str) -> int | None:
    if count == "":
        return None
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"task runner {spec!r}: {kind}:N needs a positive integer N; accepted forms: {FORMS}")
    return int(count)


def _local_ray_init(ray_init: dict[str, Any] | None) -> dict[str, Any]:
    """``ray.init`` kwargs for a local instance: ``ray_init`` plus the repository root on the workers' PYTHONPATH."""
    kwargs = dict(ray_init or {})
    runtime_env = dict(kwargs.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    paths = [str(REPO_ROOT), *filter(None, [env_vars.get("PYTHONPATH"), os.environ.get("PYTHONPATH")])]
    env_vars["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    runtime_env["env_vars"] = env_vars
    kwargs["runtime_env"] = runtime_env
    return kwargs


def task_runner(spec: str | None = None, *, ray_init: dict[str, Any] | None = None) -> TaskRunner[Any]:
    """The Prefect task runner named by ``spec`` (default: ``$LAIONET_TASK_RUNNER``, else ``threads``).

    ``ray_init``: extra ``ray.init`` keyword arguments for ``ray`` / ``ray://`` (ignored by the other runners).
    Raises ``ValueError`` naming the accepted forms for anything else.
    """
    text = (spec if spec is not None else os.environ.get(ENV_VAR) or DEFAULT).strip()
    kind, _, count = text.partition(":")
    if text.startswith("ray://") and len(text) > len("ray://"):
        from prefect_ray import RayTaskRunner  # lazy: importing ray takes a few seconds

        return RayTaskRunner(address=text, init_kwargs=dict(ray_init or {}))
    if text == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(init_kwargs=_local_ray_init(ray_init))
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=_workers(kind, count, text))
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=_workers(kind, count, text))
    raise ValueError(f"unknown task runner {text!r}; accepted forms: {FORMS} (or set {ENV_VAR})")


def with_task_runner(
    flow: Flow[P, R], spec: str | None = None, *, ray_init: dict[str, Any] | None = None
) -> Flow[P, R]:
    """``flow`` with the task runner named by ``spec`` (see ``task_runner``); the flow itself is unchanged."""
    return flow.with_options(task_runner=task_runner(spec, ray_init=ray_init))


def _flow_on_ray() -> bool:
    """Whether the flow run this code runs in uses prefect-ray's task runner (with its Ray instance started)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    return type(runner).__name__ == "RayTaskRunner" and "ray" in sys.modules and sys.modules["ray"].is_initialized()


@contextmanager
def gpu_options(num_gpus: float = 1) -> Iterator[None]:
    """Tasks submitted in this block ask Ray for ``num_gpus`` GPUs each, when the flow runs on Ray and the cluster has
    a GPU (``ray.cluster_resources()["GPU"]``); otherwise (threads, processes, a CPU-only cluster, where a GPU request
    could never be met) they ask for nothing."""
    if _flow_on_ray() and sys.modules["ray"].cluster_resources().get("GPU", 0) >= num_gpus:
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=num_gpus):
            yield
        return
    yield
