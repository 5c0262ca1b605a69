"""The model-side label maps that decide every accuracy: the 22k head's columns, column by column against timm's synset
lists, and the zero-shot prompts against the catalog's synset texts (issue 13)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from laionet.inference import models
from laionet.inference.models import label_map_22k_to_1k, load_image_model

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"


def test_22k_to_1k_map_column_by_column_against_timms_synset_lists() -> None:
    from timm.data import ImageNetInfo

    names_22k = ImageNetInfo("imagenet-22k").label_names()
    names_1k = ImageNetInfo("imagenet-1k").label_names()
    mapping = label_map_22k_to_1k()
    assert len(mapping) == len(names_22k) == 21841
    position_1k = {wnid: i for i, wnid in enumerate(names_1k)}
    for column, wnid in enumerate(names_22k):  # a plain loop over every column of the 22k head
        expected = position_1k.get(wnid, -1)
        assert mapping[column] == expected, (column, wnid)


@pytest.mark.parametrize("wnid", ["n07920052", "n02123159", "n01440764"])  # espresso, tiger cat, tench (index 0)
def test_22k_head_reads_the_column_of_each_class(monkeypatch, wnid: str) -> None:
    """A 21,841-way head whose only non-zero output is the column of ``wnid``: the prediction is that 1k class."""
    import timm
    from timm.data import ImageNetInfo

    column = ImageNetInfo("imagenet-22k").label_names().index(wnid)
    target = ImageNetInfo("imagenet-1k").label_names().index(wnid)

    def create(name: str, weights: str | None) -> torch.nn.Module:
        module = timm.create_model(name, num_classes=21841).eval()
        head = module.get_classifier()
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[column] = 20.0
        return module

    monkeypatch.setattr(models, "_create_timm", create)
    model = load_image_model("timm:test_resnet@random")
    with torch.inference_mode():
        _, probs = model.forward(torch.randn(1, 3, 160, 160))
    best = int(probs[0].argmax())
    assert int(model.class_index[best]) == target and float(probs[0, best]) > 0.9
    assert model.info["class_wnids"][best] == wnid


def test_zero_shot_prompts_are_the_catalogs_synset_texts(tmp_path: Path, tiny_clip: str, catalog_1k) -> None:
    """The texts an open_clip model is prompted with are the catalog's ``"<name> which is <definition>"``, in class
    order — not bare class names."""
    from PIL import Image

    from laionet.images.shard_writer import ShardWriter
    from laionet.inference.engine import run_inference

    buffer = io.BytesIO()
    Image.open(SKIMAGE / "coffee.png").convert("RGB").save(buffer, format="JPEG")
    writer = ShardWriter(str(tmp_path / "shards"), per_shard=4)
    writer.write("photo/coffee", buffer.getvalue(), "espresso", {"wnid": "n07920052", "class_index": 967})
    writer.close()
    catalog_path = tmp_path / "catalog.parquet"
    catalog_1k.to_parquet(catalog_path)
    seen = {}

    def builder(spec, **kwargs):
        seen.update(kwargs)
        return load_image_model(spec, **kwargs)

    spec = f"open_clip:{tiny_clip}@random"
    run_inference(str(tmp_path / "shards"), [spec], str(tmp_path / "out"), catalog_path=str(catalog_path),
                  builder=builder)  # fmt: skip
    texts, index = list(seen["class_texts"]), list(seen["class_index"])
    assert texts == list(catalog_1k["synset_text"]) and index == list(catalog_1k["class_index"])
    for text, name in zip(texts, catalog_1k["name"], strict=True):
        assert text.startswith(f"{name} which is ") and len(text) > len(name) + len(" which is ")
    espresso = texts[index.index(967)]
    assert espresso.startswith("espresso which is ") and "coffee" in espresso
