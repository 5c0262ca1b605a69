import subprocess
import sys

import pandas as pd
import pytest

from laionet.core.manifest import read_manifest
from laionet.text.catalog import CATALOG_COLUMNS, build_catalog, load_class_set, run_catalog
from laionet.text.wordnet import install_from_debian, lexnames_text


def test_imagenet1k_catalog_has_the_true_1000_classes(catalog_1k: pd.DataFrame) -> None:
    cat = catalog_1k
    assert list(cat.columns) == CATALOG_COLUMNS
    assert len(cat) == 1000
    assert cat["class_index"].tolist() == list(range(1000))
    assert cat["wnid"].tolist() == sorted(cat["wnid"])  # sorted-wnid order, as timm/torchvision use
    by_wnid = cat.set_index("wnid")
    assert by_wnid.loc["n01440764", "class_index"] == 0
    assert by_wnid.loc["n02110185", "name"] == "siberian husky"
    assert by_wnid.loc["n02110185", "lemmas"] == ["Siberian husky"]
    # both "crane" synsets are present, with their own definitions
    cranes = cat[cat["name"] == "crane"]
    assert set(cranes["wnid"]) == {"n02012849", "n03126707"}
    assert cranes["definition"].nunique() == 2
    cougar = by_wnid.loc["n02125311"]
    assert cougar["synset_text"] == "cougar which is large American feline resembling a lion"
    assert cougar["lemmas"][:4] == ["cougar", "puma", "catamount", "mountain lion"]  # WordNet order, _ → space


def test_imagenet21k_class_set_resolves_in_wordnet() -> None:
    wnids = load_class_set("imagenet21k")
    assert len(wnids) == 21841
    cat = build_catalog(wnids)
    assert len(cat) == 21841
    assert cat["synset_text"].str.contains(" which is ").all()


def test_class_file_keeps_order_and_ignores_comments(tmp_path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\nn02125311  cougar\n\nn01440764 # tench\n")
    assert load_class_set(str(path)) == ["n02125311", "n01440764"]
    out = tmp_path / "cat.parquet"
    manifest = run_catalog(str(path), str(out))
    assert manifest.rows_out == 2
    assert read_manifest(str(out)) == manifest
    assert pd.read_parquet(out)["class_index"].tolist() == [0, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("n0212531\n", r"classes.txt:1: malformed wnid 'n0212531'"),
        ("n02125311\nn02125311\n", r"classes.txt:2: wnid n02125311 repeats line 1"),
        ("# nothing\n", "has no wnids"),
    ],
)
def test_bad_class_files_are_rejected_with_the_line(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "classes.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_class_set(str(path))


def test_unknown_class_set_and_unknown_wnid() -> None:
    with pytest.raises(ValueError, match="neither one of"):
        load_class_set("imagenet5k")
    with pytest.raises(ValueError, match=r"'n99999999' is not a WordNet 3\.0 noun synset"):
        build_catalog(["n99999999"])


def test_wordnet_installs_from_debian_files_into_a_fresh_data_dir(tmp_path) -> None:
    assert len(lexnames_text().splitlines()) == 45
    assert lexnames_text().splitlines()[5] == "05\tnoun.animal\t1"
    target = install_from_debian(tmp_path / "nltk_data")
    assert (target / "lexnames").read_text() == lexnames_text()
    # a fresh interpreter that only knows this directory loads WordNet 3.0 from it
    code = (
        "import nltk; nltk.data.path[:] = [r'%s'];"
        "from nltk.corpus import wordnet as wn; print(wn.get_version(), wn.synset('cougar.n.01').offset())"
    ) % (tmp_path / "nltk_data")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3.0", "2125311"]


def test_run_catalog_skips_a_complete_output_and_rebuilds_a_changed_one(tmp_path) -> None:
    classes, out = tmp_path / "classes.txt", tmp_path / "cat.parquet"
    classes.write_text("n02125311\n")
    first = run_catalog(str(classes), str(out))
    assert run_catalog(str(classes), str(out)) == first  # complete: nothing rebuilt
    classes.write_text("n02125311\nn02129165\n")
    assert run_catalog(str(classes), str(out)).rows_out == 2
    out.unlink()
    assert run_catalog(str(classes), str(out)).rows_out == 2 and out.exists()
