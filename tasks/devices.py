"""GPU placement: one concurrency slot per device, and the task runs on the device of the slot it holds.

A GPU task calls ``gpu_slot(device)`` around its driver call and passes the device it yields to the driver:

* an explicit device (``cpu``, ``cuda:1``) is used as given, no slot taken;
* ``auto`` (or ``cuda``) on a machine with N GPUs (``$LAIONET_GPUS``, else ``torch.cuda.device_count()``) takes one
  of the Prefect global concurrency limits ``gpu-0`` … ``gpu-<N-1>`` (limit 1 each, created when missing): the first
  free one, else it waits for one; the task then runs on ``cuda:<i>`` of the slot it holds, so N slots mean N tasks on
  N different devices (not N tasks on GPU 0);
* inside a Ray task that Ray gave a GPU (``num_gpus=1``, see ``tasks.runners.gpu_options``), Ray has already chosen
  the device and set ``CUDA_VISIBLE_DEVICES``: no Prefect slot, the device is left to the driver (``auto`` → ``cuda``
  = the GPU Ray assigned). Slots are per server, devices per machine: on a cluster Ray, not the slots, places tasks;
* on a machine without a GPU (N = 0) nothing changes: the device is yielded as given and no slot is taken.

Slots are limits of the Prefect server, devices belong to a machine: where several GPU machines share one server, give
each its own names with ``LAIONET_NODE`` (slots ``gpu-<node>-<i>``), else their tasks would share ``gpu-0`` … .

The ``gpu`` tag of the GPU tasks stays (``prefect concurrency-limit create gpu N`` caps GPU tasks overall); the
device slots are what pins each task to its own device.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

ENV_VAR = "LAIONET_GPUS"
NODE_VAR = "LAIONET_NODE"
PREFIX = "gpu-"
POLL_S = 2.0  # seconds between two rounds of slot requests while every device is busy
_log = logging.getLogger("laionet.tasks.devices")


def gpu_count() -> int:
    """GPUs of this machine: ``$LAIONET_GPUS`` if set (e.g. fewer than the machine has, or fake ones in tests), else
    ``torch.cuda.device_count()`` (0 without torch or CUDA)."""
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        if not text.isdigit():
            raise ValueError(f"{ENV_VAR}={text!r}: expected a number of GPUs (0 or more)")
        return int(text)
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def slot_names(count: int) -> list[str]:
    """The global concurrency limits of ``count`` devices: ``gpu-0`` … ``gpu-<count-1>``, or ``gpu-<node>-<i>`` with
    ``$LAIONET_NODE`` set."""
    node = os.environ.get(NODE_VAR, "").strip()
    prefix = f"{PREFIX}{node}-" if node else PREFIX
    return [f"{prefix}{i}" for i in range(count)]


def ensure_slots(count: int) -> None:
    """Create the missing ``gpu-<i>`` global concurrency limits (limit 1 each); existing ones are left as they are."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in slot_names(count):
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):  # another task created it meanwhile
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def ray_gpu_ids() -> list[str]:
    """The GPUs Ray assigned to the Ray task this code runs in (empty outside one, or for a task without GPUs)."""
    import sys

    ray = sys.modules.get("ray")  # a Ray worker has imported ray; anything else need not
    if ray is None or not ray.is_initialized():
        return []
    try:
        return [str(i) for i in ray.get_gpu_ids()]
    except Exception:  # the driver process, or a Ray Client connection: no task of its own
        return []


def _locked(exc: BaseException) -> bool:
    """Whether a slot request failed because the limit is full (HTTP 423), not for another reason."""
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    return getattr(response, "status_code", None) == 423


@contextmanager
def gpu_slot(device: str = "auto", poll_s: float | None = None) -> Iterator[str]:
    """Hold one device slot while the block runs; yields the device to pass to the driver (see the module)."""
    count = gpu_count() if device in ("auto", "cuda") and not ray_gpu_ids() else 0
    if count == 0:
        yield device
        return
    from prefect.concurrency.sync import concurrency

    ensure_slots(count)
    waited = 0.0
    while True:
        for i, name in enumerate(slot_names(count)):
            with ExitStack() as stack:
                try:
                    # a lease the task renews while it runs; a failed renewal (the API briefly unreachable) does not
                    # kill an hour of inference (the slot may then be freed early, when its lease expires)
                    slot = concurrency(name, occupy=1, max_retries=0, strict=True, raise_on_lease_renewal_failure=False)
                    stack.enter_context(slot)
                except Exception as exc:
                    if _locked(exc):
                        continue
                    raise
                _log.info(
                    "holding device slot %s: running on cuda:%d%s",
                    name,
                    i,
                    f" (after waiting {waited:.0f} s)" if waited else "",
                )
                yield f"cuda:{i}"
                return
        time.sleep(poll_s or POLL_S)
        waited += poll_s or POLL_S
