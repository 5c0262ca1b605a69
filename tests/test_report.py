"""The report stage on a tiny synthetic run directory with the real table schemas (real evaluation drivers)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from laionet.cli import app
from laionet.core.config import DEMO_DISCLAIMER
from laionet.core.layout import accuracy_dir, intra_dir, relations_dir, report_dir, variant_labels
from laionet.core.manifest import Manifest, config_hash, join, read_manifest, write_manifest
from laionet.evaluation.accuracy import run_accuracy
from laionet.evaluation.intra_class import run_intra_class
from laionet.evaluation.metrics import compared_accuracy, recall_difference
from laionet.evaluation.stats import compare_means
from laionet.images.shard_writer import ShardWriter
from laionet.report.html import run_report

CHROMIUM = "/usr/bin/chromium-headless-shell"
THRESHOLD = 0.37
CLASSES = pd.DataFrame(
    {
        "class_index": [0, 1, 2, 3],
        "wnid": ["n01440764", "n01443537", "n01484850", "n01491361"],
        "name": ["tench", "goldfish", "great white shark", "tiger shark"],
    }
)
MODEL = "efficientnet_lite0"


def _parquet(frame: pd.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def _manifest(target: Path, stage: str, rows_in: int, rows_out: int, **extra: object) -> None:
    dropped = {"below_threshold": rows_in - rows_out} if rows_in != rows_out else {}
    manifest = Manifest(stage=stage, config={}, config_hash=config_hash({}), rows_in=rows_in, rows_out=rows_out,
                        dropped=dropped, extra=dict(extra))  # fmt: skip
    write_manifest(str(target), manifest)


def _jpeg(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(out, format="JPEG")
    return out.getvalue()


def _build_run(run: Path) -> None:
    """catalog, selection (sweep, histogram, class_frequency, manifest with the threshold), one shard, two variants,
    accuracy and intra-class outputs of the real drivers, a recall difference and a relations table."""
    rng = np.random.default_rng(0)
    _parquet(CLASSES, run / "catalog.parquet")
    _manifest(run / "catalog.parquet", "catalog", 4, 4)
    grid = np.round(np.arange(0, 1.0001, 0.01), 6)
    sweep = pd.DataFrame({"threshold": grid, "n_samples": (400 * (1 - grid) ** 2).astype(np.int64),
                          "n_classes": np.minimum(4, (6 * (1 - grid)).astype(np.int64))})  # fmt: skip
    _parquet(sweep, run / "selection" / "sweep.parquet")
    edges = np.round(np.arange(-1.0, 1.0 + 1e-9, 0.01), 6)
    counts = np.histogram(rng.normal(0.4, 0.1, 500), bins=edges)[0]
    _parquet(pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "count": counts}),
             run / "selection" / "histogram.parquet")  # fmt: skip
    n = [40, 30, 20, 10]
    freq = CLASSES.assign(n=n, share=np.array(n) / sum(n))[["wnid", "class_index", "name", "n", "share"]]
    _parquet(freq, run / "selection" / "class_frequency.parquet")
    _manifest(run / "selection", "select", 500, 100, threshold=THRESHOLD, threshold_rule="given", classes=4,
              encoder="st:all-MiniLM-L6-v2")  # fmt: skip

    # one shard of 40 images (10 per class), the variants laionet (all) and laionet-image (5 per class)
    keys = [f"part-0/{i}" for i in range(40)]
    cls = np.arange(40) % 4
    writer = ShardWriter(str(run / "shards"), per_shard=100)
    for key, c in zip(keys, cls, strict=True):
        meta = {"wnid": CLASSES.wnid[c], "class_index": int(c), "status": "success"}
        writer.write(key, _jpeg((60 * c, 200 - 40 * c, 90)), f"a {CLASSES.name[c]}", meta)
    writer.close()
    tars = sorted(str(p) for p in (run / "shards").glob("*.tar"))  # a stage's shards are listed from its manifest
    write_manifest(str(run / "shards"), Manifest(stage="download", config={}, config_hash=config_hash({}), rows_in=40,
                                                 rows_out=40, outputs=tars))  # fmt: skip
    labels = pd.DataFrame({"key": keys, "wnid": CLASSES.wnid[cls].to_numpy(), "class_index": cls})
    _parquet(labels, Path(variant_labels(str(run), "laionet")))
    _parquet(labels[np.arange(40) % 8 < 4], Path(variant_labels(str(run), "laionet-image")))

    # inference outputs (predictions and embeddings), then the real accuracy and intra-class drivers
    infer = run / "inference" / "laionet" / MODEL
    topk = [[int(c), (int(c) + 1) % 4] if i % 3 else [(int(c) + 1) % 4, int(c)] for i, c in enumerate(cls)]
    _parquet(pd.DataFrame({"key": keys, "topk": topk}), infer / "00000.predictions.parquet")
    centres = rng.normal(size=(4, 8))
    emb = centres[cls] + rng.normal(size=(40, 8)) * np.where(np.arange(40) % 8 < 4, 0.3, 1.0)[:, None]
    np.save(infer / "00000.npy", (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16))
    _parquet(pd.DataFrame({"key": keys}), infer / "00000.keys.parquet")
    weights = str(run / "selection" / "class_frequency.parquet")
    preds, npy = str(infer / "*.predictions.parquet"), str(infer / "*.npy")
    for variant in ("laionet", "laionet-image"):
        run_accuracy(preds, variant_labels(str(run), variant), accuracy_dir(str(run), variant, MODEL), weights,
                     n_boot=50)  # fmt: skip
    run_intra_class(npy, variant_labels(str(run), "laionet"), npy, variant_labels(str(run), "laionet-image"),
                    intra_dir(str(run), "laionet", "laionet-image", MODEL), cap=20, n_boot=50)  # fmt: skip

    pair = "laionet--laionet-image"
    per_class = [pd.read_parquet(join(accuracy_dir(str(run), v, MODEL), "per_class.parquet"))
                 for v in ("laionet", "laionet-image")]  # fmt: skip
    diff_dir = run / "evaluate" / "recall-difference" / pair / MODEL
    _parquet(recall_difference(per_class[0], per_class[1], 1, n_boot=50), diff_dir / "recall_at_1.parquet")
    both = compared_accuracy(per_class[0], per_class[1], 1, n_boot=50)
    pair_acc = {"k": 1, "weighting": "equal", "class_set": "both", "classes_a": both["classes"],
                "classes_b": both["classes"], "accuracy_a": both["accuracy_a"], "accuracy_b": both["accuracy_b"],
                "difference": both["difference"], "lower": both["lower"], "upper": both["upper"],
                "interval": "jeffreys bootstrap"}  # fmt: skip
    _parquet(pd.DataFrame([pair_acc]), diff_dir / "accuracy.parquet")
    _manifest(diff_dir, "recall-difference", 4, 4)
    own_dir = run / "evaluate" / "own-similarity" / pair / MODEL
    values = {c: rng.normal(0.3 + 0.02 * c, 0.05, 10) for c in range(4)}
    _parquet(compare_means(values, {c: v - 0.05 for c, v in values.items()}, n_boot=50), own_dir / "per_class.parquet")
    _manifest(own_dir, "own-similarity", 4, 4)
    dist = [pd.DataFrame({"group": g, "class": c, "value": v + shift}) for g, shift in (("a", 0), ("a_matched", 0),
            ("b", -0.05)) for c, v in values.items()]  # fmt: skip
    _parquet(pd.concat(dist, ignore_index=True), own_dir / "distribution.parquet")
    rel = Path(relations_dir(str(run))) / pair
    boot = pd.read_parquet(join(intra_dir(str(run), "laionet", "laionet-image", MODEL), "compare_bootstrap.parquet"))
    table = boot[["class", "delta"]].rename(columns={"delta": "intra_delta"}).assign(recall=[0.9, 0.7, 0.6, 0.4])
    _parquet(table, rel / "recall_vs_intra.parquet")
    _manifest(rel, "relations", 4, 4)


def _build_section4(run: Path) -> None:
    """The Section 4 outputs of the real drivers: text alone, selection frequency (two x values), two filtered
    variants with their accuracy, and the nearest-caption search with its intra-class comparison."""
    from laionet.diagnostics.filtered import run_filtered_variants
    from laionet.diagnostics.selection_frequency import run_selection_frequency
    from laionet.diagnostics.text_alone import run_text_alone
    from laionet.retrieval.embed import EmbedConfig, run_caption_embeddings
    from laionet.retrieval.index import IndexConfig, run_index
    from laionet.retrieval.search import run_nearest_captions
    from laionet.text.catalog import run_catalog
    from tests.conftest import write_class_file, write_corpus_part
    from tests.test_retrieval import HashEncoder

    rng = np.random.default_rng(4)
    work = run / "_inputs"
    work.mkdir()
    catalog = str(work / "catalog.parquet")
    run_catalog(write_class_file(work / "classes.txt", CLASSES.wnid.tolist()), catalog)
    texts = [f"a photo of a {CLASSES.name[i % 4]} number {i}" for i in range(40)]
    wnids = CLASSES.wnid[np.arange(40) % 4].to_numpy()
    captions = pd.DataFrame({"key": [f"q{i}" for i in range(40)], "text": texts, "wnid": wnids})
    captions.to_parquet(work / "captions.parquet")
    run_text_alone(str(work / "captions.parquet"), catalog, str(run / "diagnose" / "text-alone"), encoder="st:hash",
                   encoder_factory=HashEncoder)  # fmt: skip

    intra = intra_dir(str(run), "laionet", "laionet-image", MODEL)
    comparisons = [{"a": "laionet", "b": "laionet-image", "x": x, "intra_dir": intra} for x in (0.25, 0.6)]
    run_selection_frequency(comparisons, str(run / "diagnose" / "selection-frequency"), x_label="share rejected")

    keys = [f"part-0/{i}" for i in range(40)]
    cls = np.arange(40) % 4
    candidates = pd.DataFrame({"key": keys, "wnid": CLASSES.wnid[cls].to_numpy(), "class_index": cls,
                               "text_similarity": rng.uniform(0.3, 0.6, 40)})  # fmt: skip
    candidates.to_parquet(work / "candidates.parquet")
    pd.DataFrame({"key": keys, "own_score": rng.random(40)}).to_parquet(work / "scores.predictions.parquet")
    variants = run_filtered_variants(str(work / "candidates.parquet"), str(work / "scores.predictions.parquet"),
                                     str(run / "variants"), (0.35, 0.4), target=12,
                                     summary_dir=str(run / "diagnose" / "filtered"))  # fmt: skip
    infer = run / "inference" / "laionet" / MODEL
    for manifest in variants:
        name = manifest.outputs[0].rstrip("/").rsplit("/", 2)[-2]
        run_accuracy(str(infer / "*.predictions.parquet"), variant_labels(str(run), name),
                     accuracy_dir(str(run), name, MODEL), str(run / "selection" / "class_frequency.parquet"),
                     n_boot=50)  # fmt: skip

    nearest = run / "diagnose" / "nearest"
    write_corpus_part(work / "corpus" / "p.parquet", texts[::2] + [f"unrelated caption {i}" for i in range(30)])
    run_caption_embeddings(str(work / "corpus"), str(nearest / "embeddings"), EmbedConfig(encoder="st:hash"),
                           encoder_factory=HashEncoder)  # fmt: skip
    run_index(str(nearest / "embeddings"), str(nearest / "index"), IndexConfig(recall_queries=10))
    run_nearest_captions(str(work / "captions.parquet"), str(nearest / "embeddings"), str(nearest / "index"), catalog,
                         str(nearest / "run" / "selection"), threshold=0.7, k=3, encoder_factory=HashEncoder,
                         index_name="laionet.parquet")  # fmt: skip
    npy = str(infer / "*.npy")
    run_intra_class(npy, variant_labels(str(run), "laionet"), npy, variant_labels(str(run), "laionet-image"),
                    intra_dir(str(run), "nearest-captions", "laionet-image", MODEL), cap=20, n_boot=50)  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    _build_run(run)
    _build_section4(run)
    run_report(str(run), disclaimer=DEMO_DISCLAIMER)
    return run


def _page(run: Path) -> str:
    return (Path(report_dir(str(run))) / "index.html").read_text()


def test_report_numbers_come_from_the_tables(run_dir: Path) -> None:
    page = _page(run_dir)
    manifest = read_manifest(report_dir(str(run_dir)))
    assert manifest is not None and manifest.stage == "report"
    assert manifest.extra["not_computed"] == [] and manifest.extra["failed"] == {}
    assert manifest.rows_in == len(manifest.inputs) == manifest.rows_out and manifest.dropped == {"unreadable": 0}
    assert all(Path(p).is_file() for p in manifest.outputs)
    assert DEMO_DISCLAIMER.split(";")[0] in page.replace("&#x27;", "'")
    assert f"<b>{THRESHOLD}</b>" in page  # the chosen threshold from the selection manifest
    summary = pd.read_parquet(join(accuracy_dir(str(run_dir), "laionet-image", MODEL), "summary.parquet"))
    row = summary[(summary["k"] == 1) & (summary["weighting"] == "laion")].iloc[0]
    assert f"<b>{row.accuracy:.1%}</b>" in page
    assert f"[{row.bootstrap_lower:.1%}, {row.bootstrap_upper:.1%}]" in page
    assert "all 4 scored classes of the variant" in page and "jeffreys" in page  # class set and interval method
    pair_acc = pd.read_parquet(run_dir / "evaluate" / "recall-difference" / "laionet--laionet-image" / MODEL /
                               "accuracy.parquet").iloc[0]  # fmt: skip
    assert "the 4 classes scored in both" in page and f"<b>{pair_acc.difference:.1%}</b>" in page
    assert "pooled over classes, each class drawn to the same size in both (paper Fig. 6a)" in page
    intra = pd.read_parquet(join(intra_dir(str(run_dir), "laionet", "laionet-image", MODEL), "summary.parquet"))
    assert f"{intra.iloc[0]['higher']:.1%}" in page
    assert "great white shark" in page and "fig_relations_laionet-vs-laionet-image_recall_vs_intra.png" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 8 and any(i.startswith("grid_") for i in images)
    for src in images:
        assert (Path(report_dir(str(run_dir))) / src).is_file(), src
        assert Image.open(Path(report_dir(str(run_dir))) / src).size[0] > 0


def test_report_names_sections_and_figures_from_variants_models_and_metrics(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory given relative to the working directory: no absolute path on the page or in a file name."""
    monkeypatch.chdir(run_dir.parent)
    out = tmp_path / "named"
    run_report(run_dir.name, out_dir=str(out))
    page = (out / "index.html").read_text()
    assert str(run_dir.parent) not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and not any("pytest-of" in i or run_dir.name in i for i in images), images
    assert f"<h3>laionet vs laionet-image — {MODEL}, recall@1</h3>" in page
    assert f"fig_recall-difference_laionet-vs-laionet-image_{MODEL}_recall-at-1.png" in images


