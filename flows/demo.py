"""The offline demo as a Prefect flow: the ``reproduce`` flow on the ``demo`` preset, with the openclipart images
served over a loopback HTTP server started for the run.

    .venv/bin/python -m flows demo --run-dir runs/demo     (what ``make demo`` runs; see flows/__main__.py)

``python -m flows.demo`` works too, but makes every process the stages spawn import this module again: so the flows
are imported inside ``demo``, and such a child pays for Prefect's import only.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from typing import Any

from prefect import flow, tags
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from laionet.images.serve import ImageServer
from laionet.text.openclipart import DEFAULT_BASE_URL, DEFAULT_ROOT


@flow(name="demo", persist_result=True, flow_run_name="demo · {run_dir}")
def demo(run_dir: str = "runs/demo", image_limit: int | None = None) -> dict[str, Any]:
    """Catalog → matching → similarity → selection → download (loopback) → verify → OCR → inference → metrics →
    report, offline, on Debian's openclipart clip art; returns every stage's manifest."""
    from flows.reproduce import reproduce

    # the clip art, SVG rendered to PNG, at http://127.0.0.1:<port>/; the subflows carry this run's tags
    with ImageServer(DEFAULT_ROOT) as base, tags(*flow_run.tags):
        return reproduce(run_dir, "demo", image_limit=image_limit, rewrite_urls={DEFAULT_BASE_URL: base})


def start_ephemeral_api() -> Callable[[], None]:
    """Start Prefect's ephemeral API server (what the first flow run would start: no ``PREFECT_API_URL`` set) in a
    thread now, so that its process boots on another core while this one imports the flows; returns a function
    that waits until it answers (and raises what starting it raised). With an API URL set, nothing is started.

    A profiled cached ``make demo`` spent 5.3 s waiting for that process after importing the server module, then
    5.9 s importing the flows inside the first flow run (2026-12-01, a 2-core Intel Xeon: 26 s in all under cProfile,
    19-23 s without; 17-21 s with this)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return lambda: None
    # imported here, not in the thread: an import is Python work that would only contend with this thread's for the GIL
    from prefect.server.api.server import SubprocessASGIServer

    failure: list[BaseException] = []

    def start() -> None:
        try:
            SubprocessASGIServer().start()  # the instance Prefect's client takes (one per port; None: any free one)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)

    thread = threading.Thread(target=start, name="prefect-ephemeral-api", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failure:
            raise failure[0]

    return wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--image-limit", type=int, default=None, help="download only the first N selected samples")
    args = parser.parse_args()
    # no flow-run heartbeats: they let a server mark the runs of a crashed worker, which an ephemeral API never
    # sees; and each of the demo's 11 flow runs waited up to 1 s for its heartbeat thread at exit
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        result = demo(args.run_dir, image_limit=args.image_limit)
    print(f"report: {result['report']['outputs'][0]}")


if __name__ == "__main__":
    main()
