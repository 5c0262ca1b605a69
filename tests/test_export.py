"""``laionet export hf``: a tiny run (real catalog, lemma map, matching and selection drivers; a hash text encoder;
two WebDataset shards and two variants written here) exported, then loaded back with ``datasets.load_dataset`` (offline,
a tmp cache) and ``webdataset.WebDataset``; the card's YAML front matter and body; refusal to overwrite without
``--force``; nothing left under a temporary name."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from laionet.cli import app
from laionet.core.manifest import Manifest, write_manifest
from laionet.export.data import shard_pattern
from laionet.images.shards import safe_key
from laionet.selection.select import SelectionConfig, run_select
from laionet.selection.similarity import SimilarityConfig, run_similarity
from laionet.text.catalog import run_catalog
from laionet.text.lemmas import run_lemmas
from laionet.text.match import run_match
from tests.conftest import write_class_file, write_corpus_part

runner = CliRunner()
LION, COUGAR, LEMON = "n02129165", "n02125311", "n07749582"
CAPTIONS = ["a lion at dusk", "lion cub", "fresh lemon", "lemon tart", "a cougar", "lion and lemon", "the sea", "lions"]


class HashEncoder:
    """A stand-in text encoder: every text maps to a unit vector seeded by its hash (no model)."""

    spec = "st:hash"

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).normal(size=8)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run with catalog, matches, similarity, selection (with a top-1 table), two shards of the downloaded images
    (one index row left out: a failed download), the ``laionet`` and ``laionet-image`` variants, and a reference
    variant whose keys are not LAIONet's."""
    run = tmp_path / "run"
    catalog = str(run / "catalog.parquet")
    run_catalog(write_class_file(tmp_path / "classes.txt", [LION, COUGAR, LEMON]), catalog)
    lemmas = str(run / "lemma_map_default.parquet")
    run_lemmas(catalog, "default", lemmas)
    write_corpus_part(tmp_path / "corpus" / "part-00000.parquet", CAPTIONS)
    run_match(str(tmp_path / "corpus"), str(run / "matches"), lemmas)
    sim = str(run / "similarity" / "st-hash")
    run_similarity(str(run / "matches"), catalog, sim, SimilarityConfig(encoder="st:hash"), lambda c: HashEncoder())
    run_select(str(run / "matches"), sim, catalog, str(run / "selection"), SelectionConfig(threshold=-1.0, top_k=1))

    index = pd.read_parquet(run / "selection" / "laionet.parquet")
    import webdataset as wds

    shards = run / "shards"
    shards.mkdir()
    downloaded = index.iloc[:-1]
    for number, chunk in enumerate((downloaded.iloc[:3], downloaded.iloc[3:])):
        with wds.TarWriter(str(shards / f"{number:05d}.tar")) as sink:
            for i, row in enumerate(chunk.itertuples()):
                meta = {"key": row.key, "wnid": row.wnid, "class_index": int(row.class_index), "caption": row.text}
                sink.write({"__key__": safe_key(row.key), "jpg": _jpeg((40 * i, 0, 0)), "txt": row.text,
                            "json": json.dumps(meta).encode()})  # fmt: skip
        chunk[["key"]].to_parquet(shards / f"{number:05d}.parquet")
    (shards / "_attempts" / "0").mkdir(parents=True)
    (shards / "_attempts" / "0" / "00000.tar").write_bytes(b"raw attempt")  # never exported
    write_manifest(str(shards), Manifest(stage="download", config={"respect_opt_out": True}, config_hash="d" * 16,
                                         rows_in=len(index), rows_out=len(downloaded),
                                         dropped={"http_404": 1}))  # fmt: skip
    for variant, keys in (("laionet", downloaded["key"]), ("laionet-image", downloaded["key"][::2])):
        frame = index[index["key"].isin(keys)][["key", "wnid", "class_index"]]
        (run / "variants" / variant).mkdir(parents=True)
        frame.to_parquet(run / "variants" / variant / "labels.parquet")
        write_manifest(str(run / "variants" / variant), Manifest(stage="variants", config={"name": variant},
                       config_hash="v" * 16, rows_in=len(frame), rows_out=len(frame)))  # fmt: skip
    (run / "variants" / "imagenet-val").mkdir(parents=True)
    pd.DataFrame({"key": ["val/1"], "wnid": [LION], "class_index": [0]}).to_parquet(
        run / "variants" / "imagenet-val" / "labels.parquet"
    )
    write_manifest(str(run / "variants" / "imagenet-val"), Manifest(stage="variants", config={}, config_hash="r" * 16,
                                                                     rows_in=1, rows_out=1))  # fmt: skip
    return run


