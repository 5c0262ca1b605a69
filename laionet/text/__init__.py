"""Text stages: the WordNet class catalog, lemma maps, and lemma matching over corpus captions.

Reads corpus parquet parts (LAION-style: key, URL, TEXT, NSFW, ...) and WordNet 3.0; writes ``catalog.parquet``,
``lemmas/<mode>.parquet`` and ``matches/<mode>/<part>.parquet`` with per-part records and manifests. Wraps nltk's
WordNet (``wordnet``) and ahocorasick-rs (``matcher``); ``openclipart`` turns Debian's clip art into a corpus part.
"""
