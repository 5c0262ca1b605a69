"""Beyond one machine and one GPU (issue 18): device slots, GPU requests on Ray, per-class-group evaluation, the compose
service. GPUs are faked: ``LAIONET_GPUS`` sets the device count, the inference driver is replaced by a function that
records the device it was given, and Ray is started with ``num_gpus=1`` on a machine without one."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_ray import ray_temp_dir  # noqa: F401  (a fixture)

# device slots ---------------------------------------------------------------------------------------------------------


def test_no_gpu_no_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU-only machine the device is passed through and no Prefect API is needed (no harness here)."""
    from tasks.devices import gpu_count, gpu_slot

    monkeypatch.setenv("LAIONET_GPUS", "0")
    assert gpu_count() == 0
    for device in ("auto", "cpu", "cuda:3"):
        with gpu_slot(device) as got:
            assert got == device
    monkeypatch.setenv("LAIONET_GPUS", "2")
    with gpu_slot("cpu") as got:  # an explicit device is never remapped
        assert got == "cpu"
    monkeypatch.setenv("LAIONET_GPUS", "two")
    with pytest.raises(ValueError, match="LAIONET_GPUS"):
        gpu_count()


@pytest.mark.prefect
def test_parallel_gpu_tasks_hold_different_devices(
    prefect_harness: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three infer-shards tasks in parallel on a machine with two (fake) GPUs: each runs on the device of the slot it
    holds, the two devices are both used, and no device ever runs two tasks at once (the third waits for a slot)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.task_runners import ThreadPoolTaskRunner

    import tasks.devices
    import tasks.infer
    from tasks._common import resolve

    monkeypatch.setenv("LAIONET_GPUS", "2")
    monkeypatch.setattr(tasks.devices, "POLL_S", 0.3)
    calls: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def driver(shards_dir: str, models: list[str], out_root: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        config = args[2]
        start = time.monotonic()
        time.sleep(1.5)
        with lock:
            calls.append((config.device, start, time.monotonic()))
        return {}

    monkeypatch.setattr(tasks.infer, "run_inference", driver)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
    def three_groups(out_root: str) -> dict[int, Any]:
        futures = {i: tasks.infer.infer_shards.submit(out_root, ["m"], out_root, [f"{i:05d}.tar"]) for i in range(3)}
        return resolve(futures)

    assert three_groups(str(tmp_path / "inference" / "laionet")) == {0: 1, 1: 1, 2: 1}
    assert {device for device, _, _ in calls} == {"cuda:0", "cuda:1"}
    assert len(calls) == 3
    for device in ("cuda:0", "cuda:1"):
        spans = sorted((s, e) for d, s, e in calls if d == device)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), spans
    with get_client(sync_client=True) as client:  # the slots exist (created on first use), one per device, all free
        for name in ("gpu-0", "gpu-1"):
            limit = client.read_global_concurrency_limit_by_name(name)
            assert (limit.limit, limit.active_slots) == (1, 0)


# GPU requests on Ray ------------------------------------------------------------------------------------------------


@pytest.mark.prefect
def test_gpu_tasks_ask_ray_for_a_gpu(
    prefect_harness: Path,
    ray_temp_dir: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a local Ray instance with one (fake) GPU, a task submitted in ``gpu_options()`` gets it from Ray (Ray sets
    its ``CUDA_VISIBLE_DEVICES``, and the task takes no Prefect device slot), a CPU task gets none."""
    import ray
    from prefect import flow, task

    from tasks._common import resolve
    from tasks.runners import gpu_options, task_runner

    def _probe(gpu_task: bool) -> dict[str, Any]:
        import os

        import ray

        from tasks.devices import gpu_slot

        if not gpu_task:
            return {"gpus": [str(i) for i in ray.get_gpu_ids()]}
        with gpu_slot("auto") as device:
            return {
                "gpus": [str(i) for i in ray.get_gpu_ids()],
                "device": device,
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            }

    monkeypatch.setenv("LAIONET_GPUS", "4")  # would ask for a Prefect slot (none exists) unless Ray placed the task
    probe = task(_probe, name="probe")  # defined in the test: pickled by value for the Ray workers
    runner = task_runner(
        "ray",
        ray_init={
            "num_cpus": 2,
            "num_gpus": 1,
            "include_dashboard": False,
            "object_store_memory": 100 * 1024**2,
            "_temp_dir": ray_temp_dir,
        },
    )

    @flow(task_runner=runner)
    def placed() -> dict[str, Any]:
        assert ray.cluster_resources().get("GPU") == 1
        with gpu_options():
            gpu = probe.submit(True)
        cpu = probe.submit(False)
        return resolve({"gpu": gpu, "cpu": cpu})

    got = placed()
    assert got["gpu"]["gpus"] == ["0"] and got["gpu"]["visible"] == "0"
    assert got["gpu"]["device"] == "auto"  # the driver resolves it to cuda = the GPU Ray assigned
    assert got["cpu"]["gpus"] == []
