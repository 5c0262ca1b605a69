"""The contents of a run's Hugging Face export: the index and its variant tables (with ``label`` and the card's
``features``), the catalog's class names, and the run's WebDataset shards copied (or hard-linked) into the folder.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.layout import shards_dir
from laionet.core.manifest import Manifest, is_local, join, read_manifest

SPLIT = "train"  # the whole dataset in one split, as Hugging Face names an unsplit dataset
# the index's columns, first those a classifier needs; other columns follow in the index's order
COLUMN_ORDER = ["key", "label", "wnid", "class_index", "text", "url", "text_similarity", "nsfw", "width", "height",
                "laion_similarity"]  # fmt: skip
_DTYPES = {pa.string(): "string", pa.large_string(): "large_string", pa.int64(): "int64", pa.int32(): "int32",
           pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool"}  # fmt: skip
_VARIANT_DOCS = {
    "laionet-downloaded": "the index rows whose image was downloaded and verified (quarantined samples left out)",
    "laionet-image": "image-filtered: the downloaded rows whose class an image model agrees with (the paper's "
    "stand-in for image-based filtering, as ImageNet's annotators did)",
}


class ExportError(ValueError):
    """The run cannot be exported as asked (an existing output, a table the card cannot describe)."""


def read_table(path: str) -> pa.Table:
    with fsspec.open(path, "rb") as handle:
        return pq.read_table(handle)


def catalog_path(run_dir: str, select_manifest: Manifest) -> str:
    """The run's catalog; else the one the selection read."""
    path = join(run_dir, "catalog.parquet")
    fs, real = url_to_fs(path)
    return path if fs.exists(real) else select_manifest.inputs[-1]


def class_names(catalog_path: str) -> tuple[list[str], list[str]]:
    """The catalog's class names and wnids in ``class_index`` order; a name shared by several classes (ImageNet-1k's two
    "crane"s) gets its wnid appended, so every ``ClassLabel`` name is unique."""
    from laionet.text.catalog import read_catalog

    catalog = read_catalog(catalog_path).sort_values("class_index")
    if catalog["class_index"].tolist() != list(range(len(catalog))):
        raise ExportError(f"{catalog_path}: class_index is not 0..{len(catalog) - 1}")
    names, wnids = catalog["name"].astype(str).tolist(), catalog["wnid"].astype(str).tolist()
    shared = {n for n in names if names.count(n) > 1}
    return [f"{n} ({w})" if n in shared else n for n, w in zip(names, wnids, strict=True)], wnids


def with_label(table: pa.Table) -> pa.Table:
    """The index with ``label`` (= ``class_index``) and the columns in ``COLUMN_ORDER``."""
    if "label" not in table.column_names:
        table = table.append_column("label", table["class_index"].cast(pa.int64()))
    order = [c for c in COLUMN_ORDER if c in table.column_names]
    return table.select(order + [c for c in table.column_names if c not in order])


def features(schema: pa.Schema, names: list[str]) -> list[dict[str, Any]]:
    """The card's ``features`` of a table: ``label`` a ``ClassLabel`` over ``names``, the rest by their Arrow type."""
    found: list[dict[str, Any]] = []
    for field in schema:
        if field.name == "label":
            found.append(
                {"name": "label", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}}
            )
        elif field.type in _DTYPES:
            found.append({"name": field.name, "dtype": _DTYPES[field.type]})
        else:
            raise ExportError(f"column {field.name!r} has type {field.type}, which the card cannot declare")
    return found


def variant_configs(run_dir: str, index: pa.Table) -> list[tuple[str, str, pa.Table]]:
    """A config per complete ``variants/<v>/`` whose keys all lie in the index (the downloaded, image-filtered, ...
    subsets of LAIONet; reference datasets are not): the index rows of its keys, in index order."""
    fs, root = url_to_fs(join(run_dir, "variants"))
    if not fs.isdir(root):
        return []
    keys = set(index["key"].to_pylist())
    configs = []
    for labels in sorted(fs.glob(f"{root}/*/labels.parquet")):
        variant = labels.rstrip("/").split("/")[-2]
        directory = join(run_dir, "variants", variant)
        if read_manifest(directory) is None:
            continue
        with fs.open(labels, "rb") as handle:
            wanted = pq.read_table(handle, columns=["key"])["key"]
        if not set(wanted.to_pylist()) <= keys:
            continue
        name = "laionet-downloaded" if variant == "laionet" else variant
        doc = _VARIANT_DOCS.get(name, f"the index rows of the run's variant `{variant}` (`variants/{variant}/`)")
        configs.append((name, doc, index.filter(pc.is_in(index["key"], value_set=wanted))))
    return configs


def copy_shards(run_dir: str, fs: Any, staging: str) -> dict[str, Any] | None:
    """Copy (hard-link where possible) the final ``<run>/shards/*.tar`` (never ``_attempts/``) and ``_info.json`` into
    ``<staging>/shards/``; None when the download stage is not complete or wrote no shard."""
    source = shards_dir(run_dir)
    download = read_manifest(source)
    sfs, root = url_to_fs(source)
    tars = sorted(p.rsplit("/", 1)[-1] for p in sfs.glob(f"{root}/*.tar")) if sfs.isdir(root) else []
    if download is None or not tars:
        return None
    fs.makedirs(f"{staging}/shards", exist_ok=True)
    extras = [n for n in ("_info.json",) if sfs.exists(f"{root}/{n}")]
    for name in tars + extras:
        src, dst = f"{root}/{name}", f"{staging}/shards/{name}"
        if is_local(sfs) and is_local(fs):
            try:
                os.link(src, dst)  # shards are never rewritten in place (atomic renames), so a link is safe
                continue
            except OSError:
                shutil.copyfile(src, dst)
                continue
        with sfs.open(src, "rb") as a, fs.open(dst, "wb") as b:
            shutil.copyfileobj(a, b, 1 << 20)
    with sfs.open(f"{root}/{tars[0]}", "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
        members = sorted({m.name.split(".", 1)[1] for m in tar if m.isfile() and "." in m.name})
    return {"files": tars + extras, "tars": tars, "pattern": shard_pattern(tars), "members": members,
            "samples": download.rows_out, "download": download}  # fmt: skip


def shard_pattern(tars: list[str]) -> str:
    """The brace pattern webdataset expands to exactly these names (``{00000..00003}.tar``), else a comma list."""
    stems = [t[: -len(".tar")] for t in tars]
    width = len(stems[0])
    if all(s.isdigit() and len(s) == width for s in stems):
        numbers = [int(s) for s in stems]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return stems[0] + ".tar" if len(stems) == 1 else f"{{{stems[0]}..{stems[-1]}}}.tar"
    return "{" + ",".join(stems) + "}.tar" if len(stems) > 1 else tars[0]


__all__ = [
    "COLUMN_ORDER",
    "SPLIT",
    "ExportError",
    "catalog_path",
    "class_names",
    "copy_shards",
    "features",
    "read_table",
    "shard_pattern",
    "variant_configs",
    "with_label",
]
