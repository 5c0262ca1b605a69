"""Checks of the machine a run needs, each with a one-line fix: WordNet, torch and its devices, the Prefect API
(server, work pool, the ``gpu`` concurrency limit), disk space under the run directory, and the optional engines.

Talks to the Prefect API over plain HTTP (the library imports no Prefect); every check answers, none raises.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    """One check: its name, whether it passed (None: optional and absent), what was found, and the fix."""

    name: str
    ok: bool | None
    found: str
    fix: str = ""


def _wordnet() -> Check:
    try:
        from laionet.text.wordnet import open_wordnet

        wn = open_wordnet()
        return Check("WordNet", True, f"WordNet {wn.get_version()} ({len(list(wn.all_synsets('n')))} noun synsets)")
    except Exception as exc:
        return Check("WordNet", False, str(exc)[:200], "laionet wordnet install (Debian: apt-get install wordnet-base)")


def _torch() -> list[Check]:
    if importlib.util.find_spec("torch") is None:
        return [Check("torch", False, "not installed", "make setup (installs torch from scripts/constraints.txt)")]
    import torch

    checks = [Check("torch", True, f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        checks.append(Check("CUDA", True, f"{len(names)} device(s): {', '.join(names)}"))
    else:
        checks.append(
            Check(
                "CUDA",
                None,
                "no CUDA device: inference runs on the CPU (slow at LAION scale)",
                "run on a GPU worker for LAION-scale inference",
            )
        )
    return checks


def _api(url: str, path: str, body: dict[str, object] | None = None, timeout: float = 3.0) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url.rstrip('/')}/{path.lstrip('/')}",
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST" if data else "GET",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _prefect(pool: str, limit_tag: str) -> list[Check]:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        found = "PREFECT_API_URL not set: flows use an ephemeral local API (fine on one machine)"
        fix = "for deployments: prefect server start, then export PREFECT_API_URL=http://HOST:4200/api"
        return [Check("Prefect API", None, found, fix)]
    try:
        _api(url, "health")
    except Exception as exc:
        return [Check("Prefect API", False, f"{url} does not answer ({exc})", "prefect server start (or fix the URL)")]
    checks = [Check("Prefect API", True, f"{url} answers")]
    try:
        pools = _api(url, "work_pools/filter", {"limit": 200, "offset": 0})
        names = [p.get("name") for p in pools] if isinstance(pools, list) else []
        checks.append(
            Check(
                f"work pool {pool}",
                pool in names,
                f"pools: {', '.join(map(str, names)) or 'none'}",
                f"prefect work-pool create {pool} --type process",
            )
        )
    except Exception as exc:
        checks.append(
            Check(f"work pool {pool}", False, str(exc)[:200], f"prefect work-pool create {pool} --type process")
        )
    try:
        limits = _api(url, "concurrency_limits/filter", {"limit": 200, "offset": 0})
        tags = {c.get("tag"): c.get("concurrency_limit") for c in limits} if isinstance(limits, list) else {}
        found = f"limit {tags[limit_tag]}" if limit_tag in tags else "no limit"
        checks.append(
            Check(
                f"concurrency limit '{limit_tag}'",
                limit_tag in tags,
                found,
                f"prefect concurrency-limit create {limit_tag} 1  (one slot per GPU)",
            )
        )
    except Exception as exc:
        checks.append(Check(f"concurrency limit '{limit_tag}'", False, str(exc)[:200], ""))
    return checks


def _disk(run_dir: str, need_gb: float) -> Check:
    path = Path(run_dir).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free / 2**30
    return Check(
        f"disk under {run_dir}",
        free >= need_gb,
        f"{free:,.1f} GiB free",
        f"free space or choose another --run-dir (the demo needs ~{need_gb:g} GiB)",
    )


OPTIONAL = {
    "ray": ("Ray (multi-machine runs)", "pip install 'ray[default]' prefect-ray"),
    "faiss": ("faiss (nearest-caption search)", "pip install faiss-cpu  (or faiss-gpu-cu12)"),
    "rapidocr_onnxruntime": ("RapidOCR (OCR filter)", "make setup (installs rapidocr-onnxruntime --no-deps)"),
    "onnxruntime": ("ONNX Runtime (OCR models)", "pip install onnxruntime"),
    "img2dataset": ("img2dataset (download)", "make setup"),
    "open_clip": ("open_clip (CLIP encoders, zero-shot)", "make setup"),
    "timm": ("timm (classifiers)", "make setup"),
}


def run_checks(run_dir: str = "runs", pool: str = "gpu", limit_tag: str = "gpu", need_gb: float = 2.0) -> list[Check]:
    """Every check, in order; each answers (an exception inside a check becomes a failed check)."""
    checks = [_wordnet(), *_torch(), *_prefect(pool, limit_tag), _disk(run_dir, need_gb)]
    for module, (label, fix) in OPTIONAL.items():
        present = importlib.util.find_spec(module) is not None
        checks.append(Check(label, True if present else None, "installed" if present else "not installed", fix))
    return checks
