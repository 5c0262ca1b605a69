"""The demo's cached re-run: Prefect's default server settings against ``laionet run``'s, side by side in one run.

Every stage of a finished demo run comes back ``Cached``, so what is left is Prefect: the ephemeral API's start, the
subflows, one API round trip per task run. On its SQLite database the server's task-run recorder (the service that
writes task runs from the client's events) and the client's own writes (a new task run, a concurrency-slot request)
collide; the API answers "database is locked" (503) and the client retries after ~2 s. ``laionet run`` and ``make
demo`` have the recorder write in batches (``laionet.core.runtime.PREFECT_DEFAULTS``).

Runs ``python -m flows demo`` (what ``make demo`` runs, in a child process) ``--repeats`` times per setting, the
settings alternating, on the run directory and Prefect home of a finished demo (``make demo`` first), and prints per
setting: the whole command's wall time, the flow runs' time (first to last log line of the ``demo`` flow run), the
client's 503 retries and the task runs that came back Cached; then the ratio of the medians.

    .venv/bin/python benchmarks/bench_rerun.py [--run-dir runs/demo] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from laionet.core.runtime import PREFECT_DEFAULTS

RECORDER = {k: v for k, v in PREFECT_DEFAULTS.items() if "TASK_RUN_RECORDER" in k}
STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| ")


def _flow_seconds(log: str) -> float:
    """From the ``demo`` flow run's first log line ("Beginning flow run") to its last ("Finished in state")."""
    lines = [ln for ln in log.splitlines() if "Flow run 'demo" in ln and STAMP.match(ln)]
    begin = next(ln for ln in lines if "Beginning flow run" in ln)
    end = next(ln for ln in reversed(lines) if "Finished in state" in ln)
    first, last = (datetime.strptime(STAMP.match(ln).group(1), "%H:%M:%S.%f") for ln in (begin, end))  # type: ignore[union-attr]
    return (last - first).total_seconds()


def run_once(run_dir: str, home: Path, recorder: dict[str, str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if "TASK_RUN_RECORDER" not in k}
    env.update(recorder)  # the launcher sets the rest of PREFECT_DEFAULTS (and these, where not given)
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="DEBUG")  # DEBUG: the client logs each retry
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows", "demo", "--run-dir", run_dir], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"flows demo exited {done.returncode}:\n{log[-3000:]}")
    cached = len(re.findall(r"Finished in state Cached", log))
    if cached < 40:
        raise SystemExit(f"only {cached} task runs came back Cached: run `make demo` once first (or use its RUN_DIR)")
    return {
        "wall": wall,
        "flows": _flow_seconds(log),
        "retries": float(len(re.findall(r"retryable status code 503", log))),
        "cached": float(cached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo", help="a finished demo run (make demo's RUN_DIR)")
    parser.add_argument("--prefect-home", default=None, help="its Prefect home (default: <run dir>/../.prefect)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = Path(args.prefect_home or Path(args.run_dir).resolve().parent / ".prefect")
    if not (Path(args.run_dir) / "summary.json").exists() and not (Path(args.run_dir) / "report").exists():
        raise SystemExit(f"{args.run_dir} holds no finished demo: run `make demo` first")
    # Prefect's own defaults spelled out (the launcher would otherwise apply laionet's): one event per write, 5 s
    prefect = {k: v for k, v in zip(RECORDER, ("1", "5"), strict=True)}
    settings = {"prefect defaults": prefect, "batched recorder": RECORDER}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for i in range(args.repeats):
        for name, recorder in settings.items():
            r = run_once(args.run_dir, home, recorder)
            results[name].append(r)
            print(f"  [{i + 1}/{args.repeats}] {name:17s} wall {r['wall']:5.1f} s  flows {r['flows']:5.1f} s  "
                  f"503 retries {r['retries']:.0f}  cached {r['cached']:.0f}", flush=True)  # fmt: skip
    print(f"\nmedians of {args.repeats} ({', '.join(f'{k}={v}' for k, v in RECORDER.items())}):")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    for name, m in med.items():
        print(f"  {name:17s} wall {m['wall']:5.1f} s  flows {m['flows']:5.1f} s  503 retries {m['retries']:.0f}")
    old, new = med["prefect defaults"], med["batched recorder"]
    print(f"  ratio: wall {old['wall'] / new['wall']:.2f}x, flows {old['flows'] / new['flows']:.2f}x")


if __name__ == "__main__":
    main()
