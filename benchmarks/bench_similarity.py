"""Caption-to-synset similarity throughput: our similarity stage core vs the reference approach, same captions.

The reference approach (the authors' scripts): captions in corpus order, batches of 64; in every batch the 64
captions *and* the synset texts of their 64 classes are encoded (synset texts re-encoded batch after batch), each
batch padded to its longest member. Ours: synset texts encoded once, distinct captions encoded once, sorted by
length into large batches (``laionet.selection.similarity.score_part``). Both use the same model, device and
threads; the script checks that both give the same similarities, then prints captions/s and the ratio.

    .venv/bin/python benchmarks/bench_similarity.py [--encoder minilm] [--captions 4000] [--device cpu]
    python benchmarks/bench_similarity.py --encoder clip --device cuda --captions 200000 --precisions fp32,fp16
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_matching import make_captions

from laionet.selection.encoders import OpenClipTextEncoder, create_text_encoder
from laionet.selection.similarity import score_part
from laionet.text.catalog import build_catalog, load_class_set
from laionet.text.lemmas import build_lemma_map
from laionet.text.matcher import LemmaMatcher


def matched_captions(n: int, seed: int = 0) -> tuple[pa.Table, list[str]]:
    """``n`` LAION-like captions that each match exactly one ImageNet class (key, text, wnids), + the catalog's
    synset texts by class."""
    catalog = build_catalog(load_class_set("imagenet1k"))
    table = build_lemma_map(catalog, "default").table
    matcher = LemmaMatcher(table, "default")
    texts: list[str] = []
    wnids: list[list[str]] = []
    seed_ = seed
    while len(texts) < n:
        batch = make_captions(20 * n, table, seed=seed_)
        found = matcher.match(pa.array(batch))
        for row, w in zip(found.rows.tolist(), found.wnids.to_pylist(), strict=True):
            if len(w) == 1 and len(texts) < n:
                texts.append(batch[row])
                wnids.append(w)
        seed_ += 1
    random.Random(seed).shuffle(order := list(range(n)))
    texts, wnids = [texts[i] for i in order], [wnids[i] for i in order]
    matches = pa.table({"key": [str(i) for i in range(n)], "text": texts, "wnids": wnids})
    return matches, catalog


def _reference_encode(encoder, texts: list[str]) -> np.ndarray:
    """One batch the way the reference scripts did it: the library's plain call, padded to the batch's longest
    member (sentence-transformers) or to the full 77-token context (open_clip)."""
    if isinstance(encoder, OpenClipTextEncoder):
        with torch.inference_mode():
            tokens = encoder.tokenizer(texts).to(encoder.device)
            return torch.nn.functional.normalize(encoder.model.encode_text(tokens), dim=-1).float().cpu().numpy()
    return encoder.model.encode(texts, batch_size=len(texts), normalize_embeddings=True)


def reference(encoder, texts: list[str], synset_texts: list[str], batch: int = 64) -> np.ndarray:
    """Corpus order, batches of 64, each batch's synset texts encoded with it."""
    out = np.empty(len(texts), dtype=np.float32)
    for start in range(0, len(texts), batch):
        a = _reference_encode(encoder, texts[start : start + batch])
        b = _reference_encode(encoder, synset_texts[start : start + batch])
        out[start : start + batch] = np.einsum("md,md->m", a, b)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="minilm", help="encoder spec: minilm, mpnet, clip, st:..., open_clip:...")
    parser.add_argument("--captions", type=int, default=4000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="our encoder's precisions to measure (on a GPU: fp32,fp16)"
    )
    args = parser.parse_args()

    matches, catalog = matched_captions(args.captions)
    encoder = create_text_encoder(args.encoder, device=args.device, precision="fp32")  # the reference ran fp32
    wnid_index = {w: i for i, w in enumerate(catalog["wnid"])}
    synset_of = dict(zip(catalog["wnid"], catalog["synset_text"], strict=True))
    texts = matches.column("text").to_pylist()
    per_caption_synsets = [synset_of[w[0]] for w in matches.column("wnids").to_pylist()]
    encoder.encode(texts[:64])  # warm-up

    t = time.perf_counter()
    expected = reference(encoder, texts, per_caption_synsets)
    ref_rate = len(texts) / (time.perf_counter() - t)

    rows = []
    for precision in args.precisions.split(","):
        ours = encoder if precision == "fp32" else create_text_encoder(args.encoder, args.device, precision=precision)
        ours.encode(texts[:64])  # warm-up
        t = time.perf_counter()
        synset_emb = ours.encode(catalog["synset_text"].tolist())  # all 1000 classes, once per encoder
        t_synsets = time.perf_counter() - t
        scored, _ = score_part(matches, ours, synset_emb, wnid_index)
        elapsed = time.perf_counter() - t
        err = float(np.abs(scored.column("similarity").to_numpy() - expected).max())
        rows.append((precision, len(texts) / elapsed, len(texts) / (elapsed - t_synsets), err))

    lengths = [len(x) for x in texts]
    print(
        f"encoder {encoder.spec} on {args.device} ({os.cpu_count()} cores); {len(texts):,} captions, "
        f"{np.mean(lengths):.0f} chars on average (max {max(lengths)})"
    )
    print(f"{'approach':40s} {'captions/s':>11s} {'ratio':>7s} {'w/o synsets':>12s} {'ratio':>7s} {'max |Δsim|':>11s}")
    print(f"{'reference (batch 64, synsets re-encoded)':40s} {ref_rate:11,.1f} {1:6.2f}x {'':12s} {'':7s} {0:11.1e}")
    for precision, rate, rate_steady, err in rows:
        label = f"ours, {precision} (1000 synsets once, sorted)"
        ratios = f"{rate / ref_rate:6.2f}x {rate_steady:12,.1f} {rate_steady / ref_rate:6.2f}x"
        print(f"{label:40s} {rate:11,.1f} {ratios} {err:11.1e}")
    print("('w/o synsets' leaves out encoding the 1000 synset texts, a one-off per encoder at corpus scale)")


if __name__ == "__main__":
    main()
