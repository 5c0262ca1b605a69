import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from laionet.images.ocr import RapidOcrEngine, run_ocr, shows_name
from laionet.images.shards import ShardWriter, encode_rgb_jpeg
from laionet.text.catalog import run_catalog

GOLDEN, LION = "n02099601", "n02129165"


def _picture(text: str | None, colour=(230, 230, 230)) -> bytes:
    import io

    image = Image.new("RGB", (360, 140), colour)
    if text:
        ImageDraw.Draw(image).text((12, 40), text, fill="black", font=ImageFont.load_default(size=38))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return encode_rgb_jpeg(out.getvalue())


def test_name_rule_is_the_papers() -> None:
    assert shows_name("golden retriever", "BEST Golden-Retriever puppies")
    assert not shows_name("golden retriever", "goldenretriever")
    assert shows_name("lion", "the lion, king")
    assert not shows_name("lion", "lioness")


def test_rendered_class_names_are_flagged_by_the_real_ocr(tmp_path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text(f"{GOLDEN}\n{LION}\n")
    catalog = str(tmp_path / "catalog.parquet")
    run_catalog(str(classes), catalog)
    writer = ShardWriter(str(tmp_path / "shards"), per_shard=2)
    writer.write("a", _picture("Golden Retriever"), "", {"wnid": GOLDEN, "class_index": 0})
    writer.write("b", _picture("Summer Sale"), "", {"wnid": GOLDEN, "class_index": 0})
    writer.write("c", _picture(None, (120, 160, 90)), "", {"wnid": LION, "class_index": 1})
    writer.write("d", _picture("LION"), "", {"wnid": LION, "class_index": 1})
    writer.close()
    engines = []

    def factory():
        engines.append(RapidOcrEngine())
        return engines[-1]

    manifest = run_ocr(str(tmp_path / "shards"), catalog, str(tmp_path / "ocr"), factory)
    flags = pd.concat([pd.read_parquet(p) for p in manifest.outputs]).set_index("key")
    assert flags["flagged"].to_dict() == {"a": True, "b": False, "c": False, "d": True}
    assert manifest.extra["flagged"] == 2 and manifest.rows_in == 4
    again = run_ocr(str(tmp_path / "shards"), catalog, str(tmp_path / "ocr"), factory)
    assert len(engines) == 1 and again.extra == manifest.extra  # shards done are not read again
