"""The Hugging Face ``datasets`` export of a run: one parquet config per index variant, the WebDataset shards, and a
dataset card (``README.md``) whose YAML front matter declares the configs, features (``label`` a ``ClassLabel`` over
the catalog's class names), splits and row counts, so that ``datasets.load_dataset(<out>)`` needs no script and
``webdataset.WebDataset(<out>/shards/{…}.tar)`` reads the images.

The card's body says what each config is, the counts by class, how the run was made (every stage manifest's settings,
config hash and code version), the licence situation of LAION's URLs and captions, and the paper to cite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tarfile
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from fsspec.core import url_to_fs

from laionet.core.layout import shards_dir
from laionet.core.manifest import (
    MANIFEST_NAME,
    Manifest,
    Timer,
    code_version,
    config_hash,
    is_local,
    join,
    read_manifest,
)

STAGE = "export-hf"
SPLIT = "train"  # the whole dataset in one split, as Hugging Face names an unsplit dataset
ROWS_PER_FILE = 500_000
PAPER = 'Ali Shirali and Moritz Hardt, "What Makes ImageNet Look Unlike LAION", TMLR 2025'
CITATION = """@article{shirali2025laionet,
  title   = {What Makes {ImageNet} Look Unlike {LAION}},
  author  = {Shirali, Ali and Hardt, Moritz},
  journal = {Transactions on Machine Learning Research},
  year    = {2025}
}"""
# the index's columns, first those a classifier needs; other columns follow in the index's order
COLUMN_ORDER = ["key", "label", "wnid", "class_index", "text", "url", "text_similarity", "nsfw", "width", "height",
                "laion_similarity"]  # fmt: skip
COLUMN_DOCS = {
    "key": "stable sample key from the corpus (LAION: part/row or SAMPLE_ID); the shards' `json.key`",
    "label": "class label (`ClassLabel` over the catalog's class names; equals `class_index`)",
    "wnid": "WordNet synset id of the class (`n` + 8 digits)",
    "class_index": "the class's index in the catalog (ImageNet-1k: the sorted-wnid index timm/torchvision use)",
    "text": "the caption the sample was selected by",
    "url": "the image URL from the corpus",
    "text_similarity": "similarity of the caption to its class's synset text (name + definition), the selection score",
    "nsfw": "the corpus's NSFW tag",
    "width": "image width in the corpus metadata",
    "height": "image height in the corpus metadata",
    "laion_similarity": "the corpus's image-text CLIP similarity",
}
_DTYPES = {pa.string(): "string", pa.large_string(): "large_string", pa.int64(): "int64", pa.int32(): "int32",
           pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool"}  # fmt: skip
_VARIANT_DOCS = {
    "laionet-downloaded": "the index rows whose image was downloaded and verified (quarantined samples left out)",
    "laionet-image": "image-filtered: the downloaded rows whose class an image model agrees with (the paper's "
    "stand-in for image-based filtering, as ImageNet's annotators did)",
}
_log = logging.getLogger("laionet.export")


class ExportError(ValueError):
    """The run cannot be exported as asked (an existing output, a table the card cannot describe)."""


def export_hf(
    run_dir: str, out: str, *, force: bool = False, shards: bool = True, rows_per_file: int = ROWS_PER_FILE
) -> Manifest:
    """Write the run's LAIONet index (and its variants and shards, where present) to ``out`` as a Hugging Face
    ``datasets`` folder; built under ``<out>.tmp-<id>`` and renamed into place.

    Args:
        run_dir: the run directory (local path or fsspec URL); its selection stage must be complete.
        out: the folder to write; it must not exist or be empty, unless ``force`` (then it is replaced).
        force: replace a non-empty ``out``.
        shards: also export ``<run>/shards/*.tar`` when the download stage is complete.
        rows_per_file: rows per parquet file.

    Returns:
        The export's manifest (also written as ``<out>/_manifest.json``).

    Raises:
        FileNotFoundError: the selection stage of ``run_dir`` is missing or incomplete.
        ExportError: ``out`` exists and is not empty (without ``force``), or is a file.
    """
    timer = Timer()
    selection = join(run_dir, "selection")
    select_manifest = read_manifest(selection)
    if select_manifest is None:
        raise FileNotFoundError(
            f"{selection} has no complete selection (no {MANIFEST_NAME}): run the build stage first"
        )
    fs, target = url_to_fs(out)
    target = target.rstrip("/")
    if fs.exists(target):
        if not fs.isdir(target):
            raise ExportError(f"{out} exists and is a file")
        if fs.ls(target) and not force:
            raise ExportError(f"{out} exists and is not empty: pass --force to replace it")
    staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    fs.makedirs(staging, exist_ok=False)
    try:
        manifest = _write(run_dir, out, fs, staging, select_manifest, shards, rows_per_file, timer)
        _swap(fs, staging, target)
    except BaseException:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
        raise
    _log.info("exported %s → %s", run_dir, out)
    return manifest


def _write(
    run_dir: str,
    out: str,
    fs: Any,
    staging: str,
    select_manifest: Manifest,
    shards: bool,
    rows_per_file: int,
    timer: Timer,
) -> Manifest:
    names, wnids = class_names(_catalog_path(run_dir, select_manifest))
    index = _read_table(join(run_dir, "selection", "laionet.parquet"))
    configs = [("laionet", "the LAIONet index: every caption selected by text alone", index)]
    for path in select_manifest.outputs:
        found = re.fullmatch(r"top(\d+)\.parquet", path.rsplit("/", 1)[-1])
        if found:
            configs.append((f"laionet-top{found.group(1)}", f"the {found.group(1)} most similar rows of each class",
                            _read_table(path)))  # fmt: skip
    configs += _variant_configs(run_dir, index)

    outputs, infos, rows = [], [], {}
    for name, _, table in configs:
        table = with_label(table)
        rows[name] = table.num_rows
        files = max(1, math.ceil(table.num_rows / rows_per_file))
        fs.makedirs(f"{staging}/data/{name}", exist_ok=True)
        for i in range(files):
            file = f"data/{name}/{SPLIT}-{i:05d}-of-{files:05d}.parquet"
            with fs.open(f"{staging}/{file}", "wb") as handle:
                pq.write_table(table.slice(i * rows_per_file, rows_per_file), handle, compression="zstd")
            outputs.append(join(out, file))
        infos.append(
            {
                "config_name": name,
                "features": features(table.schema, names),
                "splits": [{"name": SPLIT, "num_examples": table.num_rows}],
            }
        )

    shard_info = _copy_shards(run_dir, fs, staging) if shards else None
    if shard_info:
        outputs += [join(out, "shards", n) for n in shard_info["files"]]
    stages = stage_manifests(run_dir, select_manifest)
    card = dataset_card(
        configs=[(n, doc, rows[n]) for n, doc, _ in configs],
        infos=infos,
        index=index,
        names=names,
        wnids=wnids,
        stages=stages,
        select_manifest=select_manifest,
        shard_info=shard_info,
    )
    with fs.open(f"{staging}/README.md", "w") as handle:
        handle.write(card)
    outputs.insert(0, join(out, "README.md"))
    settings = {"run_dir": run_dir, "shards": shards, "rows_per_file": rows_per_file}
    manifest = Manifest(
        stage=STAGE,
        config={**settings, "out": out},
        config_hash=config_hash({**settings, "selection": select_manifest.config_hash}),
        inputs=[join(run_dir, "selection")] + ([shards_dir(run_dir)] if shard_info else []),
        outputs=outputs,
        rows_in=index.num_rows,
        rows_out=index.num_rows,
        wall_time_s=timer.elapsed,
        extra={"configs": rows, "classes": len(names), "shards": len(shard_info["files"]) if shard_info else 0},
    )
    manifest.check_counts()
    with fs.open(f"{staging}/{MANIFEST_NAME}", "w") as handle:  # renamed into place with the rest
        handle.write(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _swap(fs: Any, staging: str, target: str) -> None:
    """Put the finished ``staging`` folder at ``target``, replacing what is there (``export_hf`` checked ``force``)."""
    old = None
    if fs.exists(target):
        old = f"{target}.old-{uuid.uuid4().hex[:8]}"
        _rename(fs, target, old)
    _rename(fs, staging, target)
    if old is not None:
        fs.rm(old, recursive=True)


def _rename(fs: Any, source: str, destination: str) -> None:
    if is_local(fs):
        os.replace(source, destination)  # never fsspec's mv: onto an existing directory it moves *into* it
    else:
        fs.mv(source, destination, recursive=True)


def _read_table(path: str) -> pa.Table:
    with fsspec.open(path, "rb") as handle:
        return pq.read_table(handle)


def _catalog_path(run_dir: str, select_manifest: Manifest) -> str:
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


def _variant_configs(run_dir: str, index: pa.Table) -> list[tuple[str, str, pa.Table]]:
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


def _copy_shards(run_dir: str, fs: Any, staging: str) -> dict[str, Any] | None:
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


def stage_manifests(run_dir: str, select_manifest: Manifest) -> list[tuple[str, Manifest]]:
    """(output, manifest) of every complete stage the export describes: the build stages (catalog, lemma map, matches,
    similarity, selection) and, where present, download, verify, OCR and the variants."""
    targets = [join(run_dir, "catalog.parquet")]
    matches = read_manifest(join(run_dir, "matches"))
    if matches is not None and isinstance(matches.config.get("lemma_map"), str):
        targets.append(matches.config["lemma_map"])
    targets.append(join(run_dir, "matches"))
    if isinstance(select_manifest.config.get("similarity"), str):
        targets.append(select_manifest.config["similarity"])
    targets += [join(run_dir, "selection"), shards_dir(run_dir), join(run_dir, "verify"), join(run_dir, "ocr")]
    targets.insert(0, join(run_dir, "corpus"))  # the demo's openclipart corpus, built in the run
    fs, root = url_to_fs(join(run_dir, "variants"))
    if fs.isdir(root):
        variants = sorted(p.rstrip("/").split("/")[-2] for p in fs.glob(f"{root}/*/{MANIFEST_NAME}"))
        targets += [join(run_dir, "variants", v) for v in variants]
    found = []
    for target in dict.fromkeys(targets):
        try:
            manifest = read_manifest(target)
        except (OSError, ValueError):
            continue
        if manifest is not None:
            found.append((_relative(run_dir, target), manifest))
    return found


