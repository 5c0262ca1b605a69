import json
import tarfile

import pytest
from PIL import Image

from laionet.images.references import ingest
from laionet.images.shards import iter_samples

LION, COUGAR, TENCH = "n02129165", "n02125311", "n01440764"


def _save(path, mode="RGB", fmt="JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (20, 10), 100 if mode == "L" else (1, 2, 3, 4)[: len(mode)]).save(path, format=fmt)


def _samples(manifest):
    return [s for shard in manifest.outputs for s in iter_samples(shard)]


def test_imagenet_val_with_a_labels_file(tmp_path) -> None:
    root = tmp_path / "val"
    _save(root / "ILSVRC2012_val_00000001.JPEG")
    _save(root / "ILSVRC2012_val_00000002.JPEG", mode="L")  # grayscale: converted, not dropped
    _save(root / "ILSVRC2012_val_00000003.JPEG", mode="CMYK")
    (root / "ILSVRC2012_val_00000004.JPEG").write_bytes(b"broken")
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{LION} 1 2 3 4\nILSVRC2012_val_00000002,{COUGAR} 1 2 3 4\n"
        f"ILSVRC2012_val_00000003,{TENCH} 1 2 3 4\nILSVRC2012_val_00000004,{LION} 1 2 3 4\n"
        f"ILSVRC2012_val_00000005,{LION} 1 2 3 4\n"
    )
    manifest = ingest("imagenet-val", str(tmp_path / "out"), per_shard=2, root=root, labels=labels)
    assert manifest.rows_in == 5 and manifest.rows_out == 3
    assert manifest.dropped == {"missing_image": 1, "unreadable_image": 1, "not_imagenet1k": 0}
    samples = _samples(manifest)
    assert len(manifest.outputs) == 2 and next(k for k, _, _ in samples) == "imagenet-val/ILSVRC2012_val_00000001"
    assert all(image.mode == "RGB" for _, image, _ in samples)
    assert {m["class_index"] for _, _, m in samples} == {291, 286, 0}


def test_imagenetv2_folders_and_class_info(tmp_path) -> None:
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    for cid in (0, 291):
        for i in range(2):
            _save(root / str(cid) / f"{i}.jpeg", mode="RGBA", fmt="PNG")
    info = tmp_path / "class_info.json"
    info.write_text(json.dumps([{"cid": 0, "wnid": TENCH}, {"cid": 291, "wnid": LION}]))
    manifest = ingest("imagenetv2", str(tmp_path / "out"), root=root, class_info=info)
    samples = _samples(manifest)
    assert manifest.rows_out == 4
    assert {m["wnid"] for _, _, m in samples} == {TENCH, LION}
    assert samples[0][0] == "imagenetv2-imagenetv2-matched-frequency-format-val/0/0"


def test_imagenet_captions_text_and_duplicates(tmp_path) -> None:
    images = tmp_path / "imgs"
    _save(images / "n02129165_1.JPEG")
    records = [
        {
            "filename": "n02129165_1.JPEG",
            "title": "Big cat",
            "tags": ["lion", "zoo"],
            "description": "asleep",
            "wnid": LION,
        },
        {"filename": "n02129165_1.JPEG", "title": "dup", "tags": [], "description": "", "wnid": LION},
        {"filename": "x.JPEG", "title": "t", "tags": [], "description": "", "wnid": "n99999999"},
    ]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(records))
    manifest = ingest("imagenet-captions", str(tmp_path / "out"), captions=captions, images=images)
    assert (manifest.rows_in, manifest.rows_out, manifest.dropped["not_imagenet1k"]) == (2, 1, 1)
    with pytest.raises(FileNotFoundError, match=r"images .* does not exist"):
        ingest("imagenet-captions", str(tmp_path / "o2"), captions=captions, images=tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown reference dataset"):
        ingest("imagenet-sketch", str(tmp_path / "o3"))


def test_caption_text_is_title_tags_description(tmp_path) -> None:
    images = tmp_path / "imgs"
    _save(images / "a.JPEG")
    captions = tmp_path / "c.json"
    captions.write_text(
        json.dumps(
            [{"filename": "a.JPEG", "title": "Big cat", "tags": ["lion", "zoo"], "description": "asleep", "wnid": LION}]
        )
    )
    manifest = ingest("imagenet-captions", str(tmp_path / "out"), captions=captions, images=images)
    ((key, _image, meta),) = _samples(manifest)
    assert key == "imagenet-captions/a" and meta["dataset"] == "imagenet-captions"
    with tarfile.open(manifest.outputs[0]) as tar:
        txt = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".txt"))).read().decode()
    assert txt == "Big cat lion zoo asleep"
