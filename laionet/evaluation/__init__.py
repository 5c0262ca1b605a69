"""Evaluation: the evaluated label sets (variants), accuracy, intra-class similarity and the paper's appendix
analyses, with their statistics.

Reads variant labels, predictions, embeddings, OCR flags and class frequencies; writes tidy parquet tables under
``evaluate/`` (per class and summary) with manifests. Pure numpy/pandas cores in ``metrics`` and ``stats``.
"""
