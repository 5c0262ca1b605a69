"""Export: a run's LAIONet as a folder that other tools load as it is (``laionet export hf``).

Reads a run directory: ``selection/`` (``laionet.parquet``, ``top<k>.parquet``, ``class_frequency.parquet`` and the
select manifest, which must be complete), ``catalog.parquet`` (class names), ``variants/<variant>/labels.parquet``
where present (the image-filtered and other variants that are subsets of the index), ``shards/*.tar`` where present
(the downloaded images) and every stage manifest (``_manifest.json``) for the pipeline's settings and code version.
Writes a Hugging Face ``datasets`` folder: ``README.md`` (the dataset card, YAML front matter with configs, features,
splits and class names), ``data/<config>/train-NNNNN-of-NNNNN.parquet`` (one config per index variant),
``shards/NNNNN.tar`` (the WebDataset shards, unchanged) and the export's ``_manifest.json``; built under a temporary
name and renamed into place. ``datasets`` itself is not needed to write it.
"""
