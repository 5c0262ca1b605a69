"""OCR throughput and decisions: the fast engine against the library's full pipeline, side by side in one run.

Two image sets: the demo's clip art (the shards of a finished demo run, ``--shards``, with its catalog's class names)
and generated text images (``--generated`` of them: class names and other words drawn with PIL on plain, gradient,
noisy and clip-art-like backgrounds, small text included, a fifth without text). Each set is read by both engines in
alternating chunks (so a load that comes and goes on a shared machine falls on both), and the script prints each
engine's images/s, the ratio, and how many images get the same flag (the paper's rule: the class name shows in the
recognised text) and the same text.

    .venv/bin/python benchmarks/bench_ocr.py [--shards runs/demo/shards] [--generated 120] [--chunk 10] \\
        [--seed 0] [--fast 736 --fast '736!' --fast '736=' --fast lib --fast '736*2' --fast '736~bf16' ...]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from laionet.core.runtime import cores
from laionet.images.ocr import DET_SIDE, RapidOcrEngine, read_texts, shows_name

CLASS_NAMES = [
    "golden retriever",
    "lion",
    "tabby",
    "goldfish",
    "pizza",
    "banana",
    "tiger shark",
    "umbrella",
    "bagel",
    "teddy",
    "violin",
    "jellyfish",
    "espresso",
    "school bus",
    "pretzel",
    "lemon",
    "ambulance",
    "cowboy hat",
    "strawberry",
    "broccoli",
    "zebra",
    "pelican",
    "tractor",
    "mailbox",
    "candle",
    "backpack",
    "castle",
    "volcano",
]
OTHER_WORDS = [
    "summer sale",
    "best price",
    "free shipping",
    "hello world",
    "made in italy",
    "new",
    "open",
    "limited edition",
    "www.example.com",
    "2019",
    "happy birthday",
    "organic",
    "premium quality",
    "stock photo",
    "no 7",
    "love",
    "coffee shop",
    "la dolce vita",
    "size xl",
    "click here",
    "menu",
    "100% cotton",
]
_FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
]


def _font(rng: random.Random, size: int) -> Any:
    fonts = [f for f in _FONTS if Path(f).is_file()]
    if fonts and rng.random() < 0.75:
        return ImageFont.truetype(rng.choice(fonts), size)
    return ImageFont.load_default(size=size)


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    kind = rng.choice(["plain", "gradient", "noise", "shapes"])
    base = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(image)
    if kind == "gradient":
        other = tuple(rng.randrange(256) for _ in range(3))
        for y in range(height):
            t = y / max(1, height - 1)
            draw.line([(0, y), (width, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(base, other, strict=True)))
    elif kind == "noise":
        noise = Image.effect_noise((width, height), rng.uniform(20, 60)).convert("RGB")
        image = Image.blend(image, noise, 0.35)
    elif kind == "shapes":
        for _ in range(rng.randrange(3, 9)):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            box = [x0, y0, x0 + rng.randrange(20, width // 2 + 21), y0 + rng.randrange(20, height // 2 + 21)]
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour, outline="black")
    return image


_KINDS = ("name", "other", "none", "name", "other")


def drawn_names(count: int) -> list[bool]:
    """Whether ``text_images(count)``'s i-th image has its class name drawn on it: the truth its flags can be
    checked against (a drawn name may still be too small or too faint to read)."""
    return [_KINDS[i % len(_KINDS)] == "name" for i in range(count)]


def text_images(count: int, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """``count`` (image, class name) pairs: the name drawn in two of five, other words or no text in the rest (which
    is which: ``drawn_names``)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        width, height = rng.choice([(224, 224), (256, 256), (448, 448), (448, 634), (512, 343), (640, 480)])
        image = _background(rng, width, height)
        name = rng.choice(CLASS_NAMES)
        kind = _KINDS[i % len(_KINDS)]
        if kind != "none":
            words = name if kind == "name" else rng.choice(OTHER_WORDS)
            words = rng.choice([words, words.upper(), words.title(), f"the {words}", f"{words} {rng.randrange(99)}"])
            size = rng.choice([10, 12, 14, 18, 24, 32, 48, 64])
            font = _font(rng, size)
            draw = ImageDraw.Draw(image)
            left, top, right, bottom = draw.textbbox((0, 0), words, font=font)
            x = rng.randrange(0, max(1, width - int(right - left)))
            y = rng.randrange(0, max(1, height - int(bottom - top)))
            pixel = image.resize((1, 1)).getpixel((0, 0))
            mean = sum(pixel) / 3 if isinstance(pixel, tuple) else float(pixel or 0)
            fill = (0, 0, 0) if mean > 110 else (255, 255, 255)
            draw.text((x - left, y - top), words, fill=fill, font=font)
            if rng.random() < 0.2:
                image = image.filter(ImageFilter.GaussianBlur(0.8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=rng.choice([70, 85, 95]))  # read back as the shards hold images
        out.append((Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), name))
    return out


