"""One image model on the inference device (main process): forward under autocast (fp16 on a GPU; fp32 on a CPU
unless bf16 is asked for) with out-of-memory back-off (the batch halved for that model instead of failing), and its
outputs per shard — L2-normalised embeddings as float16, top-k classes and scores, the score of each sample's own
class — buffered until the shard's last batch (written by ``laionet.inference.stream``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from laionet.inference.models import ImageModel


class Runner:
    """One model on the device: forward with autocast and out-of-memory back-off; per-shard output buffers."""

    def __init__(self, model: ImageModel, device: str, precision: str, top_k: int) -> None:
        self.model, self.device, self.top_k = model, device, top_k
        self.cuda = device.startswith("cuda")
        self.dtype = precision
        self.chunk: int | None = None
        wnids = model.info.get("class_wnids")
        self.column = {w: j for j, w in enumerate(wnids)} if wnids is not None else {}
        self.buffers: dict[str, list[dict[str, Any]]] = {}

    def _autocast(self) -> Any:

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.dtype)
        return torch.autocast("cuda" if self.cuda else "cpu", dtype=dtype) if dtype else nullcontext()

    def forward(self, x: Any) -> tuple[Any, Any]:

        chunk = self.chunk or len(x)
        while True:
            try:
                embs: list[Any] = []
                scores: list[Any] = []
                with torch.inference_mode(), self._autocast():
                    for start in range(0, len(x), chunk):
                        e, s = self.model.forward(x[start : start + chunk])
                        embs.append(e.float())
                        scores.append(None if s is None else s.float())
                return torch.cat(embs), (None if scores[0] is None else torch.cat(scores))
            except torch.cuda.OutOfMemoryError:
                if chunk <= 1:
                    raise
                chunk = max(1, chunk // 2)
                self.chunk = chunk
                torch.cuda.empty_cache()
                tqdm.write(f"[infer] {self.model.spec}: out of GPU memory, batch reduced to {chunk}")

    def add(self, shard: str, keys: list[str], wnids: list[str | None], x: Any) -> None:

        emb, scores = self.forward(x)
        out: dict[str, Any] = {"keys": keys, "emb": emb.half().cpu().numpy()}
        if scores is not None and self.model.class_index is not None:
            k = min(self.top_k, scores.shape[1])
            values, columns = scores.topk(k, dim=1)
            cols = torch.as_tensor([self.column.get(w, -1) if w else -1 for w in wnids], device=scores.device)
            own = torch.full((len(keys),), float("nan"), device=scores.device)
            has = cols >= 0
            own[has] = scores[torch.nonzero(has).squeeze(1), cols[has]]
            out["topk"] = self.model.class_index[columns.cpu().numpy()].astype(np.int32)
            out["scores"] = values.cpu().numpy().astype(np.float32)
            out["own"] = own.cpu().numpy().astype(np.float32)
        self.buffers.setdefault(shard, []).append(out)
