"""Intra-class similarity bootstrap speed: our vectorised Gram-matrix resampling vs a per-resample loop.

For ``--classes`` classes of ``--images`` images (random 512-d unit vectors) in two datasets, ``--boot`` resamples
of images per class: ours (``laionet.evaluation.stats.compare_bootstrap``) against the straightforward way (for
every resample, index the images and recompute all pairwise cosines) on the first ``--baseline-classes`` classes;
prints both rates and the ratio, and the whole run's wall time.

    .venv/bin/python benchmarks/bench_stats.py [--classes 1000] [--images 100] [--boot 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from laionet.evaluation.stats import compare_bootstrap


def naive_class(emb_a: np.ndarray, emb_b: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        means = []
        for emb in (emb_a, emb_b):
            idx = rng.integers(0, len(emb), size=len(emb))
            sample = emb[idx]
            gram = sample @ sample.T
            iu = np.triu_indices(len(sample), k=1)
            distinct = idx[iu[0]] != idx[iu[1]]
            means.append(gram[iu][distinct].mean())
        diffs[b] = means[0] - means[1]
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--baseline-classes", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(args.classes), args.images)

    def unit(n: int) -> np.ndarray:
        x = rng.normal(size=(n, 512)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    emb_a, emb_b = unit(len(labels)), unit(len(labels))
    t = time.perf_counter()
    table = compare_bootstrap(emb_a, labels, emb_b, labels, cap=args.images, n_boot=args.boot, seed=0)
    ours = time.perf_counter() - t
    k = args.baseline_classes
    t = time.perf_counter()
    for c in range(k):
        sl = slice(c * args.images, (c + 1) * args.images)
        naive_class(emb_a[sl].astype(np.float64), emb_b[sl].astype(np.float64), args.boot, rng)
    naive = (time.perf_counter() - t) / k
    per_class = ours / len(table)
    print(f"{args.classes} classes x {args.images} images x 2 datasets, {args.boot} resamples of images per class")
    print(f"ours (all classes):      {ours:8.2f} s  ({per_class * 1000:7.2f} ms per class)")
    print(f"per-resample loop ({k} classes): {naive * 1000:7.1f} ms per class -> {naive * len(table):,.0f} s projected")
    print(f"ratio: {naive / per_class:.1f}x")


if __name__ == "__main__":
    main()
