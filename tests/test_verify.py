import io
import json
import tarfile

import pandas as pd
from PIL import Image

from laionet.images.shard_writer import ShardWriter, encode_rgb_jpeg
from laionet.images.shards import safe_key
from laionet.images.verify import run_verify


def _jpg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="JPEG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_verifier_quarantines_bad_samples_and_truncated_shards(tmp_path) -> None:
    shards = tmp_path / "shards"
    writer = ShardWriter(str(shards), per_shard=3)
    for i in range(3):
        writer.write(f"good/{i}", encode_rgb_jpeg(_jpg()), "caption", {"wnid": "n1", "class_index": 0})
    writer.close()  # 00000.tar: 3 good samples (+ its parquet listing)
    with tarfile.open(shards / "00001.tar", "w") as tar:  # hand-made shard with problems
        _add(tar, f"{safe_key('ok')}.jpg", _jpg())
        _add(tar, f"{safe_key('ok')}.json", json.dumps({"key": "ok"}).encode())
        _add(tar, f"{safe_key('broken')}.jpg", b"\xff\xd8 broken")
        _add(tar, f"{safe_key('broken')}.json", json.dumps({"key": "broken"}).encode())
        _add(tar, f"{safe_key('nometa')}.jpg", _jpg())
    pd.DataFrame({"key": ["ok", "broken", "nometa", "lost"], "status": ["success"] * 4}).to_parquet(
        shards / "00001.parquet"
    )
    data = (shards / "00000.tar").read_bytes()
    (shards / "00002.tar").write_bytes(data[: len(data) // 2])  # a copy cut in half
    manifest = run_verify(str(shards), str(tmp_path / "verify"))
    quarantine = pd.read_parquet(tmp_path / "verify" / "quarantine.parquet")
    reasons = dict(zip(quarantine["key"], quarantine["reason"], strict=True))
    assert reasons["broken"] == "undecodable_image" and reasons["nometa"] == "no_metadata"
    assert reasons["lost"] == "missing_from_tar" and reasons["*"] == "truncated_shard"
    assert manifest.extra["truncated_shards"] == 1
    assert manifest.rows_in == manifest.rows_out + sum(manifest.dropped.values())
    assert manifest.rows_out >= 4  # 3 in 00000 + "ok" (+ whatever survived before the cut)