def demo_images(shards_dir: str, catalog_path: str | None) -> list[tuple[Image.Image, str]]:
    """The images of a demo run's shards with their class names (from the run's catalog)."""
    import json

    from laionet.images.shard_list import list_shards
    from laionet.images.shards import iter_raw
    from laionet.text.catalog import read_catalog

    catalog = read_catalog(catalog_path or str(Path(shards_dir).parent / "catalog.parquet"))
    names = dict(zip(catalog["wnid"], catalog["name"], strict=True))
    out = []
    for shard in list_shards(shards_dir):
        for _, sample in iter_raw(shard):
            if "jpg" in sample:
                wnid = json.loads(sample["json"]).get("wnid") if "json" in sample else None
                out.append((Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), names.get(str(wnid), "")))
    return out


def compare(
    label: str,
    images: list[tuple[Image.Image, str]],
    engines: dict[str, Any],
    chunk: int,
    drawn: list[bool] | None = None,
) -> dict[str, Any]:
    """All engines over ``images`` in turns of ``chunk`` images (the order reversed every other turn); print and
    return each one's images/s and its agreement with the first (the reference). With ``drawn`` (whether each
    image's class name is drawn on it), also how many drawn names each engine flags and how many it flags that are
    not drawn."""
    texts: dict[str, list[str]] = {name: [] for name in engines}
    seconds = dict.fromkeys(engines, 0.0)
    for start in range(0, len(images), chunk):
        batch = [image for image, _ in images[start : start + chunk]]
        classes = [name for _, name in images[start : start + chunk]]
        order = list(engines) if (start // chunk) % 2 == 0 else list(reversed(engines))
        for name in order:
            t = time.perf_counter()
            keep = getattr(engines[name], "keep_shown", True)
            texts[name].extend(read_texts(engines[name], batch, classes, keep))  # as the stage reads
            seconds[name] += time.perf_counter() - t
    ref = next(iter(engines))
    flags = {e: [bool(c and shows_name(c, t)) for (_, c), t in zip(images, texts[e], strict=True)] for e in engines}
    rate = {e: len(images) / seconds[e] for e in engines}
    n = len(images)
    print(f"{label}: {n} images, load average {os.getloadavg()[0]:.1f}")
    result: dict[str, Any] = {"n": n, "rate": rate}
    for name in engines:
        same_flag = sum(a == b for a, b in zip(flags[ref], flags[name], strict=True))
        same_text = sum(a == b for a, b in zip(texts[ref], texts[name], strict=True))
        result[name] = {"same_flag": same_flag, "same_text": same_text}
        truth = ""
        if drawn is not None:
            hits = sum(f and d for f, d in zip(flags[name], drawn, strict=True))
            false = sum(f and not d for f, d in zip(flags[name], drawn, strict=True))
            result[name].update(drawn_flagged=hits, undrawn_flagged=false)
            truth = f"  drawn names flagged {hits}/{sum(drawn)}, undrawn flagged {false}"
        print(
            f"  {name:<44} {rate[name]:6.2f} images/s  {rate[name] / rate[ref]:5.2f}x  flagged {sum(flags[name]):3d}  "
            f"same flag {100 * same_flag / n:5.1f} %  same text {100 * same_text / n:5.1f} %{truth}"
        )
        for (_, cls), a, b, fa, fb in zip(images, texts[ref], texts[name], flags[ref], flags[name], strict=True):
            if fa != fb:
                print(f"      flag differs ({cls!r}): {a!r} vs {b!r}")
    return result


_WORKER_ENGINE: Any = None


def _start_worker(kwargs: dict[str, Any]) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = RapidOcrEngine(**kwargs)


def _worker_read(images: list[Image.Image]) -> list[str]:
    return list(_WORKER_ENGINE.read_many(images))


def _worker_read_exact(images: list[Image.Image]) -> list[str]:
    return list(_WORKER_ENGINE.read_exact(images))


def _engine_settings(engine: Any) -> tuple[int | None, float | None, int | None, str, str, bool]:
    return engine.det_side, engine.det_upscale, engine.threads, engine.runtime, engine.precision, bool(engine.exact)


def _worker_engine_settings() -> tuple[int | None, float | None, int | None, str, str, bool]:
    return _engine_settings(_WORKER_ENGINE)


class ProcessFannedEngine:
    """The fast engine as ``run_ocr(workers=N)`` runs it: N spawned processes with cores ÷ N threads each, every
    chunk of images split among them (in order); ``read_many`` returns the texts in input order."""

    def __init__(self, processes: int, **kwargs: Any) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.processes = processes
        self.pool = ProcessPoolExecutor(
            processes, multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(kwargs,)
        )
        list(self.pool.map(_worker_read, [[] for _ in range(processes)]))  # start them (engines built)
        self.settings = self.pool.submit(_worker_engine_settings).result()  # as a worker built it
        self.exact = self.settings[-1]

    def read_many(self, images: list[Image.Image]) -> list[str]:
        return self._fanned(_worker_read, images)

    def read_exact(self, images: list[Image.Image]) -> list[str]:
        return self._fanned(_worker_read_exact, images)

    def _fanned(self, read: Any, images: list[Image.Image]) -> list[str]:
        size = max(1, -(-len(images) // self.processes))
        parts = [images[i : i + size] for i in range(0, len(images), size)]
        return [text for part in self.pool.map(read, parts) for text in part]


class Strict:
    """An engine whose possible flags are all read again exactly, the quick reading's shown names included (``SPEC=``:
    ``read_texts(keep_shown=False)``, the stage's rule before 2026-12-01 night)."""

    keep_shown = False

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.exact = engine.exact

    def read_many(self, images: list[Image.Image]) -> list[str]:
        return list(self.engine.read_many(images))

    def read_exact(self, images: list[Image.Image]) -> list[str]:
        return list(self.engine.read_exact(images))


class Unchecked:
    """An engine read as it is, without the stage's exact re-reading of possible flags (``SPEC!``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def read_many(self, images: list[Image.Image]) -> list[str]:
        return list(self.engine.read_many(images))


def _fast(spec: str) -> tuple[str, Any]:
    """``SIDE[:UPSCALE][@THREADS][/RUNTIME][~PRECISION][*PROCESSES][!]`` → a labelled fast engine (SIDE ``lib``:
    the library's detector input; ``*N``: N processes of THREADS threads, default cores ÷ N, each reading its share of
    every chunk; ``!``: the quick reading alone, without the stage's exact re-reading of possible flags; ``=``: the
    quick reading's shown names are read again too, ``read_texts(keep_shown=False)``)."""
    unchecked = spec.endswith("!")
    strict = spec.endswith("=")
    spec, _, processes = spec.removesuffix("!").removesuffix("=").partition("*")
    spec, _, precision = spec.partition("~")
    spec, _, runtime = spec.partition("/")
    spec, _, threads = spec.partition("@")
    side, _, upscale = spec.partition(":")
    n = int(processes) if processes else 1
    kwargs: dict[str, Any] = {
        "engine": "fast",
        "threads": int(threads) if threads else (max(1, cores() // n) if processes else None),
        "det_side": None if side == "lib" else int(side),
        "det_upscale": float(upscale) if upscale else None,
        "runtime": runtime or None,
        "precision": precision or "auto",
    }
    engine: Any = RapidOcrEngine(**kwargs) if not processes else ProcessFannedEngine(n, **kwargs)
    # a fanned engine reports its workers' settings (the parent builds none)
    det_side, det_upscale, threads, runtime, resolved, _ = engine.settings if processes else _engine_settings(engine)
    cap = f", upscale <= {det_upscale:g}" if det_upscale else ""
    runs_on = f"{runtime} {resolved}"
    how = ", unchecked" if unchecked else ", strict" if strict else ""
    label = f"fast (det {det_side or 'lib'}{cap}, {threads} thr, {runs_on}{how})"
    wrapped = Unchecked(engine) if unchecked else Strict(engine) if strict else engine
    return (f"{label} x {n} processes" if processes else label), wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="runs/demo/shards", help="a demo run's shards (skipped when missing)")
    parser.add_argument("--catalog", default=None, help="its catalog (default: <shards>/../catalog.parquet)")
    parser.add_argument("--limit", type=int, default=0, help="read at most this many demo images (0: all)")
    parser.add_argument("--generated", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0, help="the generated images' seed")
    parser.add_argument("--chunk", type=int, default=10, help="images per turn of each engine")
    parser.add_argument(
        "--fast",
        action="append",
        help=f"a fast engine to compare, SIDE[:UPSCALE][@THREADS][/RUNTIME][~PRECISION][*PROCESSES][!|=] (SIDE: lib, "
        f"the library's detector input, or the detector's longer side in pixels; RUNTIME: openvino or onnxruntime; "
        f"PRECISION: the quick pass's on OpenVINO, auto (bf16 where native), f32 or bf16; *N: N processes, each "
        f"with THREADS (default cores / N) threads, as run_ocr(workers=N); !: without the stage's exact re-reading "
        f"of possible flags; =: the quick reading's shown names are read again too; repeatable; default "
        f"{DET_SIDE}: the defaults)",
    )
    args = parser.parse_args()
    t = time.perf_counter()
    engines = {"full (RapidOCR(), library defaults)": RapidOcrEngine(engine="full")}
    engines.update(_fast(spec) for spec in args.fast or [str(DET_SIDE)])
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; engines built in "
        f"{time.perf_counter() - t:.1f} s"
    )
    warm = text_images(2, seed=99)
    for engine in engines.values():
        engine.read_many([image for image, _ in warm])
    if Path(args.shards).is_dir():
        demo = demo_images(args.shards, args.catalog)
        compare(f"demo clip art ({args.shards})", demo[: args.limit or None], engines, args.chunk)
    else:
        print(f"no demo shards at {args.shards}: run `make demo` or pass --shards")
    if args.generated:
        generated = text_images(args.generated, args.seed)
        drawn = drawn_names(args.generated)
        compare(f"generated text images (seed {args.seed})", generated, engines, args.chunk, drawn)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