def test_report_draws_figures_1_5_and_13a(run_dir: Path) -> None:
    page = _page(run_dir)
    images = re.findall(r'<img src="([^"]+)"', page)
    for name in ("fig_weighted_accuracy_top-1.png", "fig_weighted_accuracy_top-5.png",  # Fig. 5 at top-1 and top-5
                 "fig_accuracy_laionet-vs-laionet-image_top-1.png",  # Fig. 1: one point per model, y = x
                 f"fig_own-similarity_laionet-vs-laionet-image_{MODEL}_distribution.png"):  # Fig. 13a  # fmt: skip
        assert name in images, images
        assert Image.open(Path(report_dir(str(run_dir))) / name).size[0] > 0
    assert "(paper Fig. 1)" in page and "(paper Fig. 13a)" in page


def test_report_puts_the_papers_headline_numbers_beside_this_runs(run_dir: Path) -> None:
    page = _page(run_dir)
    section = page.split('<section id="headline">', 1)[1].split("</section>", 1)[0]
    pair_acc = pd.read_parquet(run_dir / "evaluate" / "recall-difference" / "laionet--laionet-image" / MODEL /
                               "accuracy.parquet").iloc[0]  # fmt: skip
    assert "66.5 vs 56.9" in section and f"<b>{pair_acc.difference:.1%}</b>" in section
    assert "the 4 classes scored in both" in section
    intra = pd.read_parquet(join(intra_dir(str(run_dir), "laionet", "laionet-image", MODEL), "summary.parquet"))
    assert "502/872" in section and f"<b>{intra.iloc[0]['lower']:.1%}</b> lower" in section
    summary = pd.read_parquet(join(accuracy_dir(str(run_dir), "laionet", MODEL), "summary.parquet"))
    top1 = summary[summary["k"] == 1].set_index("weighting")["accuracy"]
    assert f"<b>{top1['laion'] - top1['equal']:.1%}</b> (laion)" in section


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (scripts/setup.sh installs it)")
def test_every_figure_loads_in_a_browser(run_dir: Path) -> None:
    index = Path(report_dir(str(run_dir))) / "index.html"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000", "--dump-dom",
         index.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    status = re.search(r'id="figures-status" data-loaded="(\d+)" data-total="(\d+)"', result.stdout)
    assert status, result.stdout[-2000:] + result.stderr[-2000:]
    loaded, total = map(int, status.groups())
    assert total == len(re.findall(r"<img ", _page(run_dir))) and loaded == total > 0


