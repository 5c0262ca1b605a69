"""Re-runs never lie: the kill harness, and one test per numbered case of the stage contract.

The harness runs a stage in a forked child process and SIGKILLs it at seeded random moments (between outputs,
during a write, during the manifest), then re-runs the stage with one of two configs and checks that the output
directory is exactly what an uninterrupted run of that config leaves: the same files, byte for byte, and a manifest
with the same config hash and counts — no leftover of the killed run or of the other config. ``LAIONET_STRESS=1``
(``make stress``) runs more kill points on larger inputs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from laionet.core.manifest import Manifest, read_manifest, write_manifest
from laionet.core.stage import StageBusyError, UpstreamError, stage_lock
from laionet.evaluation.accuracy import run_accuracy
from laionet.evaluation.variants import run_variants
from laionet.images.ocr import run_ocr, run_ocr_shards
from laionet.images.references import ingest
from laionet.images.verify import run_verify
from laionet.selection.select import SelectionConfig, run_select
from laionet.selection.similarity import SimilarityConfig, run_similarity
from laionet.text.catalog import run_catalog
from laionet.text.lemmas import run_lemmas
from laionet.text.match import MatchConfig, run_match
from tests.conftest import write_class_file, write_corpus_part


def _context() -> multiprocessing.context.BaseContext:
    """Children forked from a clean server process with this module preloaded: fast as fork, and safe after other
    tests left threads in this process (Ray's and gRPC's at-fork handlers crash a plain fork child)."""
    multiprocessing.set_forkserver_preload([__name__, "laionet.inference.engine", "timm"])
    return multiprocessing.get_context("forkserver")


STRESS = os.environ.get("LAIONET_STRESS") == "1"
KILL_POINTS = 100 if STRESS else 20
SCALE = 20 if STRESS else 1
LION, COUGAR, LEMON = "n02129165", "n02125311", "n07749582"
WORDS = ["lion", "mountain lion", "lemon", "a cougar", "tabby", "dusk", "grass", "yarn", "tart", "Lemon"]


class HashEncoder:
    """A deterministic stand-in text encoder (the subject here is the stage contract, not the model): each text maps
    to a unit vector seeded by the text and the spec."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(f"{self.spec}|{text}".encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).normal(size=8)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)


