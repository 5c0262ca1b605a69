"""Images: download an index into WebDataset shards, ingest reference datasets into the same format, verify
the shards, and flag images that show their class name (OCR).

Reads an index parquet (key, url, text, wnid, class_index) or a reference dataset's files; writes ``shards/<name>/``
(``NNNNNNNN.tar`` + ``.parquet`` listings), ``verify/quarantine.parquet`` and ``ocr/<shard>.parquet``. Wraps img2dataset
(``attempt`` only, run by ``download``) and RapidOCR (``ocr`` only); ``fetch`` is the download's fetch of untrusted
URLs (http(s) to public addresses or named hosts only, bounded in bytes, time and pixels); ``serve`` is the loopback
image server of the demo and the tests.
"""
