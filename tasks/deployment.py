"""The pull step of every deployment in ``deployments/prefect.yaml``: where a flow run works on the worker.

Part of the Prefect layer (it may log into a flow run), so it lives here and not in the library.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VAR = "LAIONET_HOME"


def deployment_home() -> dict[str, str]:
    """The pull step of every deployment (``deployments/prefect.yaml``): the flow run's working directory becomes
    ``$LAIONET_HOME`` of the worker's environment (created if missing), so that a relative ``run_dir`` lands there.
    Prefect's own ``set_working_directory`` would take an unset variable for an empty path, and a process worker's
    default directory is a temporary one deleted after the run: here an unset or relative value is an error naming
    the variable. The flows themselves come with the installed package (module entrypoints): no checkout is needed.
    Returns ``{"directory": <absolute path>}``, the output Prefect takes as the run's working directory."""
    value = os.environ.get(HOME_VAR, "")
    if not value or not Path(value).expanduser().is_absolute():
        message = (
            f"{HOME_VAR} must be set in the worker's environment to an absolute directory, where the flow runs "
            f"work and a relative run_dir lands (got {value!r}); e.g. {HOME_VAR}=/srv/laionet prefect worker start ..."
        )
        flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
        if flow_run_id:  # into the flow run's logs too (Prefect shows the run only as crashed)
            from prefect.logging import get_logger

            get_logger("prefect.flow_runs").error(message, extra={"flow_run_id": flow_run_id})
        raise ValueError(message)
    home = Path(value).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    os.chdir(home)
    return {"directory": str(home.resolve())}
