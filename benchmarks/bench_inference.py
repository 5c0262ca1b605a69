"""Streaming inference speed: images/s of the engine per JPEG decoder (``--decode``: ``cpu`` in the loader's
workers, ``device``: batched ``decode_jpeg`` and preprocessing on the device), side by side with their ratio, and one
shared-decode pass for several models against one pass per model over the same shards.

Builds ``--images`` JPEGs (crops of scikit-image's real photos, resized to ``--size`` like img2dataset's output) into
shards under a temporary directory, then measures, per decoder, each in one run of
``laionet.inference.engine.run_inference`` (model loading included, as a real call pays it):

1. decoding + preprocessing alone: the engine's loader (and ``DeviceDecoder``), every recipe of ``--models``, no model;
2. the first of ``--models`` alone (default ``efficientnet_lite0``, real weights), end to end;
3. ``--models`` together in one pass (each image decoded once; equal preprocessing recipes shared) against the same
   models run one after the other, one pass each;

then the models alone on ready tensors (the same batch over and over; no decoder involved) and the host→device copy.

On a GPU machine, ``--device cuda`` compares both decoders (the default there);
``--models open_clip:ViT-B-32-quickgelu@random`` gives the ViT-B/32 image-embedding rate (random weights: same
compute as the real ones). On a CPU, ``--decode cpu device`` runs the device path on the CPU device.

    .venv/bin/python benchmarks/bench_inference.py [--images 512] [--models efficientnet_lite0 ...] [--device cpu]
        [--decode cpu device]
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

from laionet.images.shard_writer import ShardWriter
from laionet.inference import batches
from laionet.inference import engine as inference
from laionet.inference.engine import run_inference
from laionet.inference.models import load_image_model
from laionet.inference.runner import Runner
from laionet.inference.stream import InferConfig, default_workers

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


def decode_only(shards: str, specs: list[str], config: InferConfig, device: str, decode: str) -> float:
    """Seconds to read, decode and preprocess every image as the engine does (its loader and workers; with
    ``decode="device"`` also ``DeviceDecoder``, synchronised at the end), no model."""
    recipes = list(dict.fromkeys(load_image_model(s).recipe for s in specs))
    paths = inference.list_shards(shards)
    workers = config.workers if config.workers is not None else default_workers(device)
    batch_size = config.batch_size or (256 if device.startswith("cuda") else 32)
    stream = batches.ShardStream(paths, recipes, set(), batch_size, decode="device" if decode == "device" else "cpu")
    decoder = batches.DeviceDecoder(recipes, device) if decode == "device" else None
    start = time.perf_counter()
    for batch in batches.make_loader(stream, min(workers, len(paths)), device.startswith("cuda")):
        if decoder is not None:
            decoder(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
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
    runner = Runner(model, device, precision, 5)
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


def _row(label: str, values: dict[str, float]) -> None:
    """One line of the side-by-side table: a value per decoder, then device/cpu when both ran."""
    cells = "".join(f"{values[d]:>16.1f}" for d in values)
    ratio = f"{values['device'] / values['cpu']:>12.2f}x" if {"cpu", "device"} <= set(values) else ""
    print(f"  {label:<44}{cells}{ratio}")


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
    parser.add_argument(
        "--decode",
        nargs="+",
        choices=["cpu", "device"],
        default=None,
        help="decoders to compare (default: cpu and device on a GPU, cpu alone on a CPU)",
    )
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    device = inference._device(args.device)
    decoders = list(dict.fromkeys(args.decode or (["cpu", "device"] if device.startswith("cuda") else ["cpu"])))
    from laionet.selection.encoders import resolve_precision

    precision = "fp32" if args.precision == "auto" and device == "cpu" else resolve_precision(args.precision, device)
    configs = {
        d: InferConfig(
            device=device, precision=args.precision, batch_size=args.batch_size, workers=args.workers, decode=d
        )
        for d in decoders
    }
    first, n, m = args.models[0], args.images, len(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = build_shards(root / "shards", n, args.size, args.per_shard)
        print(
            f"{n} images of ≤{args.size}px in {n // args.per_shard} shards; device {device}, precision {precision}, "
            f"{os.cpu_count()} cores; decoders {decoders}"
        )
        rates: dict[str, dict[str, float]] = {k: {} for k in ("decode", "single", "together", "separate")}
        for d, config in configs.items():
            run_inference(shards, [first], str(root / f"warm-{d}"), config=config)  # warm caches (weights, pages)
            rates["decode"][d] = n / decode_only(shards, args.models, config, device, d)
            rates["single"][d] = n / timed(
                lambda c=config, d=d: run_inference(shards, [first], str(root / f"1-{d}"), config=c)
            )
            together = timed(lambda c=config, d=d: run_inference(shards, args.models, str(root / f"n-{d}"), config=c))
            separate = sum(
                timed(lambda s=s, c=config, d=d: run_inference(shards, [s], str(root / f"sep-{d}-{s}"), config=c))
                for s in args.models
            )
            rates["together"][d], rates["separate"][d] = n / together, n / separate
        recipes = len({load_image_model(s).recipe for s in args.models})
        print(
            "\nimages/s"
            + " " * 38
            + "".join(f"{'decode=' + d:>16}" for d in decoders)
            + ("  device/cpu" if len(decoders) == 2 else "")
        )
        _row(f"decode + preprocess only ({recipes} recipes)", rates["decode"])
        _row(f"{first} alone, end to end", rates["single"])
        _row(f"{m} models, one shared pass, end to end", rates["together"])
        _row(f"{m} models, one pass per model, end to end", rates["separate"])
        print(
            f"  {'shared pass / one pass per model':<44}"
            + "".join(f"{rates['together'][d] / rates['separate'][d]:>15.2f}x" for d in decoders)
        )
        print(f"\nmodels alone on ready tensors (the same for every decoder; {args.models}):")
        batch = args.batch_size or (256 if device.startswith("cuda") else 32)
        crop = load_image_model(first).recipe.crop
        per = transfer_only(min(n, 8 * batch), batch, crop, device)
        print(f"  transfer host→device ({crop}px, pinned): " + (f"{per * 1e3:.3f} ms" if per else "none on the CPU"))
        total = 0.0
        for spec in args.models:
            per = model_only(spec, min(n, 4 * batch), batch, device, precision)
            total += per
            print(f"  model {spec}: {per * 1e3:.2f} ms ({1 / per:.0f} images/s)")
        print(f"  all {m} models: {total * 1e3:.2f} ms ({1 / total:.0f} images/s)")


if __name__ == "__main__":
    main()
