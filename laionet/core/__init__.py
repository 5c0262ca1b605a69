"""The stage framework every stage is built on: configuration and presets (``config``), the layout of a run
directory (``layout``), manifests, config hashes and atomic writes (``manifest``), parquet readers by glob
(``tables``) and CPU runtime tuning (``runtime``).

Reads and writes nothing by itself; every stage writes its ``_manifest.json`` through ``manifest``. Wraps fsspec,
pyarrow and pydantic.
"""
