"""``python -m flows demo [--run-dir runs/demo] [--image-limit N]``: the offline demo flow (what ``make demo`` runs).

A package's ``__main__`` on purpose: the spawn start method of multiprocessing imports the parent's main module again
in every child process it starts, unless that module is a ``__main__``. Started as ``python -m flows.demo``, each
process a stage spawns (the download's img2dataset processes, the OCR workers, the SVG render workers) first imported
Prefect, torch and every flow, for nothing: `import flows.reproduce` alone takes 3.9 s and 772 MB (peak RSS, 2 cores).
"""

from __future__ import annotations

import sys

from laionet.core.runtime import apply_prefect_defaults

apply_prefect_defaults()  # before Prefect is imported: `laionet run`'s settings (laionet.core.runtime.PREFECT_DEFAULTS)

from flows import demo  # noqa: E402

if len(sys.argv) < 2 or sys.argv[1] != "demo":
    given = " ".join(sys.argv[1:]) or "nothing"
    print(f"usage: python -m flows demo [--run-dir DIR] [--image-limit N]  (got {given})", file=sys.stderr)
    sys.exit(2)
sys.argv = ["python -m flows demo", *sys.argv[2:]]  # argparse's program name in --help
if not {"-h", "--help"} & set(sys.argv):
    api_ready = demo.start_ephemeral_api()
    import flows.reproduce  # noqa: F401 - the demo flow's own import, done while the API process boots

    api_ready()
demo.main()
