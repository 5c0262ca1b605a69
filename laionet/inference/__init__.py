"""Inference: image models over shards in one streaming pass (each image decoded once, shared by all models).

Reads shards (and the catalog for zero-shot prompts); writes per shard and model L2-normalised float16 embeddings
(``.npy`` + ``.keys.parquet``) and top-k predictions (``.predictions.parquet``) under ``inference/<dataset>/<model>/``.
Wraps timm and open_clip (``models`` only) and torch.
"""
