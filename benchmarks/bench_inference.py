"""Streaming inference speed: images/s of the engine, and one shared-decode pass for several models against one pass
per model over the same shards.

Builds ``--images`` JPEGs (crops of scikit-image's real photos, resized to ``--size`` like img2dataset's output) into
shards under a temporary directory, then measures, each in one run of ``laionet.inference.engine.run_inference``:

1. the offline default alone (``efficientnet_lite0``, real weights): images/s, decode included;
2. ``--models`` together in one pass (each image decoded once; equal preprocessing recipes shared) against the same
   models run one after the other, one pass each: wall times and the ratio;
3. where the time goes: decoding + preprocessing alone (the engine's loader, no model), and the models alone on
   already-decoded tensors (the same batch over and over).

On a GPU machine: ``--device cuda --models open_clip:ViT-B-32-quickgelu@random`` gives the ViT-B/32 image-embedding
rate (random weights: same compute as the real ones), decode included, with the same breakdown.

    .venv/bin/python benchmarks/bench_inference.py [--images 512] [--models efficientnet_lite0 ...] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from laionet.images.shards import ShardWriter
from laionet.inference import batches
from laionet.inference import engine as inference
from laionet.inference.engine import InferConfig, run_inference
from laionet.inference.models import load_image_model

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"
PHOTOS = ["coffee.png", "chelsea.png", "astronaut.png", "motorcycle_left.png", "rocket.jpg", "camera.png"]


def build_shards(root: Path, n: int, size: int, per_shard: int) -> str:
    rng = np.random.default_rng(0)
    photos = [Image.open(SKIMAGE / p).convert("RGB") for p in PHOTOS]
    writer = ShardWriter(str(root), per_shard=per_shard)
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = photo.crop((x, y, x + cw, y + ch))
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=90)
        writer.write(f"bench/{i}", out.getvalue(), "", {"wnid": "n07920052", "class_index": 967})
    writer.close()
    return str(root)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_only(shards: str, specs: list[str], config: InferConfig, device: str) -> float:
    recipes = list(dict.fromkeys(load_image_model(s).recipe for s in specs))
    paths = inference.list_shards(shards)
    workers = (
        config.workers if config.workers is not None else (max(1, (os.cpu_count() or 1) - 1) if device != "cpu" else 1)
    )
    stream = batches.ShardStream(paths, recipes, set(), config.batch_size or 32)
    start = time.perf_counter()
    for _ in batches.make_loader(stream, min(workers, len(paths)), device.startswith("cuda")):
        pass
    return time.perf_counter() - start


def transfer_only(n: int, batch: int, crop: int, device: str) -> float:
    """Seconds per image to copy pinned preprocessed batches to the device (0 on the CPU: nothing moves)."""
    if not device.startswith("cuda"):
        return 0.0
    x = torch.randn(batch, 3, crop, crop).pin_memory()
    x.to(device, non_blocking=True)
    torch.cuda.synchronize()
    steps = max(1, n // batch)
    start = time.perf_counter()
    for _ in range(steps):
        x.to(device, non_blocking=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps * batch)


def model_only(spec: str, n: int, batch: int, device: str, precision: str) -> float:
    model = load_image_model(spec).to(device, channels_last=True)
    runner = inference._Runner(model, device, precision, 5)
    x = torch.randn(batch, 3, model.recipe.crop, model.recipe.crop).to(device)
    if device.startswith("cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    runner.forward(x)  # warm-up
    steps = max(1, n // batch)
    start = time.perf_counter()
    for _ in range(steps):
        runner.forward(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256, help="longest side of the stored JPEGs (img2dataset: 256)")
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["efficientnet_lite0", "timm:tf_efficientnet_lite0@random", "timm:resnet18@random"],
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    device = inference._device(args.device)
    from laionet.selection.encoders import resolve_precision

    precision = "fp32" if args.precision == "auto" and device == "cpu" else resolve_precision(args.precision, device)
    config = InferConfig(device=device, precision=args.precision, batch_size=args.batch_size, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = build_shards(root / "shards", args.images, args.size, args.per_shard)
        n = args.images
        print(f"{n} images of ≤{args.size}px in {n // args.per_shard} shards; device {device}, precision {precision}, "
              f"{os.cpu_count()} cores")  # fmt: skip

        first = args.models[0]
        run_inference(shards, [first], str(root / "warm"), config=config)  # warm caches (weights, page cache)
        t = timed(lambda: run_inference(shards, [first], str(root / "single"), config=config))
        print(f"\n{first} alone: {t:.1f} s = {n / t:.1f} images/s (decode included)")

        together = timed(lambda: run_inference(shards, args.models, str(root / "together"), config=config))
        separate = sum(
            timed(lambda s=s: run_inference(shards, [s], str(root / f"sep-{s}"), config=config)) for s in args.models
        )
        print(f"\n{len(args.models)} models {args.models}:")
        print(f"  one pass per model : {separate:7.1f} s  ({n * len(args.models) / separate:.1f} model-images/s)")
        print(f"  one shared pass    : {together:7.1f} s  ({n * len(args.models) / together:.1f} model-images/s)")
        print(f"  ratio              : {separate / together:.2f}x")

        decode = decode_only(shards, args.models, config, device)
        print("\nwhere the time goes (per image):")
        print(f"  decode + preprocess ({len(set(load_image_model(s).recipe for s in args.models))} recipes): "
              f"{decode / n * 1e3:.2f} ms ({n / decode:.0f} images/s with the loader's workers)")  # fmt: skip
        batch = args.batch_size or (256 if device.startswith("cuda") else 32)
        crop = load_image_model(args.models[0]).recipe.crop
        per = transfer_only(min(n, 8 * batch), batch, crop, device)
        print(f"  transfer host→device ({crop}px, pinned): " + (f"{per * 1e3:.3f} ms" if per else "none on the CPU"))
        for spec in args.models:
            per = model_only(spec, min(n, 4 * batch), batch, device, precision)
            print(f"  model {spec}: {per * 1e3:.2f} ms ({1 / per:.0f} images/s on ready tensors)")


if __name__ == "__main__":
    main()