def test_missing_sections_are_listed_not_fatal(tmp_path: Path) -> None:
    assert run_report(str(tmp_path / "empty")).extra["sections"] == []
    page = (tmp_path / "empty" / "report" / "index.html").read_text()
    assert page.count("Not computed in this run") == 14  # every section, the paper-vs-this-run table too
    run = tmp_path / "run"
    sweep = pd.DataFrame({"threshold": [0.0, 0.5, 1.0], "n_samples": [9, 4, 0], "n_classes": [3, 2, 0]})
    _parquet(sweep, run / "selection" / "sweep.parquet")
    (run / "selection" / "class_frequency.parquet").write_bytes(b"not parquet")
    writer = ShardWriter(str(run / "shards"))  # no variants: the shard's own labels; an undecodable image skipped
    writer.write("a", _jpeg((200, 0, 0)), "a tench", {"wnid": "n01440764"})
    writer.write("b", b"not a jpeg", "a tench", {"wnid": "n01440764"})
    writer.close()
    manifest = run_report(str(run), out_dir=str(tmp_path / "out"))
    assert manifest.extra["sections"] == ["selection", "grids"]
    assert Image.open(tmp_path / "out" / "grid_laionet_n01440764.png").size == (136, 136)  # one 128 px thumbnail
    assert {"accuracy", "intra", "relations", "frequency"} <= set(manifest.extra["not_computed"])
    assert (manifest.rows_in, manifest.rows_out, manifest.dropped) == (3, 2, {"unreadable": 1})  # + the shard's
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Unreadable tables" in page and "selection/class_frequency.parquet" in page
    assert (tmp_path / "out" / "fig_threshold_sweep.png").is_file()