def _relative(run_dir: str, path: str) -> str:
    base = run_dir.rstrip("/") + "/"
    return path[len(base) :] if path.startswith(base) else path


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def dataset_card(
    *,
    configs: list[tuple[str, str, int]],
    infos: list[dict[str, Any]],
    index: pa.Table,
    names: list[str],
    wnids: list[str],
    stages: list[tuple[str, Manifest]],
    select_manifest: Manifest,
    shard_info: dict[str, Any] | None,
) -> str:
    """The ``README.md``: YAML front matter (configs, features, splits, licence, tags) and the card's body."""
    front = {
        "pretty_name": "LAIONet",
        "license": "other",
        "license_name": "laion-urls-and-captions",
        "task_categories": ["image-classification"],
        "tags": ["laion", "imagenet", "laionet", "webdataset"],
        "size_categories": [_size_category(index.num_rows)],
        "configs": [
            {
                "config_name": name,
                "data_files": [{"split": SPLIT, "path": f"data/{name}/{SPLIT}-*.parquet"}],
                **({"default": True} if name == "laionet" else {}),
            }
            for name, _, _ in configs
        ],
        "dataset_info": infos,
    }
    extra = select_manifest.extra
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000).rstrip(),
        "---",
        "",
        "# LAIONet",
        "",
        "ImageNet recreated from an image-text corpus by selecting on captions alone, as in "
        f"{PAPER}: a caption is selected for a class when it contains one of the class's WordNet lemmas, names no "
        "other class, and its text is similar enough to the class's synset text (name and definition).",
        "",
        f"This export holds {index.num_rows:,} samples over {len(set(index['wnid'].to_pylist())):,} of the "
        f"{len(names):,} classes of the run's catalog; text encoder `{extra.get('encoder', '?')}`, threshold "
        f"{extra.get('threshold', '?')} ({extra.get('threshold_rule', '?')}).",
        "",
        "## Configs",
        "",
        f"Each config has one split, `{SPLIT}` (the whole dataset: LAIONet is an evaluation set).",
        "",
        "| config | rows | what |",
        "|---|---:|---|",
        *(f"| `{name}` | {n:,} | {_cell(doc)} |" for name, doc, n in configs),
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("path/to/this/folder")  # the default config, `laionet`',
        'ds["train"].features["label"].int2str(0)',
        *(['other = load_dataset("path/to/this/folder", "' + configs[1][0] + '")'] if len(configs) > 1 else []),
        "```",
        "",
    ]
    if shard_info:
        members = ", ".join(f"`{m}`" for m in shard_info["members"])
        lines += [
            f"The images are in `shards/` as WebDataset tar shards ({len(shard_info['tars'])} shards, "
            f"{shard_info['samples']:,} samples; members {members}; `json` holds `key`, `wnid` and `class_index`, "
            "`key` joins the parquet tables):",
            "",
            "```python",
            "import webdataset as wds",
            "",
            f'ds = wds.WebDataset("path/to/this/folder/shards/{shard_info["pattern"]}").decode("pil")',
            "```",
            "",
        ]
    else:
        lines += ["No images are included (the run's download is missing or incomplete): fetch them by `url`.", ""]
    lines += [
        "## Fields",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
        *(
            f"| `{f['name']}` | {'ClassLabel' if f['name'] == 'label' else f['dtype']} | "
            f"{_cell(COLUMN_DOCS.get(f['name'], ''))} |"
            for f in infos[0]["features"]
        ),
        "",
        "## Counts by class",
        "",
        "The `laionet` config; classes without a sample are not listed.",
        "",
        "| label | wnid | name | samples | share |",
        "|---:|---|---|---:|---:|",
    ]
    counts = pc.value_counts(index["class_index"]).to_pylist()
    total = max(index.num_rows, 1)
    for row in sorted(counts, key=lambda r: (-r["counts"], r["values"])):
        label = int(row["values"])
        name = names[label] if 0 <= label < len(names) else "?"
        wnid = wnids[label] if 0 <= label < len(wnids) else "?"
        lines.append(f"| {label} | {wnid} | {_cell(name)} | {row['counts']:,} | {row['counts'] / total:.2%} |")
    lines += [
        "",
        "## How it was made",
        "",
        f"Written by `laionet export hf` (code {code_version()}) from the run's stage manifests:",
        "",
        "| stage | output | rows in | rows out | config hash | code version |",
        "|---|---|---:|---:|---|---|",
        *(
            f"| {m.stage} | `{_cell(path)}` | {m.rows_in:,} | {m.rows_out:,} | `{m.config_hash[:12]}` | "
            f"`{m.code_version}` |"
            for path, m in stages
        ),
        "",
        "Settings of each stage (from its manifest):",
        "",
        "```yaml",
        yaml.safe_dump(
            {path: {"stage": m.stage, **m.config} for path, m in stages},
            sort_keys=True,
            allow_unicode=True,
            width=1000,
        ).rstrip(),
        "```",
        "",
        "## Licence",
        "",
        *(
            [
                "This run's corpus is Debian's openclipart clip art, whose images and metadata are public domain "
                "(CC0), not LAION: what follows applies to runs on LAION.",
                "",
            ]
            if any(m.stage == "corpus-openclipart" for _, m in stages)
            else []
        ),
        "The rows derive from the corpus the run selected from. LAION-400M's metadata (URLs, captions and the other "
        "columns) is released by LAION under CC-BY 4.0; LAION does not own the images, which stay under the "
        "copyright and terms of their owners and web sites, and many URLs no longer resolve. This export is meant "
        "for research on datasets; it makes no licence claim over the images. Where images are included, they were "
        "downloaded from the URLs"
        + (
            " honouring `X-Robots-Tag` noai/noindex opt-outs"
            if shard_info and shard_info["download"].config.get("respect_opt_out")
            else ""
        )
        + "; anyone redistributing them is responsible for their rights, and removal requests should be honoured. "
        "The class names and definitions come from WordNet 3.0 (WordNet licence).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = ["CITATION", "ExportError", "class_names", "dataset_card", "export_hf", "shard_pattern"]
