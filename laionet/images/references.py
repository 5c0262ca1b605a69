"""Reference datasets → the same WebDataset shard format as downloaded LAIONet samples.

Reads one of three layouts and writes ``<out>/NNNNN.tar`` + ``NNNNN.parquet`` shards (samples: RGB JPEG, text,
json with ``key``, ``wnid``, ``class_index``, ``dataset``, and ``cls``: the ImageNet-1k class index as text), then
``_info.json`` (classes, counts, timm's split: ``SPLITS``) and the manifest; unreadable images and rows whose wnid
is not an ImageNet-1k class are skipped and counted. Samples stream into the shards one at a time
(``shard_writer.ShardWriter``): memory holds one image, not a shard.
- ImageNet val: a folder of ``ILSVRC2012_val_%08d.JPEG`` and a labels file, either ``<filename> <wnid>`` lines
  (whitespace or comma separated) or Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``).
- ImageNetV2: a variant folder of class-id sub-folders ``0..999`` and ``class_info.json`` (``cid`` → ``wnid``).
  Paper letters: a = threshold0.7, b = matched-frequency, c = top-images.
- ImageNet-Captions: its JSON list of ``{filename, title, tags, description, wnid}`` and the image folder;
  text = ``" ".join([title] + tags + [description])``; repeated filenames are kept once. Each ``filename`` must be a
  plain name inside the image folder (no separators, ``..`` or absolute paths): a file with any other is refused
  before anything is read or written, with an error naming the record.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from laionet.core.layout import check_name
from laionet.core.manifest import Manifest, Timer, config_hash, write_manifest
from laionet.core.stage import prune, stage_rebuild
from laionet.images.shard_writer import ShardWriter, encode_rgb_jpeg, remove_shard_info, write_shard_info
from laionet.text.catalog import load_class_set

IMAGENETV2_VARIANTS = {"a": "threshold0.7", "b": "matched-frequency", "c": "top-images"}

SPLITS = {"imagenet-val": "validation", "imagenetv2": "test", "imagenet-captions": "train"}  # _info.json's split

Item = tuple[str, Path, str, str]  # key, image path, wnid, text


def _imagenet_val(root: Path, labels: Path) -> Iterator[Item]:
    with labels.open() as f:
        first = f.readline()
        f.seek(0)
        if first.startswith("ImageId"):
            rows = [(r["ImageId"], r["PredictionString"].split()[0]) for r in csv.DictReader(f)]
        else:
            rows = [tuple(line.replace(",", " ").split()[:2]) for line in f if line.strip()]  # type: ignore[misc]
    for name, wnid in rows:
        stem = Path(name).stem
        yield f"imagenet-val/{stem}", root / f"{stem}.JPEG", wnid, ""


def _imagenetv2(root: Path, class_info: Path) -> Iterator[Item]:
    cid_to_wnid = {int(r["cid"]): r["wnid"] for r in json.loads(class_info.read_text())}
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        for image in sorted(folder.iterdir()):
            yield f"imagenetv2-{root.name}/{folder.name}/{image.stem}", image, cid_to_wnid[int(folder.name)], ""


def _imagenet_captions(captions: Path, images: Path) -> Iterator[Item]:
    """Every record's file name is checked first (a list is built: nothing is read from the image folder before)."""
    seen: set[str] = set()
    items: list[Item] = []
    for i, record in enumerate(json.loads(captions.read_text())):
        name = check_name(record["filename"], f"{captions}: record {i}: filename")
        if name in seen:
            continue
        seen.add(name)
        text = " ".join([record.get("title") or "", *(record.get("tags") or []), record.get("description") or ""])
        items.append((f"imagenet-captions/{Path(name).stem}", images / name, record["wnid"], " ".join(text.split())))
    return iter(items)


_log = logging.getLogger("laionet.ingest")


def ingest(kind: str, out_dir: str, per_shard: int = 10_000, **paths: Path) -> Manifest:
    """Ingest a reference dataset layout (``kind``: imagenet-val, imagenetv2, imagenet-captions) into shards.

    Paths: imagenet-val: ``root``, ``labels``; imagenetv2: ``root``, ``class_info``; imagenet-captions:
    ``captions``, ``images``.
    """
    timer = Timer()
    _log.info("ingest of %s from %s → %s", kind, {k: str(v) for k, v in paths.items()}, out_dir)
    readers = {
        "imagenet-val": lambda: _imagenet_val(paths["root"], paths["labels"]),
        "imagenetv2": lambda: _imagenetv2(paths["root"], paths["class_info"]),
        "imagenet-captions": lambda: _imagenet_captions(paths["captions"], paths["images"]),
    }
    if kind not in readers:
        raise ValueError(f"unknown reference dataset {kind!r}; expected one of {sorted(readers)}")
    for name, path in paths.items():
        if not path.exists():
            raise FileNotFoundError(f"{kind}: {name} {path} does not exist")
    items = readers[kind]()  # ImageNet-Captions' file names are checked here, before the output is touched
    with stage_rebuild(out_dir, f"ingest-{kind}"):
        remove_shard_info(out_dir)  # written again, with the manifest, when the ingest ends
        class_index = {w: i for i, w in enumerate(load_class_set("imagenet1k"))}
        dropped = {"missing_image": 0, "unreadable_image": 0, "not_imagenet1k": 0}
        rows_in = 0
        with ShardWriter(out_dir, per_shard) as writer:  # streams: one image in memory at a time
            for key, image, wnid, text in items:
                rows_in += 1
                if wnid not in class_index:
                    dropped["not_imagenet1k"] += 1
                    continue
                if not image.is_file():
                    dropped["missing_image"] += 1
                    continue
                try:
                    jpg = encode_rgb_jpeg(image.read_bytes())
                except OSError:
                    dropped["unreadable_image"] += 1
                    continue
                writer.write(key, jpg, text, {"wnid": wnid, "class_index": class_index[wnid], "dataset": kind})
        outputs = writer.outputs
        config = {"kind": kind, **{k: str(v) for k, v in paths.items()}, "per_shard": per_shard}
        manifest = Manifest(
            stage=f"ingest-{kind}",
            config=config,
            config_hash=config_hash(config),
            inputs=[str(p) for p in paths.values()],
            outputs=outputs,
            rows_in=rows_in,
            rows_out=rows_in - sum(dropped.values()),
            dropped=dropped,
            wall_time_s=timer.elapsed,
        )
        listings = [o.removesuffix(".tar") + ".parquet" for o in outputs]
        prune(out_dir, [*outputs, *listings], ["*.tar", "*.parquet"])  # shards of an earlier, larger ingest
        shards = list(zip(outputs, writer.lengths, strict=True))
        write_shard_info(out_dir, shards, writer.by_wnid, SPLITS[kind], f"ingest-{kind}")
        write_manifest(out_dir, manifest)
        return manifest
