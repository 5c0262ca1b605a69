"""Coverage of the accuracy intervals: simulated datasets with a known true mean recall, three class-size regimes.

For each regime (164 classes of 1-2 images: LAIONet's tail; 900 classes of 5-60; 200 classes of 50: ImageNet val),
``--trials`` datasets are drawn: true per-class recalls from Beta(2.5, 0.8) (recall-like: mean 0.76, many near 1),
then each class's correct count from Binomial(n, recall). Every interval method of ``laionet.evaluation.metrics`` is
computed on each dataset — ``paper`` (the reference's Wilson combination), ``binomial`` (the former bootstrap) and
``jeffreys`` (the default) — and the share of intervals holding the true mean recall (nominal 95 %) and their mean
width are printed, with the same for ``recall_difference`` (Newcombe default vs binomial bootstrap; A 1-10 images,
B 50 per class).

    .venv/bin/python benchmarks/bench_coverage.py [--trials 400] [--boot 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from laionet.evaluation.metrics import bootstrap_interval, paper_interval, recall_difference

REGIMES = {
    "164 classes x 1-2 images": lambda rng: rng.integers(1, 3, size=164),
    "900 classes x 5-60 images": lambda rng: rng.integers(5, 61, size=900),
    "200 classes x 50 images": lambda rng: np.full(200, 50),
}
METHODS = ("paper", "binomial", "jeffreys")


def accuracy_coverage(sizes, trials: int, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """{method: (coverage, mean width)} of the equally-weighted accuracy interval over ``trials`` datasets."""
    rng = np.random.default_rng(seed)
    n = sizes(rng)
    hits, widths = dict.fromkeys(METHODS, 0), dict.fromkeys(METHODS, 0.0)
    for t in range(trials):
        true = rng.beta(2.5, 0.8, size=len(n))
        correct = rng.binomial(n, true)
        table = pd.DataFrame({"class": range(len(n)), "n": n, "correct@1": correct, "recall@1": correct / n})
        for method in METHODS:
            if method == "paper":
                _, lo, hi = paper_interval(table, 1)
            else:
                _, lo, hi = bootstrap_interval(table, 1, n_boot=n_boot, seed=t, method=method)  # type: ignore[arg-type]
            hits[method] += lo <= true.mean() <= hi
            widths[method] += hi - lo
    return {m: (hits[m] / trials, widths[m] / trials) for m in METHODS}


def difference_coverage(classes: int, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """{method: (coverage, mean width)} of per-class recall differences, each class an independent trial."""
    rng = np.random.default_rng(seed)
    na, nb = rng.choice([1, 2, 3, 5, 10], size=classes), np.full(classes, 50)
    pa, pb = rng.beta(2.5, 0.8, size=classes), rng.beta(2.5, 0.8, size=classes)
    ca, cb = rng.binomial(na, pa), rng.binomial(nb, pb)
    a = pd.DataFrame({"class": range(classes), "n": na, "correct@1": ca, "recall@1": ca / na})
    b = pd.DataFrame({"class": range(classes), "n": nb, "correct@1": cb, "recall@1": cb / nb})
    out = {}
    for method in ("newcombe", "bootstrap"):
        table = recall_difference(a, b, 1, n_boot=n_boot, method=method)  # type: ignore[arg-type]
        held = (table["lower"] <= pa - pb) & (pa - pb <= table["upper"])
        out[method] = (float(held.mean()), float((table["upper"] - table["lower"]).mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    print("accuracy interval, nominal 95 %: coverage of the true mean recall / mean width")
    print(f"{'regime':<28}" + "".join(f"{m:>22}" for m in METHODS))
    for name, sizes in REGIMES.items():
        result = accuracy_coverage(sizes, args.trials, args.boot, args.seed)
        print(f"{name:<28}" + "".join(f"{c:>13.1%} {w:>8.4f}" for c, w in result.values()))
    print("\nper-class recall difference (A: 1-10 images, B: 50), nominal 95 %: coverage / mean width")
    for method, (c, w) in difference_coverage(20_000, args.boot, args.seed).items():
        print(f"{method:<28}{c:>13.1%} {w:>8.4f}")
    elapsed = time.perf_counter() - start
    print(f"\n{args.trials} trials per regime, {args.boot} resamples, seed {args.seed}: {elapsed:.0f} s")


if __name__ == "__main__":
    main()
