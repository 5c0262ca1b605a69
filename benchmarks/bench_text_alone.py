"""Section 4.2 (text alone) speed: scoring and encoding, ours vs the straightforward way, in one run.

Scoring: for ``--captions`` captions and ``--classes`` classes (random ``--dim``-d unit vectors, the CLIP text
tower's 512 by default), ours (``laionet.diagnostics.text_alone.own_class_stats``: one caption × class matrix product
per batch of ``--batch``) against a per-caption loop (one caption's similarities to every class, then the count) on
the first ``--baseline`` captions; prints both rates, the ratio, and the peak size of one batch's similarity matrix.
Encoding (``--encode N``): the offline MiniLM text encoder's captions/s on this machine for N generated captions
(the end-to-end rate on a CPU; CLIP's text tower on a GPU is the production path).

    .venv/bin/python benchmarks/bench_text_alone.py [--captions 443798] [--classes 1000] [--encode 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from laionet.diagnostics.text_alone import own_class_stats


def naive(captions: np.ndarray, own: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = np.empty(len(captions))
    for i in range(len(captions)):
        sims = classes @ captions[i]
        out[i] = (sims > sims[own[i]]).sum() / (len(classes) - 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=443_798)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--baseline", type=int, default=20_000)
    parser.add_argument("--encode", type=int, default=2000, help="captions to encode with MiniLM (0: skip)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    classes = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    start = time.perf_counter()  # includes drawing the random embeddings: an upper bound on the scoring time
    checked = None
    for begin in range(0, args.captions, args.batch):
        n = min(args.batch, args.captions - begin)
        emb = rng.normal(size=(n, args.dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        own = rng.integers(0, args.classes, size=n)
        _, _, p = own_class_stats(emb, own, classes)
        if checked is None:  # the same numbers as the loop, on the first batch
            checked = np.allclose(p, naive(emb, own, classes))
    ours = args.captions / (time.perf_counter() - start)
    emb = rng.normal(size=(args.baseline, args.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    own = rng.integers(0, args.classes, size=args.baseline)
    start = time.perf_counter()
    naive(emb, own, classes)
    loop = args.baseline / (time.perf_counter() - start)
    print(f"scoring {args.captions:,} captions x {args.classes:,} classes ({args.dim}-d), batch {args.batch}")
    print(f"  ours (one matrix product per batch): {ours:12,.0f} captions/s  ({args.captions / ours:.1f} s in all)")
    print(f"  per-caption loop:                    {loop:12,.0f} captions/s  ({args.captions / loop:.1f} s in all)")
    print(f"  ratio: {ours / loop:.1f}x; same shares as the loop: {checked}; "
          f"one batch's similarity matrix: {args.batch * args.classes * 4 / 2**20:.0f} MiB")  # fmt: skip
    if args.encode:
        from laionet.selection.encoders import create_text_encoder

        words = ["a", "lion", "at", "dusk", "photo", "of", "my", "dog", "red", "car", "lemon", "tart", "on", "the"]
        texts = [" ".join(rng.choice(words, size=rng.integers(4, 16))) + f" {i}" for i in range(args.encode)]
        encoder = create_text_encoder("minilm", device="cpu")
        encoder.encode(texts[:64])  # warm-up
        start = time.perf_counter()
        encoder.encode(texts)
        rate = args.encode / (time.perf_counter() - start)
        minutes = 443_798 / rate / 60
        print(f"MiniLM encoding on this CPU: {rate:,.0f} captions/s -> {minutes:.1f} min for ImageNet-Captions' "
              f"443,798 texts (encoding dominates; scoring adds {443_798 / ours:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
