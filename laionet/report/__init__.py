"""Report: one self-contained HTML page with PNG figures, every number read from the run's stage tables.

Reads a run directory's stage tables and shards (thumbnails); writes ``report/index.html`` and its figures.
Wraps matplotlib (``figures`` only); ``summary`` prints a match stage's summary.
"""
