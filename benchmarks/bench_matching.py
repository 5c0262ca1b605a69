"""Caption-matching throughput: our Aho-Corasick matcher vs the reference rule as a plain Python loop.

Builds the ImageNet-1k catalog and both lemma maps from WordNet, generates LAION-like captions (web vocabulary,
mixed case, punctuation, some non-ASCII; ~5% mention an ImageNet lemma, as 21M of LAION-400M's 414M do), then
prints, in one run and on the same captions:
  * captions/s of the reference loop (every lemma tested against every caption) on a sample,
  * captions/s of ``LemmaMatcher`` (core, in memory) in paper and default mode, and the ratio,
  * captions/s of the whole stage (``run_match``: parquet read, match, parquet write) per mode,
  * the same on two crowded sets (every caption names 2-6 lemmas): default-form lemmas, 30% title-cased, which
    case-sensitive paper mode partly misses (default mode finds ~1.3x its matches), and paper-form lemmas verbatim,
    which both modes find (the same work),
  * peak RSS of the stage in a child process at two corpus sizes (memory must not grow with corpus size),
  * the projection for LAION-400M (413,871,335 captions) on 16 cores.

    .venv/bin/python benchmarks/bench_matching.py [--captions 1000000] [--baseline 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from laionet.text.catalog import build_catalog, load_class_set
from laionet.text.lemmas import build_lemma_map
from laionet.text.match import MatchConfig, run_match
from laionet.text.matcher import LemmaMatcher, reference_paper_match
from laionet.text.wordnet import open_wordnet

LAION_400M = 413_871_335
_WEB = (
    "free shipping new sale buy cheap best photo image stock vector illustration design women men kids vintage "
    "print poster wall art home decor black white red blue green gold silver size small large set pack of for "
    "with and the a in on by from to at 2019 2020 hd 4k wallpaper background icon logo style fashion summer winter"
)
WEB_WORDS = _WEB.split(" ")
ACCENTED = ["café", "über", "niño", "façade", "résumé", "東京", "Москва", "größe", "été", "naïve"]


def make_captions(
    n: int, lemma_map: pd.DataFrame, seed: int = 0, crowded: bool = False, insert: list[str] | None = None
) -> list[str]:
    """LAION-like captions: 4-16 words, ~5% containing an ImageNet lemma in some casing and punctuation
    (``crowded``: every caption gets 2-6 lemmas, the case where default mode's leftmost-longest resolution works).

    ``insert``: lemmas to insert verbatim instead of the map's own, never re-cased (and the caption never
    capitalised), e.g. paper-mode lemmas, which paper mode then finds as often as default mode does.

    The filler vocabulary (every 50th WordNet noun + web words) excludes words that contain a lemma, so the
    match rate is set by the insertion rate.
    """
    rng = random.Random(seed)
    wn = open_wordnet()
    vocab = [w.replace("_", " ") for w in list(wn.all_lemma_names(pos="n"))[::50]] + WEB_WORDS * 20
    hits = LemmaMatcher(lemma_map, "default").match(pa.array(vocab)).rows
    vocab = [w for i, w in enumerate(vocab) if i not in set(hits.tolist())]
    lemmas = insert or lemma_map["lemma"].tolist()
    recase = insert is None
    seps = [" "] * 12 + [", ", " - ", ": ", " | ", "! ", ". ", " (", ") ", "/"]
    out = []
    for _ in range(n):
        words = rng.choices(vocab, k=rng.randint(4, 16))
        for _ in range(rng.randint(2, 6) if crowded else int(rng.random() < 0.05)):
            lemma = rng.choice(lemmas)
            words.insert(rng.randrange(len(words) + 1), lemma.title() if recase and rng.random() < 0.3 else lemma)
        if rng.random() < 0.1:
            words.append(rng.choice(ACCENTED))
        text = "".join(w + rng.choice(seps) for w in words).strip()
        out.append(text.capitalize() if recase and rng.random() < 0.5 else text)
    return out


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def core_rate(matcher: LemmaMatcher, array: pa.Array, repeats: int = 1) -> tuple[float, int, int]:
    """Captions/s of the in-memory matcher over ``array`` in record batches of 65,536 (the best of ``repeats``
    passes), the matched captions and the matched (caption, lemma) pairs."""
    matcher.match(array.slice(0, 10_000))  # warm-up (first-call allocations)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        found = [matcher.match(array.slice(start, 65_536)) for start in range(0, len(array), 65_536)]
        best = min(best, time.perf_counter() - t)
    return rate(len(array), best), sum(len(f.rows) for f in found), sum(len(f.lemmas.flatten()) for f in found)


def write_part(path: Path, captions: pa.Array) -> None:
    """A LAION-like metadata part holding ``captions``."""
    n = len(captions)
    pq.write_table(
        pa.table(
            {
                "URL": pa.array([f"http://example.com/{i}.jpg" for i in range(n)]),
                "TEXT": captions,
                "NSFW": pa.array(["UNLIKELY"] * n),
                "WIDTH": pa.array([256] * n, pa.int64()),
                "HEIGHT": pa.array([256] * n, pa.int64()),
                "similarity": pa.array([0.31] * n, pa.float64()),
            }
        ),
        path,
        row_group_size=131_072,  # the reader holds one row group at a time: memory follows this, not part size
    )


def child_peak_rss(part: str, lemma_map: str, out: str, mode: str) -> float:
    """Run the stage in a fresh interpreter; return its peak RSS in MiB (VmHWM: ru_maxrss would include the
    forked parent's memory)."""
    code = (
        "from laionet.text.match import run_match, MatchConfig;"
        f"run_match({part!r}, {out!r}, {lemma_map!r}, MatchConfig(mode={mode!r}));"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=1_000_000, help="captions matched by our implementation")
    parser.add_argument("--baseline", type=int, default=20_000, help="captions run through the reference loop")
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process peak-RSS measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode, core and stage (the best counts)")
    args = parser.parse_args()

    catalog = build_catalog(load_class_set("imagenet1k"))
    maps = {policy: build_lemma_map(catalog, policy).table for policy in ("paper", "default")}
    t = time.perf_counter()
    captions = make_captions(args.captions, maps["default"])
    print(f"generated {len(captions):,} captions in {time.perf_counter() - t:.1f} s; e.g. {captions[:2]}")
    array = pa.array(captions, type=pa.string())

    sample = captions[: args.baseline]
    t = time.perf_counter()
    expected = reference_paper_match(sample, maps["paper"])
    baseline = rate(len(sample), time.perf_counter() - t)

    size = max(20_000, args.captions // 4)
    # two crowded sets: default-form lemmas, 30% title-cased (paper mode, case-sensitive, misses those: default mode
    # finds ~1.3x the matches), and paper-form lemmas verbatim (both modes find them: the same work)
    crowded = {
        "crowded": pa.array(make_captions(size, maps["default"], seed=1, crowded=True)),
        "crowded, paper forms": pa.array(
            make_captions(size, maps["default"], seed=1, crowded=True, insert=maps["paper"]["lemma"].tolist())
        ),
    }
    crowded_core: dict[str, dict[str, tuple[float, int, int]]] = {name: {} for name in crowded}
    rows = []
    for mode in ("paper", "default"):
        matcher = LemmaMatcher(maps[mode], mode)  # type: ignore[arg-type]
        if mode == "paper":
            got = matcher.match(pa.array(sample))
            flat = [[] for _ in sample]
            for r, w in zip(got.rows.tolist(), got.wnids.to_pylist(), strict=True):
                flat[r] = w
            assert flat == expected, "paper mode disagrees with the reference loop"
        core, matched, _ = core_rate(matcher, array, args.repeats)
        rows.append((mode, core, matched))
        for name, texts in crowded.items():
            crowded_core[name][mode] = core_rate(matcher, texts, args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "part-00000.parquet"
        n = len(captions)
        write_part(part, array)
        sources = [(part, n, "out")]
        for i, (name, texts) in enumerate(crowded.items()):
            source = Path(tmp) / f"crowded{i}" / "part-00000.parquet"
            source.parent.mkdir()
            write_part(source, texts)
            sources.append((source, len(texts), name))
        stage: dict[str, dict[str, float]] = {name: {"paper": 0.0, "default": 0.0} for _, _, name in sources}
        for mode in ("paper", "default"):
            maps[mode].to_parquet(Path(tmp) / f"lemmas_{mode}.parquet")
        # each mode's best of --repeats whole-stage runs, the modes alternating (and their order each round), each
        # into a new output directory (a complete one would be skipped): one run of a mode is short and noisy
        for round_ in range(args.repeats):
            for mode in ("paper", "default") if round_ % 2 == 0 else ("default", "paper"):
                lemma_map = str(Path(tmp) / f"lemmas_{mode}.parquet")
                config = MatchConfig(mode=mode)  # type: ignore[arg-type]
                for i, (source, count, name) in enumerate(sources):
                    t = time.perf_counter()
                    run_match(str(source), str(Path(tmp) / f"stage{i}_{mode}_{round_}"), lemma_map, config)
                    stage[name][mode] = max(stage[name][mode], rate(count, time.perf_counter() - t))

        memory = {}
        if not args.no_memory:
            small = Path(tmp) / "small" / "part-00000.parquet"
            small.parent.mkdir()
            pq.write_table(pq.read_table(part).slice(0, n // 4), small, row_group_size=131_072)
            lemma_map = str(Path(tmp) / "lemmas_default.parquet")
            memory = {
                f"{n // 4:,} rows": child_peak_rss(str(small), lemma_map, str(Path(tmp) / "m1"), "default"),
                f"{n:,} rows": child_peak_rss(str(part), lemma_map, str(Path(tmp) / "m2"), "default"),
            }

    print()
    n_lemmas = len(maps["paper"])
    print(f"reference loop (paper rule, {n_lemmas} lemmas, {len(sample):,} captions): {baseline:,.0f} captions/s")
    print(f"{'mode':8s} {'core captions/s':>16s} {'vs reference':>13s} {'stage captions/s':>17s} {'matched':>9s}")
    for mode, core, matched in rows:
        print(f"{mode:8s} {core:16,.0f} {core / baseline:12,.0f}x {stage['out'][mode]:17,.0f} {matched:9,d}")
    for name, texts in crowded.items():
        print(f"{name} (2-6 lemmas each, {len(texts):,}): core / stage captions/s, matched (caption, lemma) pairs")
        for mode in ("paper", "default"):
            core, _, pairs = crowded_core[name][mode]
            print(f"{mode:8s} {core:16,.0f} {stage[name][mode]:17,.0f} {pairs:10,d}")
    print("default mode's cost over paper mode's (paper / default captions/s):")
    for name, core_rates in [("LAION-like", {m: r for m, r, _ in rows})] + [
        (name, {m: r[0] for m, r in crowded_core[name].items()}) for name in crowded
    ]:
        key = "out" if name == "LAION-like" else name
        print(
            f"  {name}: core {core_rates['paper'] / core_rates['default']:.2f}x, "
            f"stage {stage[key]['paper'] / stage[key]['default']:.2f}x"
        )
    for label, mib in memory.items():
        print(f"peak RSS of the stage (child process), {label}: {mib:,.0f} MiB")
    slowest = min(stage["out"].values())
    hours = LAION_400M / (slowest * 16) / 3600
    print(f"projection, LAION-400M on 16 cores (one part per core, slowest mode's stage rate): {hours * 60:,.1f} min")
    print(f"python {sys.version.split()[0]}, pyarrow {pa.__version__}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