def _front_matter(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def test_export_loads_with_datasets_and_webdataset(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "hf", "--run-dir", str(run_dir), "--out", str(out), "--rows-per-file", "2"])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (out / "data" / "laionet").iterdir())
    assert files == [f"train-0000{i}-of-00003.parquet" for i in range(3)]  # 5 rows, 2 per file
    assert "configs laionet (" in result.output and "2 shards" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.txt", "corpus", "export", "run"]  # no temp left
    index = pd.read_parquet(run_dir / "selection" / "laionet.parquet")
    names = dict(zip(*pd.read_parquet(run_dir / "catalog.parquet")[["wnid", "name"]].T.values, strict=True))

    readme = (out / "README.md").read_text()
    front = _front_matter(readme)
    configs = {c["config_name"]: c for c in front["configs"]}
    assert set(configs) == {"laionet", "laionet-top1", "laionet-downloaded", "laionet-image"}  # not imagenet-val
    assert configs["laionet"]["default"] is True
    info = {i["config_name"]: i for i in front["dataset_info"]}
    assert info["laionet"]["splits"] == [{"name": "train", "num_examples": len(index)}]
    label = next(f for f in info["laionet"]["features"] if f["name"] == "label")
    assert label["dtype"]["class_label"]["names"] == {"0": "lion", "1": "cougar", "2": "lemon"}
    assert front["license"] == "other" and front["task_categories"] == ["image-classification"]
    for text in ("Shirali", "Transactions on Machine Learning Research", "CC-BY 4.0", "## Counts by class",
                 "| select | `selection` |", "code version", "X-Robots-Tag", "shards/{00000..00001}.tar"):  # fmt: skip
        assert text in readme, text

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    cache = str(tmp_path / "hf-cache")
    loaded = datasets.load_dataset(str(out), cache_dir=cache)
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train["key"] == index["key"].tolist()
    assert isinstance(train.features["label"], datasets.ClassLabel)
    assert [train.features["label"].int2str(i) for i in train["label"]] == [names[w] for w in index["wnid"]]
    assert train["class_index"] == train["label"]
    image = datasets.load_dataset(str(out), "laionet-image", cache_dir=cache)["train"]
    assert image["key"] == index["key"].iloc[:-1].iloc[::2].tolist()
    top = datasets.load_dataset(str(out), "laionet-top1", cache_dir=cache)["train"]
    assert len(top) == index["wnid"].nunique()

    import webdataset as wds

    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.tar", "00001.tar"]  # no _attempts
    samples = list(wds.WebDataset(str(out / "shards" / "{00000..00001}.tar"), shardshuffle=False).decode("pil"))
    assert [s["json"]["key"] for s in samples] == index["key"].iloc[:-1].tolist()
    assert samples[0]["jpg"].size == (8, 8) and samples[0]["txt"] == index["text"].iloc[0]


def test_export_refuses_a_non_empty_out_without_force(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    argv = ["export", "hf", "--run-dir", str(run_dir), "--out", str(out), "--no-shards"]
    assert runner.invoke(app, argv).exit_code == 0  # an empty folder is fine
    (out / "mine.txt").write_text("keep me")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert result.output == f"error: {out} exists and is not empty: pass --force to replace it\n"
    assert (out / "mine.txt").exists()
    result = runner.invoke(app, [*argv, "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "mine.txt").exists() and not (out / "shards").exists()
    assert "No images are included" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.txt", "corpus", "export", "run"]


def test_export_of_a_run_without_selection_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "hf", "--run-dir", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "run the build stage first" in result.output
    assert not (tmp_path / "x").exists()


def test_shard_patterns() -> None:
    assert shard_pattern(["00000.tar"]) == "00000.tar"
    assert shard_pattern(["00000.tar", "00001.tar", "00002.tar"]) == "{00000..00002}.tar"
    assert shard_pattern(["00000.tar", "00002.tar"]) == "{00000,00002}.tar"
