"""The state of every stage of a run directory, read from what the stage contract leaves on disk.

A stage output is *complete* (its manifest exists), *incomplete* (an ``_INCOMPLETE`` marker and no manifest: a run
was interrupted or failed; its ``_parts`` records say how far it got), *running* (its lock's owner is alive), *stale*
(complete, but an input it lists was rebuilt after it, or is now incomplete: re-run it), or *missing* (one of the
pipeline's main outputs that is not there yet). Reads manifests, markers, locks and part records only — never data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from fsspec.core import url_to_fs

from laionet.core.manifest import MANIFEST_NAME, Manifest, join, read_manifest

# the pipeline's main outputs, in order, relative to the run directory: shown as missing until they exist
MAIN_OUTPUTS = (
    "catalog.parquet",
    "matches",
    "selection",
    "shards",
    "verify",
    "ocr",
    "inference",
    "variants",
    "evaluate",
    "diagnose",
    "report",
)


@dataclass
class StageState:
    """One stage output of a run."""

    path: str
    state: str
    stage: str = ""
    rows_in: int | None = None
    rows_out: int | None = None
    wall_time_s: float | None = None
    detail: str = ""


def _written(fs: Any, manifest_file: str) -> float:
    """When a manifest file was written (its modification time: finer than the manifest's created_at seconds)."""
    info = fs.info(manifest_file)
    return float(info.get("mtime") or info.get("created") or 0.0)


def _lock_owner(fs: Any, directory: str) -> dict[str, Any] | None:
    from laionet.core.stage import _alive

    path = directory.rstrip("/") + "/_lock.json"
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "r") as f:
            owner: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if _alive(owner) else None


def run_status(run_dir: str) -> list[StageState]:
    """Every stage output under ``run_dir`` (complete, stale, incomplete, running) and the main outputs not there
    yet (missing), sorted by path."""
    fs, root = url_to_fs(run_dir)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    states: dict[str, StageState] = {}
    manifests: dict[str, Manifest] = {}
    written: dict[str, float] = {}
    for found in fs.find(root):
        rel = found[len(root) + 1 :]
        if "/_parts/" in f"/{rel}":
            continue
        name = rel.rsplit("/", 1)[-1]
        if name == MANIFEST_NAME or rel.endswith(".parquet.manifest.json"):
            target = rel[: -len(MANIFEST_NAME) - 1] if name == MANIFEST_NAME else rel.removesuffix(".manifest.json")
            try:
                manifest = read_manifest(join(run_dir, target))
            except ValueError as exc:
                states[target] = StageState(target, "corrupt", detail=str(exc)[:200])
                continue
            if manifest is None:
                continue
            manifests[target] = manifest
            written[target] = _written(fs, found)
            states[target] = StageState(
                target, "complete", manifest.stage, manifest.rows_in, manifest.rows_out, manifest.wall_time_s
            )
        elif name == "_INCOMPLETE" or name.endswith(".parquet.incomplete"):
            target = rel.rsplit("/", 1)[0] if name == "_INCOMPLETE" else rel.removesuffix(".incomplete")
            if "/" not in rel and name == "_INCOMPLETE":
                target = "."
            directory = found.rsplit("/", 1)[0]
            parts = fs.glob(directory + "/_parts/*.json") if name == "_INCOMPLETE" else []
            owner = _lock_owner(fs, directory)
            state = "running" if owner else "incomplete"
            detail = f"{len(parts)} part(s) done" if parts else ""
            if owner:
                detail = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}; {detail}".strip(
                    "; "
                )
            states.setdefault(target, StageState(target, state, detail=detail))  # a manifest beside it wins
    for target, manifest in manifests.items():
        stale = []
        for source in manifest.inputs:
            _, real = url_to_fs(source)
            rel = real[len(root) + 1 :] if real.startswith(root + "/") else None
            if rel is None:
                continue
            upstream = manifests.get(rel)
            if upstream is not None and written[rel] > written[target]:
                stale.append(f"{rel} rebuilt after it")
            elif rel in states and states[rel].state in ("incomplete", "running"):
                stale.append(f"{rel} is {states[rel].state}")
        if stale:
            states[target].state = "stale"
            states[target].detail = "; ".join(stale[:3])
    for main in MAIN_OUTPUTS:
        if not any(t == main or t.startswith(main + "/") for t in states):
            states[main] = StageState(main, "missing")

    def order(s: StageState) -> tuple[int, str]:
        top = s.path.split("/")[0]
        return (MAIN_OUTPUTS.index(top) if top in MAIN_OUTPUTS else -1, s.path)

    return sorted(states.values(), key=order)


def status_rows(run_dir: str) -> list[dict[str, Any]]:
    """``run_status`` as plain dicts (for JSON)."""
    return [asdict(s) for s in run_status(run_dir)]
