"""Building blocks of the report page (``laionet.report.html``, its sections in ``sections``, ``comparisons`` and
``section4``): the context the sections share (the run, tables read, figures written, class names) and the HTML
formatting helpers.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.manifest import join

_ID_COLUMNS = {"class", "class_index", "n", "n_a", "n_b", "n_pairs", "missing", "classes", "k", "seed"}


@dataclass
class _Context:
    """What the sections share: the run, the output directory, and the record of tables read and figures written."""

    run_dir: str
    out_dir: str
    tables: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    names: dict[Any, str] = field(default_factory=dict)
    _cache: dict[str, pd.DataFrame] = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        return join(self.run_dir, *parts)

    def rel(self, path: str) -> str:
        """``path`` relative to the run directory, whether the run directory was given relative or absolute (globs
        return absolute paths); never an absolute path on the page or in a figure's file name."""
        for root in dict.fromkeys([self.run_dir.rstrip("/"), url_to_fs(self.run_dir)[1].rstrip("/")]):
            if path.startswith(root + "/"):
                return path[len(root) + 1 :]
        real = url_to_fs(path)[1]
        root = url_to_fs(self.run_dir)[1].rstrip("/")
        return real[len(root) + 1 :] if real.startswith(root + "/") else real.rsplit("/", 1)[-1]

    def read(self, path: str) -> pd.DataFrame | None:
        """A parquet table, or None when absent or unreadable (recorded)."""
        if path in self._cache:
            return self._cache[path]
        if not _exists(path):
            return None
        try:
            with fsspec.open(path, "rb") as f:
                frame = pq.read_table(f).to_pandas()
        except Exception as exc:  # a corrupt table is reported on the page, not fatal
            self.unreadable[path] = f"{type(exc).__name__}: {exc}"
            return None
        self.tables.append(path)
        self._cache[path] = frame
        return frame

    def figure(self, name: str, draw: Callable[[str], str], alt: str) -> str:
        path = draw(join(self.out_dir, name))
        self.figures.append(path)
        img = f'<img src="{_esc(name)}" alt="{_esc(alt)}">'
        return f"<figure>{img}<figcaption>{_esc(alt)}</figcaption></figure>"

    def name(self, cls: Any) -> str:
        return self.names.get(cls, self.names.get(str(cls), str(cls)))


def _exists(path: str) -> bool:
    fs, real = url_to_fs(path)
    return bool(fs.exists(real))


def _glob(pattern: str) -> list[str]:
    fs, real = url_to_fs(pattern)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = sorted(fs.glob(real))
    return found if protocol in ("file", "local") else [f"{protocol}://{p}" for p in found]


def _dirname(path: str) -> str:
    return path.rsplit("/", 1)[0]


# formatting ---------------------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _int(value: Any) -> str:
    return f"{int(value):,}" if value is not None and not pd.isna(value) else "–"


def _pct(value: Any) -> str:
    return f"{float(value):.1%}" if value is not None and not pd.isna(value) else "–"


def _num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if value is not None and not pd.isna(value) else "–"


def _when(iso: str) -> str:
    return iso.replace("T", " ").removesuffix("+00:00")


def _interval(lower: Any, upper: Any, fmt: Callable[[Any], str] = _pct) -> str:
    return f"[{fmt(lower)}, {fmt(upper)}]"


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric if numeric is not None else set()
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{_esc(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_table(frame: pd.DataFrame, limit: int = 30) -> str:
    """A small table as HTML: floats to 3 decimals, every column."""
    rows = []
    for record in frame.head(limit).to_dict("records"):
        rows.append([_num(v) if isinstance(v, float) else _esc(v) for v in record.values()])
    numeric = {i for i, c in enumerate(frame.columns) if pd.api.types.is_numeric_dtype(frame[c])}
    more = f"<p class=note>first {limit} of {len(frame)} rows</p>" if len(frame) > limit else ""
    return _table([str(c) for c in frame.columns], rows, numeric) + more


def _missing(what: str) -> str:
    return f"<p class=missing>Not computed in this run ({_esc(what)}).</p>"
