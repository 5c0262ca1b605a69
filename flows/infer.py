"""The infer flow: every image model of the preset over the shards of every dataset of the run.

Per dataset: ``preset.shard_batches`` ``infer-shards`` tasks (one streaming pass each over a group of shards, all
models at once; none when it is 1), then one ``infer`` task that writes the manifests.
Outputs: ``run_dir/inference/<dataset>/<model>/``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from laionet.core.config import Preset, load_preset
from laionet.core.layout import shards_dir
from laionet.core.manifest import join
from tasks._common import flow_name, resolve
from tasks.infer import infer, infer_shards, shard_groups
from tasks.runners import gpu_options, task_runner


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="infer", persist_result=True, flow_run_name=flow_name("infer"), task_runner=task_runner())
def infer_flow(run_dir: str, preset: Preset | str = "demo") -> dict[str, Any]:
    """Image embeddings and predictions of the preset's models (``Preset.image_models``) for each dataset
    (``laionet`` and the preset's references); quarantined samples skipped.

    Returns:
        The inference manifest of each dataset.
    """
    config = load_preset(preset)
    models = config.image_models()
    catalog = join(run_dir, "catalog.parquet")
    finals, started = {}, {}
    for dataset in config.datasets():
        source = shards_dir(run_dir, dataset)
        quarantine = join(run_dir, "verify", "quarantine.parquet") if dataset == "laionet" else None
        out_root = join(run_dir, "inference", dataset)
        with gpu_options():  # on a Ray cluster with GPUs: one GPU per task (tasks/runners.py)
            groups = (  # with one group, the `infer` task does the whole pass itself (one task run fewer)
                [
                    infer_shards.submit(source, models, out_root, group, catalog, quarantine, config.infer)
                    for group in shard_groups(source, config.shard_batches)
                ]
                if config.shard_batches > 1
                else []
            )
            finals[dataset] = infer.submit(source, models, out_root, catalog, quarantine, config.infer, wait_for=groups)
        started.update({(dataset, i): group for i, group in enumerate(groups)})
    # every future: a failed shard group is named as the cause, not the `infer` task it kept from running
    results = resolve({**started, **finals})
    return {dataset: results[dataset] for dataset in finals}
