"""The device decode path (``decode="device"``: batched ``decode_jpeg`` and per-recipe resize on the device) run on
the CPU device, so that this very code is tested without a GPU: its tensors against the CPU path's per recipe, the
same top-1 with EfficientNet-Lite0's real weights on real photos, identical counts on a damaged shard, and a whole
``run_inference`` writing the same predictions."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from laionet.core.layout import slug
from laionet.images.shard_writer import ShardWriter
from laionet.images.shards import safe_key
from laionet.inference import batches
from laionet.inference.batches import DeviceDecoder, decode_mode, decode_shard
from laionet.inference.engine import run_inference
from laionet.inference.models import Recipe, load_image_model
from laionet.inference.stream import InferConfig

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"
PHOTOS = ["coffee.png", "chelsea.png", "astronaut.png", "motorcycle_left.png", "rocket.jpg", "camera.png"]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
RECIPES = [
    Recipe(256, 224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # efficientnet_lite0 (checked below)
    Recipe(224, 224, "bicubic", *CLIP),  # CLIP ViT-B/32
    Recipe(256, 224, "bilinear", *IMAGENET),  # resnet (torchvision weights)
    Recipe(384, 384, "bicubic", *IMAGENET),  # ConvNeXt-384: upscales the ≤256 px images
]
# Measured (this file's first test): the device path's pixels are within 2 uint8 levels of PIL's (max |Δ| · std · 255
# over every value of every recipe) and ≥98% of the values are equal.
MAX_LEVELS, MIN_EQUAL = 2.0, 0.98


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def _photos() -> dict[str, bytes]:
    """Each photo as stored by the download (longest side ≤256) and at full size, a greyscale JPEG, and two that the
    device decoder does not take: a CMYK JPEG and a PNG."""
    out = {}
    for name in PHOTOS:
        photo = Image.open(SKIMAGE / name).convert("RGB")
        out[f"full/{name}"] = _encode(photo)
        small = photo.copy()
        small.thumbnail((256, 256))
        out[f"small/{name}"] = _encode(small)
    small = Image.open(SKIMAGE / "chelsea.png").convert("RGB")
    small.thumbnail((256, 256))
    out["grey/chelsea"] = _encode(small.convert("L"))
    out["cmyk/chelsea"] = _encode(small.convert("CMYK"))
    out["png/chelsea"] = _encode(small, "PNG")
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                _add(tar, f"{safe_key(key)}.{ext}", data)
    return str(path)


def _both(shard: str, recipes: list[Recipe], skip: set[str], batch_size: int = 4) -> dict[str, dict[str, Any]]:
    """The shard's batches through each path, merged: keys, images per recipe, the last batch's counts and errors."""
    cpu = list(decode_shard(shard, {r: r.transform() for r in recipes}, skip, batch_size))
    raw = list(decode_shard(shard, dict.fromkeys(recipes), skip, batch_size, raw=True))
    decoder = DeviceDecoder(recipes, "cpu")  # one for the whole run: it holds the shard's losses until its last batch
    device = [decoder(b) for b in raw]
    merged = {}
    for name, found in (("cpu", cpu), ("device", device)):
        merged[name] = {
            "keys": [k for b in found for k in b["keys"]],
            "images": {r: torch.cat([b["images"][r] for b in found if b["images"][r] is not None]) for r in recipes},
            "counts": found[-1]["counts"],
            "truncated": found[-1]["truncated"],
            "errors": sorted((k, reason) for k, reason, _ in found[-1]["errors"]),
            "raw": raw,
        }
    return merged


def test_device_tensors_equal_the_cpu_path_within_two_levels_per_recipe(tmp_path: Path) -> None:
    photos = _photos()
    shard = _write_tar(tmp_path / "photos.tar", {k: {"jpg": v} for k, v in photos.items()})
    both = _both(shard, RECIPES, set())
    cpu, device = both["cpu"], both["device"]
    assert cpu["keys"] == device["keys"] == list(photos)
    # the JPEGs went to the device decoder; the CMYK JPEG and the PNG were decoded by PIL in the worker
    decoded = [b["keys"][i] for b in device["raw"] for i in b["decoded"]]
    assert sorted(decoded) == ["cmyk/chelsea", "png/chelsea"]
    for recipe in RECIPES:
        a, b = cpu["images"][recipe], device["images"][recipe]
        assert a.shape == b.shape == (len(photos), 3, recipe.crop, recipe.crop) and b.dtype == torch.float32
        levels = (a - b).abs() * torch.tensor(recipe.std).view(1, 3, 1, 1) * 255  # back to uint8 levels
        assert levels.max().item() <= MAX_LEVELS + 1e-3, recipe
        assert (levels < 1e-3).float().mean().item() >= MIN_EQUAL, recipe
    lite0 = load_image_model("efficientnet_lite0").recipe
    assert lite0 == RECIPES[0]  # the offline default's recipe is among those checked


def test_same_top1_as_the_cpu_path_on_real_photos(tmp_path: Path) -> None:
    photos = _photos()
    shard = _write_tar(tmp_path / "photos.tar", {k: {"jpg": v} for k, v in photos.items()})
    model = load_image_model("efficientnet_lite0")
    both = _both(shard, [model.recipe], set(), batch_size=32)
    with torch.inference_mode():
        probs = {name: model.forward(both[name]["images"][model.recipe])[1] for name in ("cpu", "device")}
    top1 = {name: p.argmax(1).tolist() for name, p in probs.items()}
    assert top1["cpu"] == top1["device"]
    assert (probs["cpu"] - probs["device"]).abs().max().item() < 0.02  # measured 0.0017
    keys = both["cpu"]["keys"]
    assert top1["device"][keys.index("small/coffee.png")] == 967  # espresso
    assert top1["device"][keys.index("small/chelsea.png")] in {281, 282, 283, 284, 285}  # a cat


def test_counts_and_errors_are_identical_on_a_damaged_shard(tmp_path: Path, monkeypatch) -> None:
    photos = _photos()
    good = photos["small/chelsea.png"]
    sos = good.find(b"\xff\xda")
    samples = {
        "good/0": {"jpg": good, "json": json.dumps({"wnid": "n02123159"}).encode()},
        "garbage": {"jpg": b"\xff\xd8 not a jpeg"},  # PIL cannot open it
        "half": {"jpg": good[: len(good) // 2]},  # cut short: PIL and decode_jpeg both reject it
        "no-scan": {"jpg": good[:sos] + b"\xff\xd9"},  # a header and an end marker: the device and PIL reject it
        "big": {"jpg": photos["full/astronaut.png"]},  # 512x512, over the 200,000-pixel limit set below
        "text-only": {"txt": b"a caption"},  # no image
        "quarantined": {"jpg": good},
        "png": {"jpg": photos["png/chelsea"]},
        "grey": {"jpg": photos["grey/chelsea"]},
        "good/1": {"jpg": photos["small/coffee.png"]},
        "good/2": {"jpg": photos["small/rocket.jpg"]},
    }
    path = tmp_path / "damaged.tar"
    _write_tar(path, samples)
    data = path.read_bytes()
    path.write_bytes(data[: data.rfind(b"\xff\xd9") - 100])  # cut inside the last image: a truncated shard
    monkeypatch.setenv("LAIONET_MAX_IMAGE_PIXELS", "200000")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test, as is the env
    both = _both(str(path), RECIPES[:2], {"quarantined"}, batch_size=3)
    cpu, device = both["cpu"], both["device"]
    assert cpu["counts"] == device["counts"] == {"read": 10, "quarantined": 1, "undecodable": 4, "no_image": 1}
    assert cpu["truncated"] and device["truncated"]
    assert cpu["errors"] == device["errors"]
    assert ("*", "truncated_shard") in device["errors"] and ("no-scan", "undecodable_image") in device["errors"]
    assert cpu["keys"] == device["keys"] == ["good/0", "png", "grey", "good/1"]
    for recipe in RECIPES[:2]:
        levels = (cpu["images"][recipe] - device["images"][recipe]).abs() * torch.tensor(recipe.std).view(1, 3, 1, 1)
        assert (levels * 255).max().item() <= MAX_LEVELS + 1e-3


def test_a_jpeg_the_device_rejects_is_decoded_by_pil(tmp_path: Path, monkeypatch) -> None:
    """A device decoder that fails on one JPEG (nvjpeg takes less than libjpeg): the batched call fails, the batch is
    split in halves until that JPEG is alone, and it goes to PIL; none is lost."""
    photos = _photos()
    rejected = photos["small/coffee.png"]
    real = batches._decode_jpeg
    calls: list[int] = []

    def picky(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        calls.append(len(data))
        if any(bytes(t.numpy()) == rejected for t in data):
            raise RuntimeError("nvjpeg: unsupported (simulated)")
        return real(data, device)

    monkeypatch.setattr(batches, "_decode_jpeg", picky)
    names = [
        "small/chelsea.png",
        "small/coffee.png",
        *(f"small/{p}" for p in PHOTOS[2:]),
        "grey/chelsea",
        "full/coffee.png",
    ]
    shard = _write_tar(tmp_path / "s.tar", {n: {"jpg": photos[n]} for n in names})
    both = _both(shard, RECIPES[:1], set(), batch_size=8)
    assert both["device"]["keys"] == names and both["device"]["counts"]["undecodable"] == 0
    assert calls == [8, 4, 2, 1, 1, 2, 4]  # the batch, its first half, its first quarter, then each half that is left
    levels = (both["cpu"]["images"][RECIPES[0]] - both["device"]["images"][RECIPES[0]]).abs() * 0.5 * 255
    assert levels.max().item() <= MAX_LEVELS + 1e-3


def test_decode_mode_picks_the_device_only_where_it_decodes() -> None:
    assert decode_mode("auto", "cpu") == "cpu" and decode_mode("cpu", "cuda") == "cpu"
    assert decode_mode("device", "cpu") == "device"  # what the tests run
    if not torch.cuda.is_available():
        assert decode_mode("auto", "cuda") == "cpu"  # no CUDA: the CPU decoder, with a warning
        with pytest.raises(ValueError, match="cannot decode JPEGs on cuda"):
            decode_mode("device", "cuda")
    with pytest.raises(ValueError, match="unknown decode mode 'gpu'"):
        decode_mode("gpu", "cpu")


def _shards(root: Path) -> Path:
    photos = _photos()
    writer = ShardWriter(str(root), per_shard=5)
    for i, (key, data) in enumerate(photos.items()):
        writer.write(key, data, "", {"wnid": "n07920052", "class_index": 967})
        if i == 3:
            writer.write("broken/0", b"\xff\xd8 not a jpeg", "", {})
    writer.close()
    return root


def test_run_inference_with_device_decode_writes_the_cpu_predictions(tmp_path: Path) -> None:
    shards = _shards(tmp_path / "shards")
    spec = "efficientnet_lite0"
    manifests, preds = {}, {}
    for decode, workers in (("cpu", 0), ("device", 1)):  # a decode worker: the payloads cross processes
        out = tmp_path / decode
        config = InferConfig(device="cpu", decode=decode, workers=workers, batch_size=4)
        manifests[decode] = run_inference(str(shards), [spec], str(out), config=config)[spec]
        files = sorted((out / slug(spec)).glob("*.predictions.parquet"))
        preds[decode] = pd.concat(pd.read_parquet(p) for p in files).set_index("key")
    cpu, device = manifests["cpu"], manifests["device"]
    assert (cpu.rows_in, cpu.rows_out, cpu.dropped) == (device.rows_in, device.rows_out, device.dropped)
    assert (device.rows_in, device.rows_out, device.dropped) == (16, 15, {"undecodable": 1})
    assert device.config["decode"] == "device" and device.extra["decode"] == ["device"]
    assert cpu.extra["decode"] == ["cpu"]
    assert list(preds["cpu"].index) == list(preds["device"].index)
    top1 = {name: [t[0] for t in p["topk"]] for name, p in preds.items()}
    assert top1["cpu"] == top1["device"]
    scores = np.stack(preds["cpu"]["scores"].to_numpy()) - np.stack(preds["device"]["scores"].to_numpy())
    assert np.abs(scores).max() < 0.02


def test_cli_infer_decode_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from laionet.cli import app

    shards, out = _shards(tmp_path / "shards"), tmp_path / "inf"
    args = ["infer", "--shards", str(shards), "--model", "timm:test_resnet@random", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--decode", "device", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "rows in=16 out=15 dropped: undecodable=1" in result.output
    manifest = json.loads((out / "timm-test_resnet-random" / "_manifest.json").read_text())
    assert manifest["config"]["decode"] == "device" and manifest["extra"]["decode"] == ["device"]
    bad = CliRunner().invoke(app, [*args, "--decode", "gpu"])
    assert bad.exit_code != 0 and "gpu" in bad.output
