"""Where every artifact of a run lives: one place for the paths the flows, the demo, the CLI and the report share.

A run directory (local path or fsspec URL) holds::

    catalog.parquet, lemma_map_<mode>.parquet      class catalog and lemma map (build)
    corpus/ matches/ similarity/<encoder>/          corpus parts, matches, text-to-synset similarities (build)
    selection/                                      the LAIONet index: laionet.parquet, class_frequency, sweep, ...
    shards/ verify/ ocr/                            downloaded images, quarantine table, OCR flags (acquire)
    references/<dataset>/                           ingested reference datasets as shards (acquire)
    inference/<dataset>/<model slug>/               per-shard outputs of one model on one dataset (infer):
        <shard>.predictions.parquet                   key, topk (list<int32>, best first), scores (list<float32>),
                                                      own_score (float32: classifier probability of / CLIP
                                                      similarity to the sample's own class; NaN when unlabelled)
        <shard>.npy + <shard>.keys.parquet            image embeddings, float16 (N, D), L2-normalised; key
    variants/<variant>/labels.parquet               a dataset's evaluated samples: key, wnid, class_index
    evaluate/accuracy/<variant>/<model slug>/       per_class.parquet, summary.parquet (run_accuracy)
    evaluate/intra/<variant a>--<variant b>/<model> intra_a, intra_b, compare_bootstrap, compare_paper, summary
    evaluate/recall-difference/<a>--<b>/<model>/   per-class recall A − B with bounds (Appendix B)
    evaluate/own-similarity/<a>--<b>/<model>/      image-to-own-synset similarity, A resampled to B (Appendix C)
    evaluate/relations/<a>--<b>/                    recall vs intra-class, frequency vs intra-class, ...
    report/index.html + report/*.png                the self-contained report

``<dataset>`` is ``laionet`` for the downloaded LAIONet shards or the name of an ingested reference dataset;
``<variant>`` names a labelled subset of a dataset (e.g. ``laionet`` = text-only selection, ``laionet-image`` = the
image-filtered variant, ``imagenet-val``).

Dataset and variant names come from presets (files anyone with a deployment's parameters can name): each is checked to
be one plain path component (``check_name``), and every path built here is checked to lie under the run directory
(``inside``), so no name can make a stage write outside it.
"""

from __future__ import annotations

import os
import posixpath

from laionet.core.manifest import join


def check_name(name: str, field: str) -> str:
    """``name`` if it is one plain path component: not empty, no ``/`` or ``\\``, not ``.`` or ``..``, no NUL.

    Raises:
        ValueError: naming ``field`` and the bad value.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{field}: {name!r} is not a plain name (no path separators, '..' or absolute paths)")
    return name


def inside(run_dir: str, path: str) -> str:
    """``path`` if it lies under ``run_dir`` once ``..`` are resolved (lexically: links the user placed in the run
    directory are followed, as they always were).

    Raises:
        ValueError: the path leaves the run directory.
    """
    if "://" in run_dir or "://" in path:
        base, target = posixpath.normpath(run_dir), posixpath.normpath(path)
    else:
        base, target = os.path.normpath(os.path.abspath(run_dir)), os.path.normpath(os.path.abspath(path))
    if target != base and not target.startswith(base.rstrip("/") + "/"):
        raise ValueError(f"{path} is not inside the run directory {run_dir}")
    return path


def _under(run_dir: str, *parts: str, names: dict[str, str] | None = None) -> str:
    for field, name in (names or {}).items():
        check_name(name, field)
    return inside(run_dir, join(run_dir, *parts))


def slug(name: str) -> str:
    """A file-system-safe name for a model spec (``open_clip:ViT-B-32@openai`` → ``open_clip-ViT-B-32-openai``)."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-.") or "model"


def shards_dir(run_dir: str, dataset: str = "laionet") -> str:
    """The shard directory of ``dataset`` in a run."""
    if dataset == "laionet":
        return join(run_dir, "shards")
    return _under(run_dir, "references", dataset, names={"dataset": dataset})


def inference_dir(run_dir: str, dataset: str, model: str) -> str:
    """Where ``laionet.inference.engine`` writes ``model``'s outputs for ``dataset``: named after the canonical spec, so
    ``clip`` and ``open_clip:ViT-B-32-quickgelu@openai`` are the same directory."""
    from laionet.inference.models import canonical_model_spec

    return _under(run_dir, "inference", dataset, slug(canonical_model_spec(model)), names={"dataset": dataset})


def variant_labels(run_dir: str, variant: str) -> str:
    return _under(run_dir, "variants", variant, "labels.parquet", names={"variant": variant})


def accuracy_dir(run_dir: str, variant: str, model: str) -> str:
    return _under(run_dir, "evaluate", "accuracy", variant, slug(model), names={"variant": variant})


def intra_dir(run_dir: str, variant_a: str, variant_b: str, model: str) -> str:
    names = {"variant_a": variant_a, "variant_b": variant_b}
    return _under(run_dir, "evaluate", "intra", f"{variant_a}--{variant_b}", slug(model), names=names)


def relations_dir(run_dir: str) -> str:
    return join(run_dir, "evaluate", "relations")


def report_dir(run_dir: str) -> str:
    return join(run_dir, "report")


def stage_outputs(run_dir: str, exclude: tuple[str, ...] = ("report",)) -> list[str]:
    """Every completed stage output of a run (paths whose manifest exists), sorted; ``_parts`` records and the
    top-level directories in ``exclude`` left out."""
    from fsspec.core import url_to_fs

    from laionet.core.manifest import MANIFEST_NAME

    fs, root = url_to_fs(run_dir)
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    found = []
    for path in fs.find(root):
        rel = path[len(root) + 1 :]
        if rel.split("/", 1)[0] in exclude or "/_parts/" in f"/{rel}":
            continue
        if rel.endswith("/" + MANIFEST_NAME) or rel == MANIFEST_NAME:
            found.append(join(run_dir, rel.removesuffix(MANIFEST_NAME).rstrip("/")))
        elif rel.endswith(".parquet.manifest.json"):
            found.append(join(run_dir, rel.removesuffix(".manifest.json")))
    return sorted(found)


def dataset_of(variant: str) -> str:
    """The dataset whose shards and inference outputs a variant uses: ``laionet-image`` → ``laionet``."""
    return "laionet" if variant.startswith("laionet") else variant


def recall_difference_dir(run_dir: str, variant_a: str, variant_b: str, model: str) -> str:
    names = {"variant_a": variant_a, "variant_b": variant_b}
    return _under(run_dir, "evaluate", "recall-difference", f"{variant_a}--{variant_b}", slug(model), names=names)


def own_similarity_dir(run_dir: str, variant_a: str, variant_b: str, model: str) -> str:
    names = {"variant_a": variant_a, "variant_b": variant_b}
    return _under(run_dir, "evaluate", "own-similarity", f"{variant_a}--{variant_b}", slug(model), names=names)
