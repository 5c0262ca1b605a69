"""Human-readable summaries of stage outputs (read tables, return plain dicts; printing is the caller's)."""

from __future__ import annotations

from typing import Any

from laionet.core.manifest import read_manifest
from laionet.text.catalog import read_catalog
from laionet.text.match import read_matches


def match_summary(match_dir: str, catalog_path: str | None = None) -> dict[str, Any]:
    """Counts of a completed match stage and its classes ranked by single-class captions.

    Raises:
        FileNotFoundError: if the match stage is not complete.
    """
    manifest = read_manifest(match_dir)
    if manifest is None:
        raise FileNotFoundError(f"{match_dir}: match stage is not complete (no _manifest.json)")
    table = read_matches(match_dir, columns=["wnids"])
    n_labels = table["wnids"].map(len)
    single = table.loc[n_labels == 1, "wnids"].map(lambda w: w[0])
    counts = single.value_counts()
    names: dict[str, str] = {}
    if catalog_path:
        cat = read_catalog(catalog_path)
        names = dict(zip(cat["wnid"], cat["name"], strict=True))
    all_hit = {w for wnids in table["wnids"] for w in wnids}
    return {
        "rows_in": manifest.rows_in,
        "rows_matched": manifest.rows_out,
        "rows_single_class": int((n_labels == 1).sum()),
        "rows_multi_class": int((n_labels > 1).sum()),
        "classes_hit": len(all_hit),
        "classes_hit_single": len(counts),
        "dropped": manifest.dropped,
        "top_classes": [
            {"wnid": w, "n": int(n), **({"name": names[w]} if w in names else {})} for w, n in counts.items()
        ],
    }
