"""Run presets: every setting of a whole pipeline run in one validated object.

``demo`` is the offline default (Debian's openclipart clip art, MiniLM text encoder, EfficientNet-Lite0 classifier and
image encoder, RapidOCR); ``laion400m`` is the paper's setting (LAION-400M parquet parts, CLIP ViT-B/32 text and
image towers, threshold 0.82, the 29 classifiers, ImageNet val as the reference). A preset is picked by name or read
from a JSON/YAML file, and single fields are overridden on top (``load_preset("laion400m", max_parts=1)``).

Paths in ``laion400m`` are placeholders relative to the working directory (``data/...``): point them at your copies
(``corpus``, ``references``), e.g. with a preset file of your own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from laionet.core.layout import check_name
from laionet.inference.models import ZOO
from laionet.text.normalize import Mode


class ImageFilter(BaseModel):
    """The image-filtered variant: keep a text-selected sample only if ``model`` agrees with its class — its class is
    among the model's top ``k`` (rule ``topk``), or the model's score of its class is at least ``threshold``
    (rule ``own_score``: a classifier probability, or a CLIP image-to-synset cosine)."""

    model: str = "efficientnet_lite0"
    rule: Literal["topk", "own_score"] = "topk"
    k: int = Field(5, ge=1)
    threshold: float | None = None


class Reference(BaseModel):
    """A reference dataset to ingest (``laionet.images.references.ingest``): its kind and the paths it needs."""

    kind: Literal["imagenet-val", "imagenetv2", "imagenet-captions"]
    paths: dict[str, str]


class NearestCaptions(BaseModel):
    """Section 4.3: the nearest corpus caption of every labelled query caption, downloaded and compared."""

    queries: str | None = Field(
        None,
        description="labelled query captions (ImageNet-Captions JSON, or parquet key/text/wnid); None: the captions "
        "of the run's variant `stand_in` (the offline stand-in)",
    )
    stand_in: str = Field("laionet-image", description="the variant whose captions are the queries when none given")
    corpus: str | None = Field(None, description="the searched corpus (parquet parts); None: the preset's corpus")
    embeddings: str | None = Field(
        None,
        description="caption embeddings in clip-retrieval's layout (e.g. LAION's released text_emb/ + metadata/); "
        "None: computed from the corpus with the preset's text encoder",
    )
    threshold: float = Field(0.7, description="keep a nearest caption whose similarity is above it (strict)")
    k: int = Field(10, gt=0, description="candidates from the index re-scored exactly per query")
    index: dict[str, Any] = Field(default_factory=dict, description="laionet.retrieval.index.IndexConfig fields")
    exclude_query_keys: bool = Field(
        False, description="skip a corpus caption that is itself a query (queries taken from the corpus)"
    )
    compare: list[str] = Field(
        default_factory=lambda: ["imagenet-val"],
        description="datasets or variants the nearest-caption images are compared with (intra-class similarity)",
    )
    image_limit: int | None = Field(None, description="download only the first N nearest-caption samples")


class Diagnose(BaseModel):
    """The Section 4 diagnostics of a run (the ``diagnose`` flow). Empty lists switch a diagnostic off."""

    text_alone: bool = True
    captions: str | None = Field(
        None,
        description="4.2: labelled captions (ImageNet-Captions JSON, or parquet key/text/wnid); None: the run's "
        "single-class matched captions (the offline stand-in)",
    )
    selection_frequency: dict[str, float] = Field(
        default_factory=dict,
        description="4.1: reference name → average MTurk selection frequency (ImageNetV2 a 0.85, b 0.73, c 0.93); "
        "each is compared with LAIONet and with selection_frequency_reference",
    )
    selection_frequency_reference: str | None = Field("imagenet-val", description="4.1: the ImageNet side (Fig. 8c)")
    filter_strictness: list[int] = Field(
        default_factory=list,
        description="4.1 stand-in without ImageNetV2: image filters 'class in the filter model's top-k' for these k, "
        "each compared with the text-only selection; x = the share of samples the filter rejects",
    )
    text_thresholds: list[float] = Field(
        default_factory=list,
        description="image+text-filtered variants: text thresholds (reference 0.72/0.76/0.79/0.81)",
    )
    text_quantiles: list[float] = Field(
        default_factory=list,
        description="stand-in: text thresholds at these quantiles of the selected index's text similarity",
    )
    filtered_target: int | None = Field(None, description="samples per filtered variant (default: the strictest's)")
    nearest: NearestCaptions | None = Field(None, description="4.3 nearest-caption dataset; None: not run")
    candidate_band: float | None = Field(
        None,
        description="image+text-filtered variants with text thresholds below the selection's (the paper's 0.72-0.81 "
        "under 0.82): the text threshold of a candidate band selected, downloaded and inferred as a run of its own "
        "(diagnose/candidates); None: the variants are carved from `candidates`",
    )
    candidates: str | None = Field(
        None,
        description="the candidate index of the filtered variants (default: the run's selection/laionet.parquet, "
        "which must then hold every candidate above the lowest text threshold, downloaded and inferred)",
    )


class Preset(BaseModel):
    """Every setting of a pipeline run."""

    name: str
    description: str = ""
    classes: str = "imagenet1k"
    mode: Mode = "default"
    corpus: str | None = Field(None, description="glob/dir/file of LAION-style parquet parts; None: openclipart")
    corpus_limit: int | None = Field(None, description="openclipart only: the first N SVGs")
    max_parts: int | None = Field(None, description="only the first N corpus parts (try one part first)")
    encoder: str = "minilm"
    threshold: float | Literal["auto"] = "auto"
    top_k: int | None = 50
    download: dict[str, Any] = Field(default_factory=dict, description="laionet.images.attempt.DownloadConfig fields")
    ocr: bool = True
    ocr_workers: int | Literal["auto"] = Field(
        "auto",
        description="OCR processes, one shard at a time each (threads per process: cores ÷ N); auto: one per core, "
        "at most one per 4 shards (laionet.images.ocr.auto_workers)",
    )
    ocr_device: str = Field(
        "cpu", description="OCR's ONNX Runtime device: cpu, auto, cuda or cuda:<i> (CUDA needs onnxruntime-gpu)"
    )
    models: list[str] = Field(default_factory=lambda: ["efficientnet_lite0"], description="classifiers to evaluate")
    embedding_model: str = Field("efficientnet_lite0", description="image encoder of the intra-class similarity")
    zero_shot: str | None = Field(None, description="an open_clip model for zero-shot accuracy and Appendix C")
    image_filter: ImageFilter | None = Field(default_factory=ImageFilter)
    references: dict[str, Reference] = Field(default_factory=dict)
    compare: list[tuple[str, str]] = Field(
        default_factory=lambda: [("laionet", "laionet-image")],
        description="variant pairs (A, B) compared: intra-class similarity, recall differences, relations",
    )
    infer: dict[str, Any] = Field(default_factory=dict, description="laionet.inference.stream.InferConfig fields")
    shard_batches: int = Field(
        1, ge=1, description="tasks per dataset of the per-shard stages, inference and OCR (fan-out over shard groups)"
    )
    class_groups: int = Field(
        1, ge=1, description="evaluation tasks per comparison (fan-out over class groups; e.g. 16 on a Ray cluster)"
    )
    n_boot: int = 1000
    intra_cap: int | None = 100
    seed: int = 0
    disclaimer: str | None = None
    diagnose: Diagnose | None = Field(default_factory=Diagnose, description="Section 4 diagnostics; None: none")

    @field_validator("references")
    @classmethod
    def _reference_names(cls, value: dict[str, Reference]) -> dict[str, Reference]:
        for name in value:  # each becomes references/<name>/ and variants/<name>/ in the run directory
            check_name(name, "references")
        return value

    @field_validator("ocr_workers")
    @classmethod
    def _ocr_workers(cls, value: int | str) -> int | str:
        if value != "auto" and (not isinstance(value, int) or value < 1):
            raise ValueError(f"ocr_workers must be a number ≥ 1 or 'auto', not {value!r}")
        return value

    @field_validator("compare")
    @classmethod
    def _variant_names(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for pair in value:  # each becomes variants/<name>/ and evaluate/.../<a>--<b>/ in the run directory
            for name in pair:
                check_name(name, "compare")
        return value

    def image_models(self) -> list[str]:
        """Every model inference runs: the classifiers, the embedding model, the zero-shot model, the filter's."""
        extra = [self.embedding_model, self.zero_shot, self.image_filter.model if self.image_filter else None]
        return list(dict.fromkeys([*self.models, *(m for m in extra if m)]))

    def datasets(self) -> list[str]:
        """``laionet`` and the reference datasets."""
        return ["laionet", *self.references]


