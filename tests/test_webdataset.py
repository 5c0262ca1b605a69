"""WebDataset as the shard engine (#21, #19): shards written sample by sample through ``webdataset.TarWriter`` (memory
bounded by one sample), a ``cls`` member and ``_info.json`` that webdataset/timm users read as they are, shards read
through webdataset pipelines from local paths, a loopback HTTP server (streamed, no range requests) or ``pipe:``
commands, every damaged shard and undecodable image counted with its reason; the download's ``_attempts/`` gone once
its shards are final; every third-party import declared in pyproject.toml."""

from __future__ import annotations

import ast
import collections
import http.server
import io
import json
import os
import re
import socketserver
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from laionet.core.manifest import Manifest, config_hash, write_manifest
from laionet.images.shard_writer import ShardWriter, encode_rgb_jpeg

ROOT = Path(__file__).resolve().parents[1]
TENCH, GOLDFISH, LION = "n01440764", "n01443537", "n02129165"  # ImageNet-1k classes 0, 1, 291
NOT_1K = "n00004475"  # organism: a WordNet synset outside ImageNet-1k


def _jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# a loopback HTTP server that records what each request asked for


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server`` plus single byte ranges (as object stores answer them: Parquet listings are read by
    ranges); every request is recorded as (path, Range header)."""

    requests: list[tuple[str, str | None]]

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        self.requests.append((self.path, self.headers.get("Range")))
        wanted = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not wanted or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
        assert match, wanted
        first, last = match.groups()
        start = int(first) if first else max(0, size - int(last))
        end = min(int(last), size - 1) if first and last else size - 1
        if start >= size:
            self.send_error(416)
            return None
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


@pytest.fixture
def serve() -> Iterator:
    """``serve(directory)`` → (base URL, the requests it gets)."""
    servers = []

    def start(directory: Path) -> tuple[str, list[tuple[str, str | None]]]:
        requests: list[tuple[str, str | None]] = []
        handler = type("Handler", (_RangeHandler,), {"requests": requests})

        def make(*args, **kwargs):  # type: ignore[no-untyped-def]
            return handler(*args, directory=str(directory), **kwargs)

        httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), make)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", requests

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _shard_dir(root: Path) -> Path:
    """A shard stage's output: three shards (manifest written), 00001.tar holding an undecodable image and a sample of
    a wnid outside ImageNet-1k, 00002.tar cut in the middle afterwards."""
    out = root / "shards"
    with ShardWriter(str(out), per_shard=4) as writer:
        for i in range(12):
            key = f"part-0/{i}"
            jpg = b"\xff\xd8 not a jpeg" if i == 5 else _jpeg(i)
            wnid = NOT_1K if i == 6 else (TENCH, GOLDFISH, LION)[i % 3]
            writer.write(key, jpg, f"caption {i}", {"wnid": wnid, "class_index": i % 3})
    manifest = Manifest(stage="ingest-test", config={}, config_hash=config_hash({}), outputs=writer.outputs,
                        rows_in=12, rows_out=12)  # fmt: skip
    write_manifest(str(out), manifest)
    tar = out / "00002.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    return out


def _test_resnet_weights(path: Path) -> str:
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    return str(path)


def _outputs(model_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    preds = pd.concat(pd.read_parquet(p) for p in sorted(model_dir.glob("*.predictions.parquet")))
    emb = np.concatenate([np.load(p) for p in sorted(model_dir.glob("*.npy"))]).astype(np.float32)
    return preds.reset_index(drop=True), emb


def test_inference_and_verify_stream_shards_over_http_like_local_files(tmp_path: Path, serve) -> None:
    """The same outputs and counts from a loopback HTTP server as from the local files — the tars streamed (not one
    range request), the truncated shard and the undecodable image counted with their reasons; DataLoader workers split
    the shards between them (each shard read once)."""
    from laionet.core.layout import slug
    from laionet.images.verify import run_verify
    from laionet.inference.engine import run_inference
    from laionet.inference.stream import InferConfig

    shards = _shard_dir(tmp_path)
    base, requests = serve(tmp_path)
    url = f"{base}/shards"
    spec = f"timm:test_resnet@{_test_resnet_weights(tmp_path / 'w.pth')}"

    local = run_inference(str(shards), [spec], str(tmp_path / "inf-local"), config=InferConfig(workers=0))[spec]
    progress: list[tuple[int, int]] = []
    remote = run_inference(url, [spec], str(tmp_path / "inf-http"), config=InferConfig(workers=2),
                           progress=lambda done, total: progress.append((done, total)))[spec]  # fmt: skip
    assert progress[-1] == (3, 3) and len(progress) == 3  # two workers, three shards: each read by one worker
    assert remote.inputs == [f"{url}/0000{i}.tar" for i in range(3)]
    for manifest in (local, remote):
        assert manifest.extra["truncated_shards"] == 1
        assert manifest.dropped["undecodable"] == 1
        assert manifest.rows_in == manifest.rows_out + sum(manifest.dropped.values())
        assert 9 <= manifest.rows_in < 12  # 8 samples of the whole shards, some of the cut one's
    assert (remote.rows_in, remote.rows_out, remote.dropped) == (local.rows_in, local.rows_out, local.dropped)
    (local_preds, local_emb), (http_preds, http_emb) = (
        _outputs(tmp_path / d / slug(spec)) for d in ("inf-local", "inf-http")
    )
    assert local_preds["key"].tolist() == http_preds["key"].tolist()
    assert "part-0/5" not in set(local_preds["key"])
    assert [list(t) for t in local_preds["topk"]] == [list(t) for t in http_preds["topk"]]
    assert np.allclose(local_emb, http_emb, atol=1e-3)

    verified = {name: run_verify(src, str(tmp_path / f"verify-{name}")) for name, src in (("local", str(shards)),
                                                                                            ("http", url))}  # fmt: skip
    quarantines = {
        name: pd.read_parquet(tmp_path / f"verify-{name}" / "quarantine.parquet")[["key", "reason"]]
        for name in verified
    }
    pd.testing.assert_frame_equal(quarantines["local"], quarantines["http"])
    reasons = dict(zip(quarantines["http"]["key"], quarantines["http"]["reason"], strict=True))
    assert reasons["*"] == "truncated_shard" and reasons["part-0/5"] == "undecodable_image"
    assert verified["http"].extra["truncated_shards"] == 1
    assert verified["http"].rows_in == verified["http"].rows_out + sum(verified["http"].dropped.values())
    assert verified["http"].model_dump(include={"rows_in", "rows_out", "dropped"}) == verified["local"].model_dump(
        include={"rows_in", "rows_out", "dropped"}
    )

    tar_requests = [(path, rng) for path, rng in requests if path.endswith(".tar")]
    assert tar_requests, "the shards were read over HTTP"
    assert all(rng is None for _, rng in tar_requests), f"shards streamed, not read by ranges: {tar_requests[:3]}"


def test_damage_is_recorded_with_shard_key_and_reason(tmp_path: Path) -> None:
    """Inference's last batch of a shard names each problem (shard-level ones with key ``*``); a shard read by a
    ``pipe:`` command is read the same way, a failing command recorded as a truncated shard."""
    from laionet.images.shards import ErrorLog, iter_raw
    from laionet.images.verify import verify_shard
    from laionet.inference.batches import decode_shard

    shards = _shard_dir(tmp_path)
    (*_, last) = decode_shard(str(shards / "00001.tar"), {}, set(), batch_size=2)
    assert last["last"] and not last["truncated"]
    assert [(k, r) for k, r, _ in last["errors"]] == [("part-0/5", "undecodable_image")]
    assert last["counts"] == {"read": 4, "quarantined": 0, "undecodable": 1, "no_image": 0}
    (*_, cut) = decode_shard(str(shards / "00002.tar"), {}, set(), batch_size=2)
    assert cut["truncated"] and ("*", "truncated_shard") in [(k, r) for k, r, _ in cut["errors"]]
    assert cut["counts"]["read"] < 4

    tar = shards / "00000.tar"
    assert verify_shard(f"pipe:cat {tar}") == verify_shard(str(tar))
    errors = ErrorLog()
    keys = [k for k, _ in iter_raw(f"pipe:head -c 3000 {tar}", errors)]
    assert len(keys) <= 1 and [(e.key, e.reason) for e in errors.errors] == [("*", "truncated_shard")]
    errors = ErrorLog()
    assert list(iter_raw(f"pipe:cat {tmp_path / 'missing.tar'}", errors)) == []
    assert [(e.shard, e.key, e.reason) for e in errors.errors] == [
        (f"pipe:cat {tmp_path / 'missing.tar'}", "*", "truncated_shard")
    ]
    with pytest.raises(OSError, match="truncated_shard"):  # no log given: a damaged shard raises, never passes quietly
        list(iter_raw(str(shards / "00002.tar")))

    # a stage over webdataset's notation: pipe: commands, brace-expanded
    from laionet.images.verify import run_verify

    manifest = run_verify(f"pipe:cat {shards}/{{00000..00002}}.tar", str(tmp_path / "verify"))
    quarantine = pd.read_parquet(tmp_path / "verify" / "quarantine.parquet")
    assert manifest.inputs == [f"pipe:cat {shards}/0000{i}.tar" for i in range(3)]
    assert ("*", "truncated_shard") in set(zip(quarantine["key"], quarantine["reason"], strict=True))
    assert ("part-0/5", "undecodable_image") in set(zip(quarantine["key"], quarantine["reason"], strict=True))
    assert manifest.rows_in == manifest.rows_out + sum(manifest.dropped.values())


def test_cls_and_info_json_read_by_plain_webdataset(tmp_path: Path) -> None:
    """An ingested reference set read as a webdataset user would, and by timm's webdataset reader: ``cls`` is the
    ImageNet-1k index of the wnid; a sample of a wnid outside ImageNet-1k has no ``cls``; ``_info.json`` has the
    classes, counts and timm's split."""
    import webdataset as wds

    from laionet.images.references import ingest

    root = tmp_path / "val"
    root.mkdir()
    labels = []
    for i, wnid in enumerate([TENCH, GOLDFISH, LION, LION, TENCH]):
        (root / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(_jpeg(i))
        labels.append(f"ILSVRC2012_val_{i + 1:08d} {wnid}")
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    out = tmp_path / "out"
    manifest = ingest("imagenet-val", str(out), per_shard=2, root=root, labels=tmp_path / "labels.txt")
    info = json.loads((out / "_info.json").read_text())
    split = info["splits"]["validation"]
    assert split["filenames"] == ["00000.tar", "00001.tar", "00002.tar"] and split["shard_lengths"] == [2, 2, 1]
    assert split["num_samples"] == info["counts"]["samples"] == manifest.rows_out == 5
    assert info["counts"]["by_wnid"] == {TENCH: 2, GOLDFISH: 1, LION: 2} and info["counts"]["without_cls"] == 0
    assert info["num_classes"] == 1000 and info["classes"][291] == LION

    urls = [str(out / name) for name in split["filenames"]]
    pairs = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls", "json"))
    assert len(pairs) == 5
    for image, cls, meta in pairs:
        assert image.mode == "RGB" and isinstance(cls, int) and info["classes"][cls] == meta["wnid"]
    assert [cls for _, cls, _ in pairs] == [0, 1, 291, 291, 0]
    from timm.data import create_dataset  # timm's webdataset reader: _info.json's split, the cls member

    dataset = create_dataset("wds/laionet", root=str(out), split="validation", is_training=False, batch_size=1)
    assert len(dataset) == 5 and [target for _, target in dataset] == [0, 1, 291, 291, 0]

    # outside ImageNet-1k: no cls (the json keeps the wnid and the run's own class index), counted in _info.json
    from laionet.images.shard_writer import write_shard_info

    with ShardWriter(str(tmp_path / "mixed"), per_shard=10) as writer:
        writer.write("a", _jpeg(1), "", {"wnid": LION, "class_index": 0})
        writer.write("b", _jpeg(2), "", {"wnid": NOT_1K, "class_index": 1})
    write_shard_info(str(tmp_path / "mixed"), list(zip(writer.outputs, writer.lengths, strict=True)),
                     writer.by_wnid, "train", "mixed")  # fmt: skip
    samples = list(wds.WebDataset(writer.outputs, shardshuffle=False))
    assert [s.get("cls") for s in samples] == [b"291", None]
    mixed = json.loads((tmp_path / "mixed" / "_info.json").read_text())
    assert (mixed["counts"]["with_cls"], mixed["counts"]["without_cls"]) == (1, 1)


def test_reference_writer_holds_one_sample_not_a_shard(tmp_path: Path) -> None:
    """Peak traced memory while writing a shard of n ~256 KB samples does not grow with n (the former writer held the
    whole shard: ≥ n samples); the tar is only under its final name once the shard is closed."""
    import tracemalloc

    size = 256 * 1024

    def peak(n: int, out: Path) -> int:
        rng = np.random.default_rng(n)
        tracemalloc.start()
        try:
            with ShardWriter(str(out), per_shard=n) as writer:
                for i in range(n):
                    payload = rng.bytes(size)  # the caller's one sample; dropped at the next iteration
                    writer.write(f"k/{i}", payload, "text", {"wnid": TENCH, "class_index": 0})
                    if i == 1:
                        assert not (out / "00000.tar").exists() and list(out.glob("00000.tar.tmp-*"))
                    del payload
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(3, tmp_path / "warm-up")  # webdataset's (and torch's) import and the class list: not the writer's memory
    small, large = peak(8, tmp_path / "a"), peak(48, tmp_path / "b")
    assert (tmp_path / "b" / "00000.tar").stat().st_size > 48 * size
    assert small < 4 * size and large < 4 * size, f"peak {large / 2**20:.1f} MiB for 48 samples of {size // 1024} KiB"
    assert large < small + size  # independent of the shard's size


def test_attempts_removed_after_a_complete_download_and_later_retries_get_new_names(tmp_path: Path) -> None:
    """``_attempts/`` (img2dataset's raw tars) is gone once the shards are final; a later run that retries a
    transient failure numbers its attempt after the final shards (the attempt folder is gone), so its shard is kept;
    the final shards carry ``cls`` and the directory ``_info.json``."""
    import webdataset as wds

    from laionet.images.attempt import DownloadConfig
    from laionet.images.download import run_download

    hits: collections.Counter[str] = collections.Counter()
    payload = encode_rgb_jpeg(_jpeg(3, (64, 48)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hits[self.path] += 1
            if self.path == "/flaky.jpg" and hits[self.path] <= 1:  # the first run's only attempt fails: 503
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        names = ["a.jpg", "b.jpg", "flaky.jpg"]
        index = pd.DataFrame(
            {"key": ["k/a", "k/b", "k/flaky"], "url": [f"{base}/{n}" for n in names], "text": names,
             "wnid": [LION, TENCH, NOT_1K], "class_index": [291, 0, 5]}
        )  # fmt: skip
        index.to_parquet(tmp_path / "index.parquet")
        config = DownloadConfig(processes=1, threads=2, timeout=5, samples_per_shard=2, image_size=32, retries=0,
                                attempts=1, allow_host=["127.0.0.1"])  # fmt: skip
        out = tmp_path / "shards"
        first = run_download(str(tmp_path / "index.parquet"), str(out), config)
        assert (first.rows_out, first.dropped) == (2, {"http_error": 1})
        assert not (out / "_attempts").exists()
        second = run_download(str(tmp_path / "index.parquet"), str(out), config)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (second.rows_out, second.dropped) == (3, {}) and hits["/flaky.jpg"] == 2
    assert not (out / "_attempts").exists() and not list(out.rglob("*.tmp-*"))
    assert sorted(Path(o).name for o in second.outputs) == ["00000000.tar", "00000001.tar", "00100000.tar"]
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 3 and info["counts"]["by_wnid"] == {LION: 1, TENCH: 1, NOT_1K: 1}
    samples = {json.loads(s["json"])["key"]: s.get("cls") for s in wds.WebDataset(second.outputs, shardshuffle=False)}
    assert samples == {"k/a": b"291", "k/b": b"0", "k/flaky": None}


# ---------------------------------------------------------------------------------------------------------------------
# declared dependencies


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in laionet/, tasks/ and flows/ (function-level imports included) that are
    neither the standard library nor the project's own → the files importing them."""
    own = {"laionet", "tasks", "flows"}
    found: dict[str, set[str]] = collections.defaultdict(set)
    for folder in own:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own and top != "__future__":
                        found[top].add(str(path.relative_to(ROOT)))
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """Each module the project imports belongs to a distribution declared in pyproject.toml (dependencies or an
    extra): nothing works only because another package happened to pull it in."""
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    declared = {_canonical(re.split(r"[\s\[<>=!~;,(]", r.strip(), maxsplit=1)[0]) for r in requirements}
    owners = packages_distributions()
    imports = _third_party_imports()
    assert "webdataset" in imports and "PIL" in imports  # the scan sees function-level imports
    unknown = {m: sorted(files)[:2] for m, files in imports.items() if m not in owners}
    assert not unknown, f"imported but not installed, so no distribution to check: {unknown}"
    undeclared = {
        m: (owners[m], sorted(files)[:2])
        for m, files in imports.items()
        if not any(_canonical(d) in declared for d in owners[m])
    }
    assert not undeclared, f"imports whose distribution pyproject.toml does not declare: {undeclared}"


def test_inference_over_pipe_shards(tmp_path: Path) -> None:
    """webdataset's ``pipe:`` URLs (a command that prints the tar) reach inference too: the part records identify such
    a shard by its command, so a second run resumes every part."""
    from laionet.core.stage import input_identity
    from laionet.inference.engine import run_inference
    from laionet.inference.stream import InferConfig

    shards = _shard_dir(tmp_path)
    spec = f"timm:test_resnet@{_test_resnet_weights(tmp_path / 'w.pth')}"
    local = run_inference(str(shards), [spec], str(tmp_path / "inf-local"), config=InferConfig(workers=0))[spec]
    piped = f"pipe:cat {shards}/{{00000..00002}}.tar"
    assert input_identity(f"pipe:cat {shards}/00000.tar") == {"command": f"cat {shards}/00000.tar"}
    first = run_inference(piped, [spec], str(tmp_path / "inf-pipe"), config=InferConfig(workers=0))[spec]
    assert (first.rows_in, first.rows_out, first.dropped) == (local.rows_in, local.rows_out, local.dropped)
    again = run_inference(piped, [spec], str(tmp_path / "inf-pipe"), config=InferConfig(workers=0))[spec]
    assert again.config_hash == first.config_hash and again.rows_out == first.rows_out
