"""The killed share of a `mutmut run` (`make mutate`), per mutated module and in all, from mutants/**/*.meta.

A mutant is killed when its test run failed (any exit code but 0 = survived, 5 = no test ran it, 24/-24/152 = timed
out, 33/34 = skipped, none = not run yet).

    .venv/bin/python scripts/mutation_score.py [mutants]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

NOT_KILLED = {0: "survived", 5: "no tests", 24: "timeout", -24: "timeout", 152: "timeout", 33: "skipped", 34: "skipped"}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
    total: Counter[str] = Counter()
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter("not run" if c is None else NOT_KILLED.get(c, "killed") for c in codes.values())
        total.update(counts)
        module = meta.relative_to(root).as_posix().removesuffix(".meta")
        scored = sum(counts.values()) - counts["not run"]
        share = counts["killed"] / scored if scored else float("nan")
        print(f"{module:40s} {counts['killed']:5d} killed of {scored:5d} ({share:6.1%})  {dict(counts)}")
    scored = sum(total.values()) - total["not run"]
    share = total["killed"] / scored if scored else float("nan")
    print(f"{'all':40s} {total['killed']:5d} killed of {scored:5d} ({share:6.1%})  {dict(total)}")


if __name__ == "__main__":
    main()
