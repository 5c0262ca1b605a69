"""The package layout holds: no import cycle between modules, heavy libraries stay out of import time, the CLI
command modules import only ``laionet.cli.common`` of the CLI, and every stage subpackage documents itself."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import laionet

ROOT = Path(laionet.__file__).parent
STAGE_PACKAGES = (
    "core",
    "text",
    "selection",
    "images",
    "inference",
    "evaluation",
    "diagnostics",
    "retrieval",
    "report",
    "export",
    "cli",
)
# libraries that no module may load at import time (each is imported inside the function that needs it)
HEAVY = ("open_clip", "timm", "sentence_transformers", "img2dataset", "matplotlib", "rapidocr_onnxruntime", "openvino",
         "prefect")  # fmt: skip
# the only modules that need torch at import time: the inference engine (driver, streaming pass, model runner) and its
# decoding (torch tensors throughout)
TORCH_AT_IMPORT = {
    "laionet.inference.batches",
    "laionet.inference.engine",
    "laionet.inference.runner",
    "laionet.inference.stream",
}


def _modules() -> list[str]:
    names = ["laionet"] + [m.name for m in pkgutil.walk_packages([str(ROOT)], "laionet.")]
    return sorted(n for n in names if n != "laionet.__main__")  # __main__ runs the CLI when imported


def _module_file(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    package = ROOT / rel / "__init__.py"
    return package if package.exists() else (ROOT / rel).with_suffix(".py")


def _import_time_edges(name: str, known: set[str]) -> set[str]:
    """Modules of ``laionet`` that ``name`` imports when it is imported: module-level statements only (imports inside
    functions run later), ``from a import b`` counted as ``a.b`` when that is a module, else ``a``; the packages above
    each imported module are imported too."""
    tree = ast.parse(_module_file(name).read_text())
    targets: set[str] = set()
    for node in tree.body:  # module level only
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                targets.add(full if full in known else node.module)
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and prefix != name and not name.startswith(prefix + "."):
                edges.add(prefix)
    return edges


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    known = set(_modules())
    graph = {name: _import_time_edges(name, known) for name in known}
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph) or [])}"
    # the CLI: command modules import nothing of the CLI but its helpers; only the package imports them
    for name in known:
        if name.startswith("laionet.cli.") and name != "laionet.cli.common":
            cli_edges = {e for e in graph[name] if e.startswith("laionet.cli")}
            assert cli_edges <= {"laionet.cli.common"}, f"{name} imports {cli_edges}"
    assert not {e for e in graph["laionet.cli.common"] if e.startswith("laionet.cli")}


def test_every_stage_package_documents_its_stage() -> None:
    for package in STAGE_PACKAGES:
        doc = importlib.import_module(f"laionet.{package}").__doc__
        assert doc and len(doc.strip().splitlines()) >= 2, f"laionet.{package} needs a docstring of a few lines"
    flat = sorted(p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert flat == ["demo.py"], f"modules outside the stage subpackages: {flat}"


_PROBE = "import importlib, json, sys; importlib.import_module({name!r}); print(json.dumps(sorted(sys.modules)))"


def _loaded_by(name: str) -> tuple[str, set[str] | str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(name=name)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode:
        return name, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
    return name, set(json.loads(result.stdout))


def test_every_module_imports_alone_without_heavy_libraries() -> None:
    """Each module in a fresh interpreter: it imports on its own (a cycle that bites at import time fails here) and
    loads no model/OCR/plotting/orchestration library; torch only where inference needs it."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(_loaded_by, _modules()))
    errors = {name: r for name, r in results.items() if isinstance(r, str)}
    assert not errors, errors
    for name, loaded in results.items():
        assert isinstance(loaded, set)
        heavy = {lib for lib in HEAVY if lib in loaded}
        assert not heavy, f"importing {name} loads {sorted(heavy)}"
        if name not in TORCH_AT_IMPORT:
            assert "torch" not in loaded, f"importing {name} loads torch"
        if name.startswith("laionet.cli"):  # `laionet --help` stays fast: no dataframe library either
            assert "pandas" not in loaded, f"importing {name} loads pandas"


@pytest.mark.parametrize("argv", [["--help"], ["infer", "--help"]])
def test_cli_help_loads_no_model_library(argv: list[str]) -> None:
    code = (
        "import sys\nfrom laionet.cli import app\n"
        f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'pandas' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False False"