def test_rerender_removes_figures_it_no_longer_draws(tmp_path: Path, run_dir: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "evaluate" / "relations")
    manifest = run_report(str(run))
    assert "relations" in manifest.extra["not_computed"]
    assert not list((run / "report").glob("fig_relations_*.png"))


def test_cli_report(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0 and "--disclaimer" in result.output
    out = tmp_path / "cli"
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(out), "--preset", "demo", "--grid-classes", "2"])
    assert result.exit_code == 0, result.output
    assert "[report]" in result.output and str(out / "index.html") in result.output
    assert "openclipart" in (out / "index.html").read_text()
    assert len(list(out.glob("grid_*.png"))) == 8  # 2 classes × 4 variants (2 of them filtered, Appendix D)
    bad = runner.invoke(app, ["report", str(run_dir), "--out", str(out), "--preset", "nope"])
    assert bad.exit_code == 2 and "unknown preset" in bad.output


def test_section4_numbers_and_figures_come_from_the_diagnostics(run_dir: Path) -> None:
    page = _page(run_dir)
    manifest = read_manifest(report_dir(str(run_dir)))
    assert manifest is not None
    assert {"text-alone", "selection-frequency", "filtered", "nearest"} <= set(manifest.extra["sections"])
    section = {a: page.split(f'<section id="{a}">')[1].split("</section>")[0]
               for a in ("text-alone", "selection-frequency", "filtered", "nearest")}  # fmt: skip
    text = pd.read_parquet(run_dir / "diagnose" / "text-alone" / "summary.parquet").iloc[0]
    assert f"{text['share_own_class_first']:.1%}" in section["text-alone"]
    assert "fig_text_alone_histogram.png" in section["text-alone"] and "fig_text_alone_p.png" in section["text-alone"]
    assert "the 3 other classes of the catalog" in section["text-alone"]
    props = pd.read_parquet(run_dir / "diagnose" / "selection-frequency" / "proportions.parquet")
    assert len(props) == 8 and section["selection-frequency"].count("<tr>") == len(props) + 1
    assert "fig_selection_frequency.png" in section["selection-frequency"]
    filtered = pd.read_parquet(run_dir / "diagnose" / "filtered" / "summary.parquet")
    for name in filtered["variant"]:
        acc = pd.read_parquet(Path(accuracy_dir(str(run_dir), name, MODEL)) / "summary.parquet")
        top1 = acc[(acc["k"] == 1) & (acc["weighting"] == "equal")]["accuracy"].iloc[0]
        assert name in section["filtered"] and f"{top1:.1%}" in section["filtered"]
    search = read_manifest(str(run_dir / "diagnose" / "nearest" / "run" / "selection"))
    assert search is not None and search.rows_out >= 20  # at least every query whose own text is in the corpus
    assert search.rows_out == len(
        pd.read_parquet(run_dir / "diagnose" / "nearest" / "run" / "selection" / "laionet.parquet")
    )
    assert f"<b>{search.rows_out}</b>" in section["nearest"] and "fig_nearest_sweep.png" in section["nearest"]
    assert "nearest captions vs laionet-image" in section["nearest"]
    assert "recall@1" in section["nearest"]
    for name in ("fig_text_alone_p.png", "fig_selection_frequency.png", "fig_nearest_sweep.png"):
        assert (Path(report_dir(str(run_dir))) / name).stat().st_size > 1000