DEMO_DISCLAIMER = (
    "This is the offline demo: the corpus is Debian's openclipart clip art (titles, descriptions and keywords as "
    "captions), not LAION; the text encoder is all-MiniLM-L6-v2 and the classifier and image encoder "
    "EfficientNet-Lite0, stand-ins for CLIP ViT-B/32 and the paper's 29 classifiers; the comparison is text-only "
    "selection against an image-filtered variant of the same candidates, a stand-in for ImageNet. The numbers show "
    "the pipeline working end to end, not the paper's results."
)

PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        description="offline: openclipart corpus, MiniLM, EfficientNet-Lite0, text-only vs image-filtered selection",
        download={"image_size": 448, "threads": 16, "samples_per_shard": 256, "timeout": 20},
        disclaimer=DEMO_DISCLAIMER,
        diagnose=Diagnose(
            filter_strictness=[5, 3, 1],
            text_quantiles=[0.0, 0.25, 0.5, 0.75],
            nearest=NearestCaptions(stand_in="laionet-image", exclude_query_keys=True, compare=["laionet-image"]),
        ),
    ),
    "laion400m": Preset(
        name="laion400m",
        description="the paper: LAION-400M, CLIP ViT-B/32 text and image towers, threshold 0.82, 29 classifiers",
        corpus="data/laion400m/*.parquet",
        encoder="clip",
        threshold=0.82,
        download={"image_size": 448, "threads": 64, "samples_per_shard": 10_000, "timeout": 10},
        models=list(ZOO),
        embedding_model="clip",
        zero_shot="clip",
        image_filter=ImageFilter(model="clip", rule="own_score", threshold=0.25),
        references={
            "imagenet-val": Reference(
                kind="imagenet-val",
                paths={"root": "data/imagenet/val", "labels": "data/imagenet/LOC_val_solution.csv"},
            )
        },
        compare=[("laionet", "imagenet-val"), ("laionet-image", "imagenet-val")],
        shard_batches=8,
        diagnose=Diagnose(
            captions="data/imagenet-captions/imagenet_captions.json",
            # the authors' image+text-filtered variants (≈ 535k samples each in theirs; here the strictest's size)
            text_thresholds=[0.72, 0.76, 0.79, 0.81],
            candidate_band=0.72,
            nearest=NearestCaptions(
                queries="data/imagenet-captions/imagenet_captions.json",
                embeddings="data/laion400m-embeddings",  # LAION's released text_emb/ + metadata/ (no re-encoding)
                index={"kind": "ivfpq", "nlist": 65536, "m": 64, "nbits": 8, "nprobe": 64},
                compare=["imagenet-val"],
            ),
        ),
    ),
}


def load_preset(name: Preset | str, **overrides: Any) -> Preset:
    """A preset by name (``PRESETS``), from a JSON/YAML file, or given whole (a ``Preset``, e.g. the one a flow run's
    form in the Prefect UI submits), with fields overridden (None values are ignored).

    Raises:
        ValueError: unknown name, unreadable file, or invalid fields (pydantic names the field).
    """
    if isinstance(name, Preset):
        data = name.model_dump()
    elif name in PRESETS:
        data = PRESETS[name].model_dump()
    else:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)} or a JSON/YAML preset file")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        data.setdefault("name", path.stem)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Preset.model_validate(data)


def preset_label(preset: Preset | str) -> str:
    """How a run names its preset: a ``Preset``'s ``name``, else the name or file given."""
    return preset.name if isinstance(preset, Preset) else str(preset)