class PixelOcr:
    """A stand-in OCR engine: the 'text' of an image is the class name encoded in its first pixel's red value."""

    def read(self, image: Any) -> str:
        return {10: "lion", 20: "lemon"}.get(image.getpixel((0, 0))[0] // 10 * 10, "")


# ---------------------------------------------------------------------------------------------------------------------
# the world: tiny inputs for every stage, built once per test


def _world(root: Path) -> dict[str, str]:
    rng = random.Random(0)
    w: dict[str, str] = {}
    w["classes_a"] = write_class_file(root / "classes_a.txt", [LION, COUGAR, LEMON])
    w["classes_b"] = write_class_file(root / "classes_b.txt", [LION, LEMON])
    w["catalog"] = str(root / "catalog.parquet")
    run_catalog(w["classes_a"], w["catalog"])
    w["lemma_map"] = str(root / "lemmas" / "default.parquet")
    run_lemmas(w["catalog"], "default", w["lemma_map"])
    for name, parts in (("corpus_a", 3), ("corpus_b", 2)):
        for p in range(parts):
            texts = [" ".join(rng.choices(WORDS, k=3)) for _ in range(40 * SCALE)]
            write_corpus_part(root / name / f"p{p}.parquet", texts)
        w[name] = str(root / name)
    w["matches"] = str(root / "matches")
    run_match(w["corpus_a"], w["matches"], w["lemma_map"])
    w["sim"] = str(root / "sim")
    run_similarity(w["matches"], w["catalog"], w["sim"], SimilarityConfig(encoder="st:a"), lambda c: HashEncoder("a"))
    # a tiny ImageNetV2-like folder: class ids 0..2 → lion, cougar, lemon; red value encodes the OCR 'text'
    v2 = root / "v2" / "matched"
    info = [{"cid": i, "wnid": w_} for i, w_ in enumerate([LION, COUGAR, LEMON])]
    (root / "v2").mkdir()
    (root / "v2" / "class_info.json").write_text(json.dumps(info))
    for cid in range(3):
        (v2 / str(cid)).mkdir(parents=True)
        for i in range(4 * SCALE):
            red = rng.choice([10, 20, 40])
            Image.new("RGB", (16, 16), (red, i % 255, cid * 50)).save(v2 / str(cid) / f"{i}.png")
    w["v2_root"], w["v2_info"] = str(v2), str(root / "v2" / "class_info.json")
    for name, per in (("shards_a", 5), ("shards_b", 3)):
        w[name] = str(root / name)
        ingest("imagenetv2", w[name], per, root=v2, class_info=Path(w["v2_info"]))
    w["verify"] = str(root / "verify_ref")
    run_verify(w["shards_a"], w["verify"])
    keys = pd.read_parquet(Path(w["shards_a"]) / "00000.parquet")["key"].tolist()
    w["quarantine"] = str(root / "q.parquet")
    pd.DataFrame({"shard": ["x"], "key": [keys[0]], "reason": ["undecodable"]}).to_parquet(w["quarantine"])
    labels = pd.concat(pd.read_parquet(p) for p in sorted(Path(w["shards_a"]).glob("*.parquet")))
    w["labels"] = str(root / "labels.parquet")
    labels[["key", "class_index"]].to_parquet(w["labels"])
    topk = [[int(c), (int(c) + 1) % 1000] if i % 3 else [(int(c) + 1) % 1000, int(c)] for i, c in
            enumerate(labels["class_index"])]  # fmt: skip
    w["predictions"] = str(root / "pred.predictions.parquet")
    pd.DataFrame({"key": labels["key"], "topk": topk}).to_parquet(w["predictions"])
    return w


# each stage: (output target, run(world, config name) for configs "a" and "b")
STAGES: dict[str, tuple[str, Callable[[dict[str, str], str, str], Any]]] = {
    "catalog": ("out.parquet", lambda w, c, out: run_catalog(w[f"classes_{c}"], out)),
    "lemmas": ("out.parquet", lambda w, c, out: run_lemmas(w["catalog"], "default" if c == "a" else "paper", out)),
    "match": ("out", lambda w, c, out: run_match(w[f"corpus_{c}"], out, w["lemma_map"], MatchConfig())),
    "similarity": (
        "out",
        lambda w, c, out: run_similarity(
            w["matches"], w["catalog"], out, SimilarityConfig(encoder=f"st:{c}"), lambda cfg: HashEncoder(c)
        ),
    ),
    "select": (
        "out",
        lambda w, c, out: run_select(
            w["matches"], w["sim"], w["catalog"], out, SelectionConfig(threshold=0.0 if c == "a" else 0.3, top_k=3)
        ),
    ),
    "ingest": (
        "out",
        lambda w, c, out: ingest(
            "imagenetv2", out, 5 if c == "a" else 2, root=Path(w["v2_root"]), class_info=Path(w["v2_info"])
        ),
    ),
    "verify": ("out", lambda w, c, out: run_verify(w[f"shards_{c}"], out)),
    "ocr": (
        "out",
        lambda w, c, out: run_ocr(
            w["shards_a"], w["catalog"], out, engine_factory=PixelOcr, quarantine=w["quarantine"] if c == "b" else None
        ),
    ),
    "ocr-groups": ("out", lambda w, c, out: _ocr_groups(w, c, out)),
    "variants": (
        "out",
        lambda w, c, out: run_variants(
            w["shards_a"], out, quarantine=w["verify"] + "/quarantine.parquet" if c == "b" else None
        ),
    ),
    "infer": ("out", lambda w, c, out: _infer(w, c, out)),
    "accuracy": (
        "out",
        lambda w, c, out: run_accuracy(w["predictions"], w["labels"], out, n_boot=20 if c == "a" else 30),
    ),
}


def _ocr_groups(world: dict[str, str], config: str, out: str) -> Any:
    """OCR as the acquire flow fans it out: one ``run_ocr_shards`` per shard group (unlocked), then ``run_ocr``
    writes the manifest; a kill inside any group must leave the output visibly incomplete."""
    from laionet.images.shard_list import shard_groups

    quarantine = world["quarantine"] if config == "b" else None
    for group in shard_groups(world["shards_a"], 2):
        run_ocr_shards(world["shards_a"], world["catalog"], out, group, engine_factory=PixelOcr, quarantine=quarantine)
    return run_ocr(world["shards_a"], world["catalog"], out, engine_factory=PixelOcr, quarantine=quarantine)


def _infer(world: dict[str, str], config: str, out: str) -> Any:
    """A tiny random-weight timm model, seeded: the same weights in every process, so outputs repeat byte for byte."""
    import torch

    from laionet.inference.engine import run_inference
    from laionet.inference.stream import InferConfig

    torch.manual_seed(0)
    settings = InferConfig(device="cpu", batch_size=4, workers=0, top_k=5 if config == "a" else 3)
    return run_inference(world["shards_a"], ["timm:test_resnet@random"], out, config=settings)


def _snapshot(root: Path, target: str) -> dict[str, Any]:
    """What a stage leaves in its output: every file (bytes digest) except its bookkeeping, and the manifest's
    config hash and counts."""
    path = root / target
    files: dict[str, str] = {}
    if target.endswith(".parquet"):
        candidates = [p for p in root.iterdir() if p.name.startswith(path.stem) and p.is_file()]
    else:
        candidates = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    for p in candidates:
        rel = p.relative_to(root).as_posix()
        if "/_parts/" in f"/{rel}" or rel.endswith(("_lock.json", "manifest.json")):
            continue
        files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    targets = [path] if target.endswith(".parquet") else [path, *(p for p in path.rglob("*") if p.is_dir())]
    facts = {}
    for each in targets:  # the stage's manifest, or those of its sub-outputs (variants: one per label set)
        manifest = read_manifest(str(each))
        if manifest is not None:
            facts[each.relative_to(root).as_posix()] = (
                manifest.config_hash, manifest.rows_in, manifest.rows_out, manifest.dropped, sorted(manifest.outputs)
            )  # fmt: skip
    return {"files": files, "manifest": facts or None}


def _child(stage: str, world: dict[str, str], config: str, out: str) -> None:
    STAGES[stage][1](world, config, out)


def _clear(root: Path, target: str) -> None:
    path = root / target
    if target.endswith(".parquet"):
        for p in root.iterdir():
            if p.name.startswith(path.stem):
                p.unlink()
    elif path.exists():
        shutil.rmtree(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _world(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("stage", list(STAGES))
def test_killed_runs_then_reruns_give_exactly_an_uninterrupted_run(stage: str, world, tmp_path) -> None:
    target, run = STAGES[stage]
    ctx = _context()
    expected, durations = {}, {}
    for config in ("a", "b"):  # the uninterrupted runs, in the very place the killed runs write
        start = time.perf_counter()
        child = ctx.Process(target=_child, args=(stage, world, config, str(tmp_path / target)))
        child.start()
        child.join()
        assert child.exitcode == 0
        durations[config] = time.perf_counter() - start
        expected[config] = _snapshot(tmp_path, target)
        assert expected[config]["manifest"] is not None
        _clear(tmp_path, target)
    assert expected["a"] != expected["b"], "the two configs must give different outputs"
    rng = random.Random(f"kill-{stage}")
    killed_before_end = 0
    for _ in range(KILL_POINTS):
        doomed = rng.choice("ab")
        child = ctx.Process(target=_child, args=(stage, world, doomed, str(tmp_path / target)))
        start = time.perf_counter()
        child.start()
        child.join(timeout=rng.uniform(0, durations[doomed]))
        if child.is_alive():
            # Process.kill, not os.kill: a forkserver child can end and be reaped between the two calls
            child.kill()
        child.join()
        if child.exitcode == -signal.SIGKILL:
            killed_before_end += 1
        else:  # it finished first (children fork from a warmer parent and get faster): aim earlier next time
            durations[doomed] = (durations[doomed] + time.perf_counter() - start) / 2
        config = rng.choice("ab")
        run(world, config, str(tmp_path / target))  # the re-run, in this process (the stale lock is taken over)
        assert _snapshot(tmp_path, target) == expected[config], f"{stage}: killed {doomed} run, then {config}"
    assert killed_before_end >= KILL_POINTS // 3, "most kill points must land while the stage runs"


# ---------------------------------------------------------------------------------------------------------------------
# the numbered cases of the issue, each on the smallest input that shows it


def test_killed_reselect_with_a_new_config_never_leaves_the_old_manifest_vouching(world, tmp_path) -> None:
    out = str(tmp_path / "sel")
    first = run_select(world["matches"], world["sim"], world["catalog"], out, SelectionConfig(threshold=0.0))
    # a re-run at another threshold dies right after rewriting the index
    import laionet.selection.select as select_module

    original = select_module.write_parquet_atomic

    def die_after_index(table, path):  # the index is written by the streaming writer; this is the next write
        raise KeyboardInterrupt("killed")

    select_module.write_parquet_atomic = die_after_index
    try:
        with pytest.raises(KeyboardInterrupt):
            run_select(world["matches"], world["sim"], world["catalog"], out, SelectionConfig(threshold=0.9))
    finally:
        select_module.write_parquet_atomic = original
    assert read_manifest(out) is None and (tmp_path / "sel" / "_INCOMPLETE").exists()
    again = run_select(world["matches"], world["sim"], world["catalog"], out, SelectionConfig(threshold=0.0))
    assert again.rows_out == first.rows_out == len(pd.read_parquet(tmp_path / "sel" / "laionet.parquet"))


def test_download_index_of_an_incomplete_selection_is_refused(world, tmp_path) -> None:
    from laionet.images.download import prepare_index

    out = tmp_path / "sel"
    run_select(world["matches"], world["sim"], world["catalog"], str(out), SelectionConfig(threshold=0.0))
    (out / "_manifest.json").unlink()
    (out / "_INCOMPLETE").write_text("{}")
    with pytest.raises(UpstreamError, match="incomplete select stage"):
        prepare_index(str(out / "laionet.parquet"), str(tmp_path / "download_index.parquet"))


def test_shards_of_an_earlier_ingest_are_not_listed_or_kept(world, tmp_path) -> None:
    out = tmp_path / "shards"
    ingest("imagenetv2", str(out), 2, root=Path(world["v2_root"]), class_info=Path(world["v2_info"]))
    many = sorted(p.name for p in out.glob("*.tar"))
    manifest = ingest("imagenetv2", str(out), 100, root=Path(world["v2_root"]), class_info=Path(world["v2_info"]))
    assert len(many) > 1 and sorted(p.name for p in out.glob("*.tar")) == ["00000.tar"]
    assert len(manifest.outputs) == 1
    labels = run_variants(str(out), str(tmp_path / "v"))
    assert labels.rows_in == manifest.rows_out  # each sample once, none from the earlier shards


def test_ocr_redoes_a_shard_rewritten_with_other_keys(world, tmp_path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(world["shards_a"], shards)
    first = run_ocr(str(shards), world["catalog"], str(tmp_path / "ocr"), engine_factory=PixelOcr)
    # the shard directory is rebuilt with fewer samples per shard: same file names, other keys
    shutil.rmtree(shards)
    ingest("imagenetv2", str(shards), 2, root=Path(world["v2_root"]), class_info=Path(world["v2_info"]))
    second = run_ocr(str(shards), world["catalog"], str(tmp_path / "ocr"), engine_factory=PixelOcr)
    flags = pd.concat(pd.read_parquet(p) for p in second.outputs)
    listed = pd.concat(pd.read_parquet(p) for p in sorted(shards.glob("*.parquet")))
    assert sorted(flags["key"]) == sorted(listed["key"]) and second.rows_in == first.rows_in
    assert len(second.outputs) == len(list(shards.glob("*.tar"))) == len(list((tmp_path / "ocr").glob("*.parquet")))


def test_ocr_counts_a_truncated_shard_and_skips_quarantined_samples(world, tmp_path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(world["shards_a"], shards)
    tar = shards / "00000.tar"
    tar.write_bytes(tar.read_bytes()[:1500])  # cut inside the second member
    manifest = run_ocr(str(shards), world["catalog"], str(tmp_path / "ocr"), engine_factory=PixelOcr,
                       quarantine=world["quarantine"])  # fmt: skip
    assert manifest.extra["truncated_shards"] == [str(tar)]
    manifest.check_counts()


def test_duplicate_keys_are_dropped_at_match_and_named(world, tmp_path) -> None:
    part = write_corpus_part(tmp_path / "c" / "p.parquet", ["a lion", "a lemon", "lion again", "lemon"],
                             SAMPLE_ID=[7, 8, 7, 9])  # fmt: skip
    config = MatchConfig.model_validate({"columns": {"key": "SAMPLE_ID"}})
    manifest = run_match(str(part), str(tmp_path / "m"), world["lemma_map"], config)
    assert manifest.dropped["duplicate_key"] == 1 and manifest.extra["duplicate_keys"] == ["7"]
    assert sorted(pd.read_parquet(tmp_path / "m" / "p.parquet")["key"]) == ["7", "8", "9"]


def test_an_all_null_caption_column_counts_null_text(world, tmp_path) -> None:
    import pyarrow as pa

    part = write_corpus_part(tmp_path / "c" / "p.parquet", pa.nulls(3, pa.null()))
    manifest = run_match(str(part), str(tmp_path / "m"), world["lemma_map"])
    assert manifest.dropped["null_text"] == 3 and manifest.rows_out == 0


def test_a_second_run_into_the_same_output_fails_fast_naming_the_owner(tmp_path) -> None:
    with (
        stage_lock(str(tmp_path / "out"), "select"),
        pytest.raises(StageBusyError, match=rf"pid {os.getpid()} .*stage select"),
        stage_lock(str(tmp_path / "out"), "select"),
    ):
        pass
    with stage_lock(str(tmp_path / "out"), "select"):  # released: free again
        pass


def test_a_dead_owners_lock_is_taken_over(tmp_path) -> None:
    ctx = _context()
    child = ctx.Process(target=_hold_lock_forever, args=(str(tmp_path / "out"),))
    child.start()
    deadline = time.time() + 10
    while not (tmp_path / "out" / "_lock.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(StageBusyError), stage_lock(str(tmp_path / "out")):
        pass
    child.kill()
    child.join()
    with stage_lock(str(tmp_path / "out")):
        pass


def _hold_lock_forever(out: str) -> None:
    with stage_lock(out, "test"):
        time.sleep(60)


SIM_A = SimilarityConfig(encoder="st:a")


def _encoder_a(config: SimilarityConfig) -> HashEncoder:
    return HashEncoder("a")


def test_readers_name_the_upstream_stage_to_rerun(world, tmp_path) -> None:
    with pytest.raises(UpstreamError, match=r"match stage is not complete.*laionet match"):
        run_similarity(str(tmp_path / "nothing"), world["catalog"], str(tmp_path / "s"), SIM_A, _encoder_a)
    broken = tmp_path / "matches"
    shutil.copytree(world["matches"], broken)
    manifest = read_manifest(str(broken))
    assert manifest is not None
    manifest.rows_in += 1
    manifest.dropped["unmatched"] += 1
    write_manifest(str(broken), manifest.model_copy(update={"outputs": [*manifest.outputs, str(broken / "gone")]}))
    with pytest.raises(UpstreamError, match="outputs that are gone"):
        run_similarity(str(broken), world["catalog"], str(tmp_path / "s"), SIM_A, _encoder_a)


def test_a_corrupt_part_record_is_redone_not_trusted(world, tmp_path) -> None:
    out = tmp_path / "m"
    first = run_match(world["corpus_a"], str(out), world["lemma_map"])
    (out / "_parts" / "p1.json").write_text("{not json")
    (out / "_manifest.json").unlink()
    again = run_match(world["corpus_a"], str(out), world["lemma_map"])
    assert again.extra["parts_skipped"] == 2 and again.rows_out == first.rows_out


def test_a_changed_input_part_is_rematched(world, tmp_path) -> None:
    corpus = tmp_path / "c"
    shutil.copytree(world["corpus_a"], corpus)
    out = tmp_path / "m"
    run_match(str(corpus), str(out), world["lemma_map"])
    time.sleep(0.01)  # a new modification time even on coarse clocks
    write_corpus_part(corpus / "p0.parquet", ["lion"] * 5)  # same name, other content: the manifest is stale too
    again = run_match(str(corpus), str(out), world["lemma_map"])
    assert again.extra["parts_skipped"] == 2
    assert len(pd.read_parquet(out / "p0.parquet")) == 5


def test_a_key_repeated_in_another_part_keeps_its_first_matched_row(world, tmp_path) -> None:
    write_corpus_part(tmp_path / "c" / "a.parquet", ["a lion", "a lemon"], SAMPLE_ID=[1, 2])
    write_corpus_part(tmp_path / "c" / "b.parquet", ["lion again", "grass", "lemon"], SAMPLE_ID=[2, 5, 3])
    config = MatchConfig.model_validate({"columns": {"key": "SAMPLE_ID"}})
    manifest = run_match(str(tmp_path / "c"), str(tmp_path / "m"), world["lemma_map"], config)
    keys = [pd.read_parquet(tmp_path / "m" / f"{p}.parquet")["key"].tolist() for p in "ab"]
    assert keys == [["1", "2"], ["3"]]
    assert (
        manifest.dropped["duplicate_key"] == 1 and manifest.rows_out == 3 and manifest.extra["duplicate_keys"] == ["2"]
    )
    (tmp_path / "m" / "_manifest.json").unlink()  # resumed: both parts reused, same counts
    again = run_match(str(tmp_path / "c"), str(tmp_path / "m"), world["lemma_map"], config)
    assert again.extra["parts_skipped"] == 2 and again.dropped == manifest.dropped


def test_a_killed_similarity_run_that_only_reencoded_the_synsets_leaves_no_trace(world, tmp_path) -> None:
    """A run of another encoder killed after re-encoding the synset texts (``_synsets.*``) but before any part: every
    part record is still this configuration's, so the re-run resumes them all — and must still leave its own synset
    cache, byte for byte what an uninterrupted run leaves (the kill harness hit this at random)."""
    import shutil

    def run(encoder: str, out: Path) -> None:
        run_similarity(world["matches"], world["catalog"], str(out), SimilarityConfig(encoder=f"st:{encoder}"),
                       lambda cfg: HashEncoder(encoder))  # fmt: skip

    run("a", tmp_path / "a")
    run("b", tmp_path / "out")
    expected = _snapshot(tmp_path, "out")
    # the killed run of `a`: it took the directory (manifest gone, marker written) and re-encoded the synsets
    (tmp_path / "out" / "_manifest.json").unlink()
    (tmp_path / "out" / "_INCOMPLETE").write_text("{}")
    for name in ("_synsets.npy", "_synsets.json"):
        shutil.copy(tmp_path / "a" / name, tmp_path / "out" / name)
    run("b", tmp_path / "out")
    assert _snapshot(tmp_path, "out") == expected


def test_a_part_rewritten_by_a_killed_run_of_another_config_is_redone(world, tmp_path) -> None:
    """A run of config b rewrites a part's output, then dies before writing that part's record: config a's record of
    the part is still there and names a's config, but no longer vouches for the file (its size and mtime changed),
    so a's re-run redoes the part instead of keeping b's content (the kill harness hit this in the infer stage)."""
    import shutil

    def run(encoder: str, out: Path) -> Manifest:
        return run_similarity(world["matches"], world["catalog"], str(out), SimilarityConfig(encoder=f"st:{encoder}"),
                              lambda cfg: HashEncoder(encoder))  # fmt: skip

    run("b", tmp_path / "b")
    run("a", tmp_path / "out")
    expected = _snapshot(tmp_path, "out")
    part = sorted((tmp_path / "out").glob("p*.parquet"))[0]
    (tmp_path / "out" / "_manifest.json").unlink()  # the killed run of b: it took the directory …
    (tmp_path / "out" / "_INCOMPLETE").write_text("{}")
    time.sleep(0.01)
    shutil.copy(tmp_path / "b" / part.name, part)  # … and rewrote one part before its record
    again = run("a", tmp_path / "out")
    assert again.extra["parts_skipped"] == len(again.outputs) - 1  # only the rewritten part was redone
    assert _snapshot(tmp_path, "out") == expected


def test_the_diagnose_flows_file_stages_write_manifests_and_resume(world, tmp_path) -> None:
    """The stand-in caption and query sets are stages of their own: a manifest beside the file (so the task cache can
    vouch for it and a re-run returns the complete output untouched), an interrupted one visibly incomplete."""
    from laionet.core.stage import require_file_input
    from laionet.diagnostics.text_alone import matched_captions
    from laionet.retrieval.search import variant_queries

    out = str(tmp_path / "captions.parquet")
    first = matched_captions(world["matches"], out)
    assert first.outputs == [out] and first.rows_in == first.rows_out + first.dropped["multi_class"]
    assert require_file_input(out, "matched-captions") == first  # listed by its manifest: complete
    mtime = (tmp_path / "captions.parquet").stat().st_mtime_ns
    assert matched_captions(world["matches"], out) == first
    assert (tmp_path / "captions.parquet").stat().st_mtime_ns == mtime  # untouched

    index = tmp_path / "index.parquet"
    pd.DataFrame({"key": ["k1", "k2"], "text": ["a lion", "a lemon"]}).to_parquet(index)
    labels = tmp_path / "labels.parquet"
    pd.DataFrame({"key": ["k2"], "wnid": [LEMON]}).to_parquet(labels)
    queries = variant_queries(str(labels), str(index), str(tmp_path / "q.parquet"))
    assert queries.rows_out == 1 and pd.read_parquet(tmp_path / "q.parquet")["text"].tolist() == ["a lemon"]
    assert variant_queries(str(labels), str(index), str(tmp_path / "q.parquet")) == queries
