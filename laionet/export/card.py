"""The dataset card (``README.md``) of a run's Hugging Face export: YAML front matter declaring the configs, features,
splits and row counts, and a body saying what each config is, the counts by class, how the run was made (every stage
manifest's settings, config hash and code version), the licence situation of LAION's URLs and captions, and the paper
to cite.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from fsspec.core import url_to_fs

from laionet.core.layout import shards_dir
from laionet.core.manifest import MANIFEST_NAME, Manifest, code_version, join, read_manifest
from laionet.export.data import SPLIT

PAPER = 'Ali Shirali and Moritz Hardt, "What Makes ImageNet Look Unlike LAION", TMLR 2025'
CITATION = """@article{shirali2025laionet,
  title   = {What Makes {ImageNet} Look Unlike {LAION}},
  author  = {Shirali, Ali and Hardt, Moritz},
  journal = {Transactions on Machine Learning Research},
  year    = {2025}
}"""
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


__all__ = ["CITATION", "COLUMN_DOCS", "PAPER", "dataset_card", "stage_manifests"]
