"""Streaming inference over shards with real models: EfficientNet-Lite0's real weights on real photos, timm's tiny
test models from a local weights file, a tiny random-weight open_clip model for the CLIP path."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from laionet.core.layout import slug
from laionet.core.manifest import read_manifest
from laionet.images.shard_writer import ShardWriter, encode_rgb_jpeg
from laionet.inference import batches
from laionet.inference.engine import run_inference
from laionet.inference.models import ZOO, ModelError, label_map_22k_to_1k, load_image_model
from laionet.inference.runner import Runner
from laionet.inference.stream import InferConfig

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"
ESPRESSO, CATS = 967, {281, 282, 283, 284, 285}  # 1k indices: espresso; the domestic cats
COFFEE_WNID, CAT_WNID = "n07920052", "n02123159"  # espresso, tiger cat


def _jpeg(path: Path) -> bytes:
    return encode_rgb_jpeg(path.read_bytes())


def _noise_jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Two shards: real photos with their classes, noise images, one undecodable image and one quarantined key."""
    out = tmp_path / "shards"
    writer = ShardWriter(str(out), per_shard=4)
    writer.write("photo/coffee", _jpeg(SKIMAGE / "coffee.png"), "espresso", {"wnid": COFFEE_WNID, "class_index": 967})
    writer.write("photo/chelsea", _jpeg(SKIMAGE / "chelsea.png"), "cat", {"wnid": CAT_WNID, "class_index": 282})
    writer.write("noise/0", _noise_jpeg(0), "", {"wnid": COFFEE_WNID, "class_index": 967})
    writer.write("broken/0", b"\xff\xd8 not a jpeg", "", {"wnid": CAT_WNID, "class_index": 282})
    writer.write("noise/1", _noise_jpeg(1), "", {"wnid": "n99999999", "class_index": -1})  # no known class
    writer.write("quarantined/0", _noise_jpeg(2), "", {"wnid": CAT_WNID, "class_index": 282})
    writer.close()
    quarantine = tmp_path / "quarantine.parquet"
    pd.DataFrame({"shard": ["x"], "key": ["quarantined/0"], "reason": ["undecodable_image"]}).to_parquet(quarantine)
    return out


def _test_resnet_weights(tmp_path: Path) -> str:
    import timm

    torch.manual_seed(0)
    path = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    return str(path)


def test_efficientnet_lite0_and_a_local_timm_model_over_shards(shards: Path, tmp_path: Path) -> None:
    weights = _test_resnet_weights(tmp_path)
    specs = ["efficientnet_lite0", f"timm:test_resnet@{weights}"]
    out = tmp_path / "inference" / "laionet"
    manifests = run_inference(str(shards), specs, str(out), quarantine=str(tmp_path / "quarantine.parquet"))

    for spec, dim in zip(specs, (1280, 96), strict=True):
        manifest = manifests[spec]
        assert read_manifest(str(out / slug(spec))) == manifest
        # 6 samples read = 4 predicted + 1 quarantined + 1 undecodable
        assert (manifest.rows_in, manifest.rows_out) == (6, 4)
        assert manifest.dropped == {"quarantined": 1, "undecodable": 1}
        keys = pd.concat(pd.read_parquet(p) for p in sorted((out / slug(spec)).glob("*.keys.parquet")))["key"]
        assert sorted(keys) == ["noise/0", "noise/1", "photo/chelsea", "photo/coffee"]
        for npy in (out / slug(spec)).glob("*.npy"):
            emb = np.load(npy)
            assert emb.dtype == np.float16 and emb.shape[1] == dim
            assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
            assert len(emb) == len(pd.read_parquet(str(npy).removesuffix(".npy") + ".keys.parquet"))

    lite = out / "efficientnet_lite0"
    preds = pd.concat(pd.read_parquet(p) for p in sorted(lite.glob("*.predictions.parquet"))).set_index("key")
    assert list(preds.columns) == ["topk", "scores", "own_score"]
    assert all(len(t) == 5 for t in preds["topk"])
    assert all(np.all(np.diff(s) <= 0) for s in preds["scores"])  # best first
    assert ESPRESSO in preds.loc["photo/coffee", "topk"]
    assert CATS & set(preds.loc["photo/chelsea", "topk"])
    # own_score: the probability of the sample's own class; the espresso photo is confidently espresso
    assert preds.loc["photo/coffee", "own_score"] == pytest.approx(preds.loc["photo/coffee", "scores"][0], abs=1e-6)
    assert preds.loc["photo/coffee", "own_score"] > 0.5
    assert np.isnan(preds.loc["noise/1", "own_score"])  # its wnid is no ImageNet-1k class


