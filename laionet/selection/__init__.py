"""Selection: text-to-synset similarity of every matched caption, then the threshold and the rules that make
the LAIONet index.

Reads the match parts and the catalog (and, optionally, LAION's released caption embeddings); writes
``similarity/<encoder>/<part>.parquet`` and ``selection/laionet.parquet`` with class frequencies, the threshold sweep
and the top-k variant. Wraps open_clip and sentence-transformers, in ``encoders`` only.
"""
