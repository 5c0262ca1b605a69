"""Retrieval (paper Section 4.3): caption embeddings for a whole corpus, a faiss index over them, and the search
of a labelled query set for its nearest corpus captions.

``embed`` writes clip-retrieval's layout (``text_emb/text_emb_<i>.npy`` + ``metadata/metadata_<i>.parquet``); ``index``
builds ``index.faiss`` (exact or IVF-PQ, memory-mapped when read; the only faiss import); ``search`` writes the
nearest-caption dataset as an index in the format of ``selection/laionet.parquet``, so the image stages and every
evaluation run on it unchanged.
"""