def test_rerun_reads_no_shard_and_a_crash_resumes(shards: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "inference"
    spec = "timm:test_resnet@random"
    calls = {"n": 0}
    real_forward = Runner.forward

    def crash_on_second_shard(self, x):
        calls["n"] += 1
        if calls["n"] == 2:  # shard 0 has one batch of 4 at batch_size 4; the next forward is shard 1's
            raise RuntimeError("simulated crash")
        return real_forward(self, x)

    monkeypatch.setattr(Runner, "forward", crash_on_second_shard)
    config = InferConfig(batch_size=4, workers=0)
    with pytest.raises(RuntimeError, match=r"model 'timm:test_resnet@random' failed on shard .*00001.tar: .*simulated"):
        run_inference(str(shards), [spec], str(out), config=config)
    model_dir = out / slug(spec)
    assert (model_dir / "_parts" / "00000.json").exists() and not (model_dir / "_manifest.json").exists()
    assert not list(model_dir.glob("*.tmp*")) and not list(model_dir.glob("00001*"))
    first = (model_dir / "00000.predictions.parquet").stat().st_mtime_ns

    monkeypatch.setattr(Runner, "forward", real_forward)
    manifest = run_inference(str(shards), [spec], str(out), config=config)[spec]
    assert manifest.rows_out == 5 and manifest.dropped == {"undecodable": 1}  # no quarantine given this time
    assert (model_dir / "00000.predictions.parquet").stat().st_mtime_ns == first  # finished shard not redone

    def no_reading(*args, **kwargs):
        raise AssertionError("a finished shard was read again")

    monkeypatch.setattr(batches, "decode_shard", no_reading)
    again = run_inference(str(shards), [spec], str(out), config=config)[spec]
    assert (again.rows_in, again.rows_out) == (manifest.rows_in, manifest.rows_out)


def test_models_sharing_a_recipe_share_the_transformed_tensor(shards: Path, tmp_path: Path, monkeypatch) -> None:
    weights = _test_resnet_weights(tmp_path)
    seen: list[int] = []
    real_init = batches.ShardStream.__init__

    def spy(self, shards, recipes, skip, batch_size, **kwargs):
        seen.append(len(recipes))
        real_init(self, shards, recipes, skip, batch_size, **kwargs)

    monkeypatch.setattr(batches.ShardStream, "__init__", spy)
    specs = ["timm:test_resnet@random", f"timm:test_resnet@{weights}", "efficientnet_lite0"]
    manifests = run_inference(str(shards), specs, str(tmp_path / "out"), config=InferConfig(workers=0))
    assert seen == [2]  # three models, two distinct preprocessing recipes
    assert {m.rows_out for m in manifests.values()} == {5}


def test_clip_zero_shot_scores_against_the_catalog(shards: Path, tmp_path: Path, tiny_clip: str, catalog_1k) -> None:
    catalog_path = tmp_path / "catalog.parquet"
    catalog_1k.to_parquet(catalog_path)
    held = {}

    def builder(spec, **kwargs):
        held["model"] = load_image_model(spec, **kwargs)
        return held["model"]

    spec = f"open_clip:{tiny_clip}@random"
    out = tmp_path / "clip"
    manifest = run_inference(str(shards), [spec], str(out), catalog_path=str(catalog_path), builder=builder)[spec]
    assert manifest.rows_out == 5 and manifest.extra["classes"] == 1000 and manifest.extra["dim"] == 32
    model_dir = out / slug(spec)
    preds = pd.concat(pd.read_parquet(p) for p in sorted(model_dir.glob("*.predictions.parquet")))
    emb = np.concatenate([np.load(p) for p in sorted(model_dir.glob("*.npy"))]).astype(np.float32)
    text = held["model"].info["text_features"].cpu().numpy()
    row = {w: i for i, w in enumerate(catalog_1k["wnid"])}
    for i, (key, own) in enumerate(zip(preds["key"], preds["own_score"], strict=True)):
        sims = emb[i] @ text.T  # the zero-shot scores are cosines to the synset texts
        assert preds["scores"].iloc[i][0] == pytest.approx(sims.max(), abs=5e-3)
        assert catalog_1k["class_index"].iloc[int(sims.argmax())] in preds["topk"].iloc[i][:2]  # fp16 ties aside
        wnids = {
            "photo/coffee": COFFEE_WNID,
            "photo/chelsea": CAT_WNID,
            "noise/0": COFFEE_WNID,
            "quarantined/0": CAT_WNID,
        }
        wnid = wnids.get(key)
        if wnid is None:
            assert np.isnan(own)
        else:  # Appendix C: the image's similarity to its own class's synset text
            assert own == pytest.approx(sims[row[wnid]], abs=5e-3)


def test_bad_model_specs_fail_before_any_shard_is_read(shards: Path, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network here anyway: fail at once, not after retries
    monkeypatch.setattr(batches, "decode_shard", lambda *a, **k: pytest.fail("a shard was read"))
    with pytest.raises(ModelError, match="unknown model 'resnet-9000'"):
        run_inference(str(shards), ["resnet-9000"], str(tmp_path / "o"))
    with pytest.raises(ModelError, match="timm has no model 'no_such_net'"):
        run_inference(str(shards), ["timm:no_such_net"], str(tmp_path / "o"))
    with pytest.raises(ModelError, match="does not exist"):
        run_inference(str(shards), [f"timm:test_resnet@{tmp_path / 'missing.pth'}"], str(tmp_path / "o"))
    with pytest.raises(ModelError, match="cannot load timm model 'test_resnet'"):  # hub weights, offline
        run_inference(str(shards), ["timm:test_resnet"], str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_zoo_registry_and_the_22k_label_map(monkeypatch) -> None:
    import timm

    groups = pd.Series([e.group for e in ZOO.values()]).value_counts().to_dict()
    assert len(ZOO) == 29 and groups == {"22k-1k": 14, "1k": 11, "22k": 4}
    assert all(e.timm_name in timm.list_pretrained() for e in ZOO.values())
    mapping = label_map_22k_to_1k()
    # every 1k class but one has exactly one 22k output: "teddy, teddy bear" (n04399382, index 850) is not among the
    # 21,841 fall-2011 synsets, so a 22k-head model can never predict it
    assert len(mapping) == 21841 and sorted(mapping[mapping >= 0].tolist()) == [i for i in range(1000) if i != 850]

    # a 21841-way head is restricted to the 1k classes: probabilities over exactly the 1000 mapped outputs
    from laionet.inference import models

    torch.manual_seed(0)
    monkeypatch.setattr(models, "_create_timm", lambda name, w: timm.create_model(name, num_classes=21841).eval())
    model = load_image_model("timm:test_resnet@random")
    assert sorted(model.class_index.tolist()) == [i for i in range(1000) if i != 850]
    with torch.inference_mode():
        _, probs = model.forward(torch.randn(2, 3, 160, 160))
    assert probs.shape == (2, 999) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    from timm.data import ImageNetInfo

    wnids_1k = ImageNetInfo("imagenet-1k").label_names()
    assert model.info["class_wnids"] == [wnids_1k[i] for i in model.class_index]


def test_cli_infer(shards: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from laionet.cli import app

    out = tmp_path / "inf"
    result = CliRunner().invoke(
        app, ["infer", "--shards", str(shards), "--model", "timm:test_resnet@random", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "rows in=6 out=5 dropped: undecodable=1" in result.output
    assert json.loads((out / "timm-test_resnet-random" / "_manifest.json").read_text())["rows_out"] == 5
    bad = CliRunner().invoke(app, ["infer", "--shards", str(shards), "--model", "nope", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown model 'nope'" in bad.output
    assert os.path.exists(out)


def test_shard_batches_then_a_final_call_that_loads_no_model(shards: Path, tmp_path: Path) -> None:
    """The fan-out used by the infer flow: each task runs `only` some shards; the last call writes the manifests."""
    spec, out = "timm:test_resnet@random", tmp_path / "fan"
    assert run_inference(str(shards), [spec], str(out), only=["00000"], config=InferConfig(workers=0)) == {}
    model_dir = out / slug(spec)
    assert sorted(p.name for p in (model_dir / "_parts").iterdir()) == ["00000.json"]
    assert not (model_dir / "_manifest.json").exists()
    run_inference(str(shards), [spec], str(out), only=[str(shards / "00001.tar")], config=InferConfig(workers=0))

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded although every shard is done")

    manifest = run_inference(str(shards), [spec], str(out), builder=no_model)[spec]
    assert (manifest.rows_in, manifest.rows_out, manifest.extra["dim"]) == (6, 5, 96)
    assert read_manifest(str(model_dir)) == manifest


def test_out_of_memory_halves_the_batch_instead_of_failing() -> None:
    """The back-off path, on the CPU: a model that 'runs out of GPU memory' above 3 images per call."""
    model = load_image_model("timm:test_resnet@random")
    real = model.forward
    sizes: list[int] = []

    def small_memory(x):
        sizes.append(len(x))
        if len(x) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x)

    model.forward = small_memory
    runner = Runner(model, "cpu", "fp32", 5)
    x = torch.randn(10, 3, 160, 160)
    emb, scores = runner.forward(x)
    assert emb.shape == (10, 96) and scores.shape == (10, 1000)
    assert runner.chunk == 2 and sizes[:3] == [10, 5, 2]  # 10 → 5 → 2, then chunks of 2
    with torch.inference_mode():
        expected, _ = real(x)
    assert torch.allclose(emb, expected, atol=1e-5)  # same result as one batch
    sizes.clear()
    runner.forward(x)
    assert set(sizes) == {2}  # the reduced batch is remembered


def test_layout_names_the_directory_inference_writes(shards: Path, tmp_path: Path) -> None:
    from laionet.core.layout import inference_dir

    full = "open_clip:ViT-B-32-quickgelu@openai"
    assert inference_dir("run", "laionet", "clip") == inference_dir("run", "laionet", full)
    spec = "timm:test_resnet@random"
    run_inference(str(shards), [spec], str(tmp_path / "inference" / "laionet"), config=InferConfig(workers=0))
    assert read_manifest(inference_dir(str(tmp_path), "laionet", spec)).rows_out == 5


@pytest.mark.prefect
def test_decode_workers_start_in_a_process_that_ran_a_prefect_flow(prefect_harness, shards: Path, tmp_path) -> None:
    """The infer task runs inference inside a flow run, in a process with Prefect's client, event and log threads:
    forked decode workers died there at start ("DataLoader worker exited unexpectedly with exit code 1"), for both
    decoders; they now start from a forkserver and give the in-process result."""
    from prefect import flow

    @flow
    def noop() -> int:
        return 1

    assert noop() == 1  # Prefect's threads now run in this process
    spec = "timm:test_resnet@random"
    serial = run_inference(str(shards), [spec], str(tmp_path / "serial"), config=InferConfig(workers=0))[spec]
    for decode in ("cpu", "device"):
        config = InferConfig(workers=2, decode=decode, batch_size=2)  # type: ignore[arg-type]
        manifest = run_inference(str(shards), [spec], str(tmp_path / decode), config=config)[spec]
        assert (manifest.rows_in, manifest.rows_out, manifest.dropped) == (
            serial.rows_in,
            serial.rows_out,
            serial.dropped,
        )


def test_streaming_nothing_only_reports_done() -> None:
    """``stream.run`` with no shard left (a fanned-out group whose shards are done) builds no loader and reports the
    progress as complete."""
    from laionet.inference.stream import InferConfig, run

    seen: list[tuple[int, int]] = []
    run({}, {}, {}, {}, set(), InferConfig(), "cpu", lambda done, total: seen.append((done, total)))
    assert seen == [(1, 1)]
    run({}, {}, {}, {}, set(), InferConfig(), "cpu")  # and without a progress callback
