"""Beyond one machine and one GPU (issue 18): device slots, GPU requests on Ray, per-class-group evaluation, the compose
service. GPUs are faked: ``LAIONET_GPUS`` sets the device count, the inference driver is replaced by a function that
records the device it was given, and Ray is started with ``num_gpus=1`` on a machine without one."""

from __future__ import annotations

import itertools
import json
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
    from tasks.devices import slot_names

    assert slot_names(2) == ["gpu-0", "gpu-1"]
    monkeypatch.setenv("LAIONET_NODE", "box-a")  # several GPU machines on one server: slots of their own
    assert slot_names(2) == ["gpu-box-a-0", "gpu-box-a-1"]


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
    monkeypatch.delenv("LAIONET_NODE", raising=False)
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


def test_text_encoder_tasks_take_a_device_slot_too(
    prefect_harness: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU tasks of the text encoders — similarity, text alone (4.2), caption embeddings and the nearest-caption
    search (4.3) — run on the device of the slot they hold, not on GPU 0 by default: each gets ``cuda:<i>``."""
    from prefect import flow

    import laionet.selection.encoders
    import tasks.build
    import tasks.devices
    from laionet.core.manifest import Manifest
    from tasks import diagnose as diagnose_tasks
    from tasks import retrieval as retrieval_tasks

    monkeypatch.setenv("LAIONET_GPUS", "1")
    monkeypatch.delenv("LAIONET_NODE", raising=False)
    devices: dict[str, str] = {}
    manifest = Manifest(stage="x", config={}, config_hash="0", rows_in=0, rows_out=0)

    def factory_device(name: str) -> Any:
        def driver(*args: Any, **kwargs: Any) -> Manifest:
            if "encoder_factory" in kwargs:  # the task builds the encoder on its device: the (fake) encoder is it
                devices[name] = kwargs["encoder_factory"]("st:x")
            else:
                devices[name] = args[3].device  # SimilarityConfig
            return manifest

        return driver

    monkeypatch.setattr(laionet.selection.encoders, "create_text_encoder", lambda spec, device="auto", **kw: device)
    monkeypatch.setattr(tasks.build, "run_similarity", factory_device("similarity"))
    monkeypatch.setattr("laionet.diagnostics.text_alone.run_text_alone", factory_device("text-alone"))
    monkeypatch.setattr("laionet.retrieval.embed.run_caption_embeddings", factory_device("caption-embeddings"))
    monkeypatch.setattr("laionet.retrieval.search.run_nearest_captions", factory_device("nearest-captions"))

    @flow
    def encoders(out: str) -> None:
        tasks.build.similarity(out, out, f"{out}/sim", "minilm")
        diagnose_tasks.text_alone(out, out, f"{out}/text", "minilm")
        retrieval_tasks.caption_embeddings(out, f"{out}/emb", "minilm")
        retrieval_tasks.nearest_captions(out, out, out, out, f"{out}/near/selection")

    encoders(str(tmp_path))
    assert devices == {name: "cuda:0" for name in ("similarity", "text-alone", "caption-embeddings",
                                                   "nearest-captions")}  # fmt: skip


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


# per-class-group evaluation ------------------------------------------------------------------------------------------

A_SIZES = {0: 12, 1: 3, 2: 8, 3: 20, 4: 5, 5: 1, 6: 9, 7: 6, 8: 15}  # class 8 only in A
B_SIZES = {0: 7, 1: 9, 2: 4, 3: 11, 4: 6, 5: 10, 6: 2, 7: 13, 9: 8}  # class 9 only in B


def _dataset(root: Path, name: str, sizes: dict[int, int], seed: int) -> dict[str, str]:
    """A variant's labels, one model's embeddings (two shards) and predictions with ``own_score``, a per-class
    accuracy table: every input of the grouped stages."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    cls = np.repeat(list(sizes), list(sizes.values()))
    keys = [f"{name}{i}" for i in range(len(cls))]
    centres = rng.normal(size=(10, 8))
    emb = centres[cls] + rng.normal(size=(len(cls), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    model = root / name / "model"
    model.mkdir(parents=True)
    half = len(keys) // 2
    for stem, part in (("00000", slice(0, half)), ("00001", slice(half, None))):
        np.save(model / f"{stem}.npy", emb[part].astype(np.float16))
        pd.DataFrame({"key": keys[part]}).to_parquet(model / f"{stem}.keys.parquet")
        own = rng.uniform(0.1, 0.4, len(keys))[part]
        own[::7] = np.nan
        pd.DataFrame({"key": keys[part], "own_score": own}).to_parquet(model / f"{stem}.predictions.parquet")
    labels = root / name / "labels.parquet"
    pd.DataFrame({"key": keys[:-1], "class_index": cls[:-1]}).to_parquet(labels)  # the last sample: unlabelled
    accuracy = root / name / "accuracy"
    accuracy.mkdir()
    n = np.array(list(sizes.values()))
    c1, c5 = rng.binomial(n, 0.5), n - rng.binomial(n, 0.2)
    pd.DataFrame({"class": list(sizes), "n": n, "correct@1": c1, "recall@1": c1 / n, "correct@5": c5,
                  "recall@5": c5 / n}).to_parquet(accuracy / "per_class.parquet")  # fmt: skip
    return {"model": str(model), "labels": str(labels), "accuracy": str(accuracy)}


@pytest.fixture
def two_variants(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    return _dataset(tmp_path / "in", "a", A_SIZES, 1), _dataset(tmp_path / "in", "b", B_SIZES, 2)


def _stage_args(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[Any, ...]]:
    return {
        "intra": (f"{a['model']}/*.npy", a["labels"], f"{b['model']}/*.npy", b["labels"]),
        "own": (f"{a['model']}/*.predictions.parquet", a["labels"], f"{b['model']}/*.predictions.parquet", b["labels"]),
        "recall": (f"{a['accuracy']}/per_class.parquet", f"{b['accuracy']}/per_class.parquet"),
    }


def assert_same_output(single: str, merged: str, moved: tuple[str, str] | None = None) -> None:
    """Every table of two stage outputs identical (values, dtypes, order), and the manifests alike but for time (and
    for the run directory, ``moved``: (that of ``single``, that of ``merged``))."""
    import pandas as pd

    from laionet.core.manifest import read_manifest

    one, two = read_manifest(single), read_manifest(merged)
    assert one is not None and two is not None
    assert [Path(p).name for p in one.outputs] == [Path(p).name for p in two.outputs]
    for path in one.outputs:
        pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(Path(merged) / Path(path).name))
    fields = ("stage", "config", "config_hash", "rows_in", "rows_out", "dropped", "extra")
    if moved:  # two run directories: the same config but for their paths (so not the same config hash)
        fields = fields[:2] + fields[3:]
    mine = json.loads(json.dumps({f: getattr(one, f) for f in fields}).replace(*moved or ("", "")))
    assert mine == {f: getattr(two, f) for f in fields}


@pytest.mark.parametrize("groups", [1, 3, 4])
def test_grouped_and_single_evaluation_give_identical_tables(
    two_variants: tuple[dict[str, str], dict[str, str]], tmp_path: Path, groups: int
) -> None:
    """Intra-class comparison, Appendix C and recall differences (both interval methods): the groups' parts merged
    are exactly the single pass's tables, bootstrap bounds included (every draw is seeded per class)."""
    from laionet.evaluation.groups import part_dirs
    from laionet.evaluation.intra_class import merge_intra_class, run_intra_class, run_intra_class_group
    from laionet.evaluation.own_similarity import merge_own_similarity, run_own_similarity, run_own_similarity_group
    from laionet.evaluation.recall import merge_recall_difference, run_recall_difference, run_recall_difference_group

    args = _stage_args(*two_variants)
    stages = {
        "intra": (run_intra_class, run_intra_class_group, merge_intra_class, {"cap": 5, "n_boot": 60}),
        "own": (run_own_similarity, run_own_similarity_group, merge_own_similarity, {"n_boot": 60}),
        "recall": (run_recall_difference, run_recall_difference_group, merge_recall_difference, {}),
        "recall-boot": (run_recall_difference, run_recall_difference_group, merge_recall_difference,
                        {"method": "bootstrap", "n_boot": 60}),
    }  # fmt: skip
    for name, (single, group, merge, options) in stages.items():
        stage_args = args[name.split("-")[0]]
        single(*stage_args, str(tmp_path / "single" / name), **options)
        out = str(tmp_path / "evaluate" / name)
        dirs = part_dirs(out, str(tmp_path / "evaluate"), groups)
        for g, part in enumerate(dirs):
            group(*stage_args, part, g, groups, **options)
        merge(*stage_args, out, dirs, **options)
        assert_same_output(str(tmp_path / "single" / name), out)
        assert not list(Path(out).glob("_groups")), "the parts live outside the stage output"


def test_merge_refuses_an_incomplete_split(two_variants: tuple[dict[str, str], dict[str, str]], tmp_path: Path) -> None:
    from laionet.evaluation.groups import class_group, part_dirs
    from laionet.evaluation.recall import merge_recall_difference, run_recall_difference_group

    assert [class_group(c, 4) for c in (0, 5, 7, 1000)] == [0, 1, 3, 0]
    args = _stage_args(*two_variants)["recall"]
    out = str(tmp_path / "evaluate" / "recall")
    dirs = part_dirs(out, str(tmp_path / "evaluate"), 3)
    assert dirs[0] == f"{tmp_path}/evaluate/_groups/recall/0-of-3"
    for g, part in enumerate(dirs[:2]):
        run_recall_difference_group(*args, part, g, 3)
    with pytest.raises(Exception, match="2-of-3"):
        merge_recall_difference(*args, out, dirs)
    with pytest.raises(ValueError, match="not every group"):
        merge_recall_difference(*args, out, dirs[:2])
    with pytest.raises(ValueError, match="class group 3 of 3"):
        run_recall_difference_group(*args, dirs[2], 3, 3)


def _run_dir(root: Path) -> Path:
    """A run directory the evaluate flow can read: the shards' listings of LAIONet and one reference (``ref``), the
    quarantine table, one model's predictions (``topk``, ``own_score``) and embeddings per dataset, class shares."""
    import numpy as np
    import pandas as pd

    from laionet.core.layout import inference_dir

    run = root / "run"
    for dataset, sizes, seed in (("laionet", A_SIZES, 1), ("ref", B_SIZES, 2)):
        rng = np.random.default_rng(seed)
        cls = np.repeat(list(sizes), list(sizes.values()))
        keys = [f"{dataset}/{i}" for i in range(len(cls))]
        shards = run / ("shards" if dataset == "laionet" else f"references/{dataset}")
        shards.mkdir(parents=True)
        (shards / "00000.tar").write_bytes(b"")
        pd.DataFrame({"key": keys, "wnid": [f"n{c:08d}" for c in cls], "class_index": cls,
                      "status": "success"}).to_parquet(shards / "00000.parquet")  # fmt: skip
        emb = rng.normal(size=(10, 8))[cls] + rng.normal(size=(len(cls), 8))
        for name in ("efficientnet_lite0", "clip"):  # the classifier and embedding model; the zero-shot model
            model = Path(inference_dir(str(run), dataset, name))
            model.mkdir(parents=True)
            np.save(model / "00000.npy", (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16))
            pd.DataFrame({"key": keys}).to_parquet(model / "00000.keys.parquet")
            topk = [[int(c) if rng.random() < 0.6 else 99, *rng.integers(0, 10, 4).tolist()] for c in cls]
            pd.DataFrame({"key": keys, "topk": topk, "own_score": rng.uniform(0.1, 0.4, len(keys))}).to_parquet(
                model / "00000.predictions.parquet"
            )
    (run / "verify").mkdir()
    pd.DataFrame({"shard": pd.Series([], dtype=str), "key": pd.Series([], dtype=str),
                  "reason": pd.Series([], dtype=str)}).to_parquet(run / "verify" / "quarantine.parquet")  # fmt: skip
    (run / "selection").mkdir()
    shares = pd.DataFrame(
        {"class_index": list(A_SIZES), "share": np.array(list(A_SIZES.values())) / sum(A_SIZES.values())}
    )
    shares.to_parquet(run / "selection" / "class_frequency.parquet")
    return run


@pytest.mark.prefect
def test_evaluate_flow_with_class_groups_on_local_ray(
    prefect_harness: Path,
    ray_temp_dir: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The evaluate flow with ``class_groups=4`` on a local Ray instance (4 group tasks and a merge task per intra-class
    comparison, recall difference and Appendix C, in Ray workers) writes the tables of the same flow with
    ``class_groups=1`` in threads, table for table."""
    import shutil

    from flows.evaluate import evaluate
    from laionet.core.config import Preset
    from tasks.runners import task_runner

    single_run = _run_dir(tmp_path / "single")
    grouped_run = tmp_path / "grouped" / "run"
    shutil.copytree(single_run, grouped_run)
    preset = {"name": "scale", "image_filter": None, "top_k": None, "ocr": False, "zero_shot": "clip",
              "references": {"ref": {"kind": "imagenet-val", "paths": {}}}, "compare": [("laionet", "ref")],
              "n_boot": 60, "intra_cap": 5}  # fmt: skip
    single = evaluate(str(single_run), Preset(**preset, class_groups=1))
    runner = task_runner("ray", ray_init={"num_cpus": 2, "include_dashboard": False,
                                          "object_store_memory": 100 * 1024**2, "_temp_dir": ray_temp_dir})  # fmt: skip
    grouped = evaluate.with_options(task_runner=runner)(str(grouped_run), Preset(**preset, class_groups=4))
    assert set(single) == set(grouped) and {"intra:laionet--ref", "own-similarity:laionet--ref"} <= set(grouped)
    moved = (str(single_run), str(grouped_run))
    for key in single:  # every stage output: the grouped ones, and those downstream of them (relations)
        out = single[key]["outputs"][0].rsplit("/", 1)[0]
        assert_same_output(out, out.replace(*moved), moved)
    root = grouped_run / "evaluate" / "_groups"
    parts = sorted(str(p.relative_to(root)) for p in root.glob("*/*/*/*"))
    clip = "clip"  # stage outputs are named after the preset's model name (inference after its canonical spec)
    expected = [("intra", "efficientnet_lite0"), ("own-similarity", clip), ("recall-difference", "efficientnet_lite0"),
                ("recall-difference", clip)]  # fmt: skip
    assert parts == sorted(f"{kind}/laionet--ref/{model}/{g}-of-4" for kind, model in expected for g in range(4))
    assert not (single_run / "evaluate" / "_groups").exists()


# the compose service ------------------------------------------------------------------------------------------------

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "deployments"
GPU_STAGES = {"build", "infer", "diagnose", "laion400m", "demo"}  # similarity, inference, text alone: on a GPU


def _compose() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((DEPLOYMENTS / "docker-compose.yml").read_text())


def test_compose_file_validates_where_docker_compose_exists() -> None:
    import shutil
    import subprocess

    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("no `docker compose` here (the structural test below checks the file)")
    for profile in ([], ["--profile", "ray"]):
        done = subprocess.run(
            ["docker", "compose", "-f", str(DEPLOYMENTS / "docker-compose.yml"), *profile, "config", "-q"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr


def test_compose_file_structure() -> None:
    """Without a Docker engine: the services, the NVIDIA request of the GPU containers, workers polling the pool and
    queues the deployments use, the server on PostgreSQL, one image built from deployments/Dockerfile."""
    import yaml

    compose = _compose()
    services = compose["services"]
    assert {"postgres", "prefect-server", "setup", "cpu-worker", "gpu-worker", "ray-head", "ray-gpu-node"} <= set(
        services
    )
    deployments = yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    queues = {d["name"]: d["work_pool"]["work_queue_name"] for d in deployments}
    assert pools == {"gpu"} and {q for n, q in queues.items() if n in GPU_STAGES} == {"gpu"}
    assert set(queues.values()) == {"gpu", "cpu"}
    for name, queue in (("cpu-worker", "cpu"), ("gpu-worker", "gpu")):
        command = services[name]["command"]
        assert command[:3] == ["prefect", "worker", "start"], command
        assert command[command.index("--pool") + 1] in pools and command[command.index("--work-queue") + 1] == queue
        assert services[name]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert services[name]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    for name in ("gpu-worker", "ray-gpu-node"):  # the NVIDIA runtime, every GPU of the host
        gpu = services[name]
        assert gpu["runtime"] == "nvidia"
        (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == "all"
    for name in ("cpu-worker", "setup", "prefect-server", "ray-head"):
        assert "deploy" not in services[name] and "runtime" not in services[name]
    assert services["cpu-worker"]["environment"]["LAIONET_GPUS"] == "0"
    server = services["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "prefect work-pool create gpu --type process" in services["setup"]["command"][-1]
    assert "deploy --prefect-file deployments/prefect.yaml --all" in services["setup"]["command"][-1]
    for name, service in services.items():  # one image, from the Dockerfile; mounted volumes declared; links exist
        if name != "postgres":
            assert service["build"] == {"context": "..", "dockerfile": "deployments/Dockerfile"}, name
            assert service["image"] == "laionet-worker:latest"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(("$", ".", "/")) or source in compose["volumes"], (name, volume)
        assert set(service.get("depends_on") or []) <= set(services), name
    for name in ("cpu-worker", "gpu-worker", "ray-head", "ray-gpu-node"):  # the same result store and caches
        env = services[name]["environment"]
        assert (env["PREFECT_LOCAL_STORAGE_PATH"], env["HF_HOME"], env["TORCH_HOME"]) == (
            "/results",
            "/cache/huggingface",
            "/cache/torch",
        )
        assert "results:/results" in services[name]["volumes"] and "runs:/opt/laionet/runs" in services[name]["volumes"]
    assert (
        services["ray-head"]["profiles"] == ["ray"]
        and "--ray-client-server-port=10001" in services["ray-head"]["command"]
    )
    dockerfile = (DEPLOYMENTS / "Dockerfile").read_text()
    for needed in (
        "FROM python:3.11",
        "scripts/constraints.txt",
        "COPY flows /tmp/laionet-src/flows",
        "COPY tasks /tmp/laionet-src/tasks",
        'pip install -c /opt/laionet/scripts/constraints.txt ".[orchestration]"',  # installed, not editable
        "rm -rf /tmp/laionet-src",  # no source tree left: workers run the installed flows and tasks
        "laionet wordnet install",
        "LAIONET_HOME=/opt/laionet",
        "COPY deployments deployments",
    ):
        assert needed in dockerfile, needed
    assert "LAIONET_ROOT" not in dockerfile and " -e " not in dockerfile
    for name in ("cpu-worker", "gpu-worker"):  # the flow runs' working directory is in the `runs` volume
        assert services[name]["environment"]["LAIONET_HOME"] == "/opt/laionet"
        assert "LAIONET_ROOT" not in services[name]["environment"]


def test_deployments_job_variables() -> None:
    import yaml

    for deployment in yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text())["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env == {"PREFECT_LOGGING_EXTRA_LOGGERS": "laionet", "LAIONET_TASK_RUNNER": "threads"}, deployment["name"]
