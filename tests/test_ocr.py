import io
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from laionet.images import ocr
from laionet.images.ocr import RapidOcrEngine, could_show_name, read_texts, run_ocr, shows_name
from laionet.images.shard_writer import ShardWriter, encode_rgb_jpeg
from laionet.text.catalog import run_catalog
from tests.conftest import in_child

GOLDEN, LION = "n02099601", "n02129165"


@pytest.fixture(autouse=True)
def _engines_closed(monkeypatch):
    """Every engine a test builds in this process is closed after it: its native sessions are released then, in the
    test's own thread, not at some later test when the garbage collector reaches them."""
    built: list[RapidOcrEngine] = []
    init = RapidOcrEngine.__init__

    def recording(self, *args, **kwargs) -> None:
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(RapidOcrEngine, "__init__", recording)
    yield
    for engine in built:
        if hasattr(engine, "_rec") or hasattr(engine, "_engine"):  # built (a constructor that raised did not)
            engine.close()


def _picture(text: str | None, colour=(230, 230, 230)) -> bytes:
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


def _named_stage(tmp_path, samples: int = 4) -> str:
    """A golden retriever / lion catalog and shards of 2 of the first ``samples`` of: the name written, other words,
    no text, the name in capitals (keys a-d); the catalog's path."""
    classes = tmp_path / "classes.txt"
    classes.write_text(f"{GOLDEN}\n{LION}\n")
    catalog = str(tmp_path / "catalog.parquet")
    run_catalog(str(classes), catalog)
    rows = [("a", "Golden Retriever", GOLDEN, 0), ("b", "Summer Sale", GOLDEN, 0), ("c", None, LION, 1),
            ("d", "LION", LION, 1)][:samples]  # fmt: skip
    writer = ShardWriter(str(tmp_path / "shards"), per_shard=2)
    for key, text, wnid, index in rows:
        writer.write(key, _picture(text, (120, 160, 90)) if text is None else _picture(text), "",
                     {"wnid": wnid, "class_index": index})  # fmt: skip
    writer.close()
    return catalog


def test_rendered_class_names_are_flagged_by_the_real_ocr(tmp_path) -> None:
    catalog = _named_stage(tmp_path)
    engines = []

    def factory():  # in this process: ONNX Runtime (OpenVINO only in child processes, see conftest.in_child)
        engines.append(RapidOcrEngine(runtime="onnxruntime"))
        return engines[-1]

    manifest = run_ocr(str(tmp_path / "shards"), catalog, str(tmp_path / "ocr"), factory)
    flags = pd.concat([pd.read_parquet(p) for p in manifest.outputs]).set_index("key")
    assert flags["flagged"].to_dict() == {"a": True, "b": False, "c": False, "d": True}
    assert manifest.extra["flagged"] == 2 and manifest.rows_in == 4
    again = run_ocr(str(tmp_path / "shards"), catalog, str(tmp_path / "ocr"), factory)
    assert len(engines) == 1 and again.extra == manifest.extra  # shards done are not read again


# ---------------------------------------------------------------------------------------------------------------------
# the fast engine flags what the library's full pipeline flags, and costs less

_KINDS = ["name", "other", "none", "name", "small", "other"]  # the i-th image of ``_text_set`` shows _KINDS[i % 6]


def _text_set() -> list[tuple[Image.Image, str]]:
    """A few dozen (image, class name) pairs: class names in several sizes and cases, other words, small text,
    no text; plain, noisy and busy backgrounds; square and oblong images (what each shows: ``_KINDS``)."""
    import io
    import random

    rng = random.Random(7)
    names = ["golden retriever", "lion", "lemon", "pizza", "school bus", "violin", "tabby", "jellyfish"]
    others = ["summer sale", "free shipping", "hello", "made in italy", "best price 2019", "open"]
    out = []
    for i in range(30):
        width, height = [(224, 224), (448, 448), (448, 320), (320, 448), (256, 256)][i % 5]
        image = Image.new("RGB", (width, height), tuple(rng.randrange(150, 256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        if i % 3 == 2:  # busy background: shapes
            for _ in range(4):
                x, y = rng.randrange(width), rng.randrange(height)
                draw.ellipse([x, y, x + rng.randrange(20, 90), y + rng.randrange(20, 90)], fill=(90, 140, 200))
        name = names[i % len(names)]
        kind = _KINDS[i % 6]
        if kind != "none":
            words = {"name": name, "small": name, "other": rng.choice(others)}[kind]
            words = rng.choice([words, words.upper(), words.title()])
            size = 13 if kind == "small" else rng.choice([18, 24, 32, 44])
            draw.text(
                (rng.randrange(4, 20), rng.randrange(4, height // 2)),
                words,
                fill="black",
                font=ImageFont.load_default(size=size),
            )
        if i % 4 == 1:
            image = Image.blend(image, Image.effect_noise((width, height), 40).convert("RGB"), 0.2)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append((Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), name))
    return out


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_fast_engine_flags_what_the_full_pipeline_flags_and_only_drawn_names(runtime) -> None:
    if runtime == "openvino":
        in_child(_fast_flags_full, runtime)
    else:
        _fast_flags_full(runtime)


def _fast_flags_full(runtime: str) -> None:
    images = _text_set()
    full = RapidOcrEngine(engine="full").read_many([image for image, _ in images])
    engine = RapidOcrEngine(engine="fast", runtime=runtime)
    fast = read_texts(engine, [i for i, _ in images], [n for _, n in images])
    strict = read_texts(engine, [i for i, _ in images], [n for _, n in images], keep_shown=False)
    flags_full = [shows_name(name, text) for (_, name), text in zip(images, full, strict=True)]
    flags_fast = [shows_name(name, text) for (_, name), text in zip(images, fast, strict=True)]
    drawn = [_KINDS[i % 6] in ("name", "small") for i in range(len(images))]
    assert sum(flags_full) >= 8 and not all(flags_full)  # the set has both kinds, small text included
    texts = [(n, a, b) for (_, n), a, b in zip(images, full, fast, strict=True) if a != b]
    # where the two differ, the fast engine flags a drawn name the library glues to a neighbour ('GOLDENRETRIEVER')
    assert all(d for f, d in zip(flags_fast, drawn, strict=True) if f), texts  # never a name that is not there
    missed = [i for i, (a, b) in enumerate(zip(flags_full, flags_fast, strict=True)) if a and not b]
    assert not missed, texts
    # re-reading every possible flag exactly gives the library's flags
    assert [shows_name(name, text) for (_, name), text in zip(images, strict, strict=True)] == flags_full


def test_a_new_reading_ocrs_every_shard_again(tmp_path, monkeypatch) -> None:
    """Part records name the reading they were made with: after it changes, no shard keeps flags from the old one
    beside the new ones' (a re-run would otherwise reuse every shard already done)."""
    catalog, shards = _tiny_stage(tmp_path, shards=3)
    out = str(tmp_path / "ocr")
    reads: list[int] = []

    class Counting(InkOcr):
        def read(self, image) -> str:
            reads.append(1)
            return super().read(image)

    run_ocr(shards, catalog, out, Counting)
    assert len(reads) == 8
    run_ocr(shards, catalog, out, Counting)
    assert len(reads) == 8  # nothing changed: every shard reused
    monkeypatch.setattr(ocr, "READING", ocr.READING + 1)
    manifest = run_ocr(shards, catalog, out, Counting)
    assert len(reads) == 16 and manifest.rows_out == 8


class _Recording:
    """A model session wrapper that keeps every input it is given."""

    def __init__(self, inner) -> None:
        self.inner, self.inputs = inner, []

    def __call__(self, tensor, *args, **kwargs):
        self.inputs.append(np.array(tensor))
        return self.inner(tensor, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.mark.parametrize("size", [(448, 634), (634, 448), (512, 343), (224, 224), (1200, 300), (960, 720), (500, 30)])
def test_the_exact_reading_gives_the_detector_the_full_pipelines_input(size) -> None:
    """``read_exact`` (and ``det_side=None``) feed the detector the very tensor the library's pipeline gives it
    (shorter side up to 736, rounded to 32; thin images letterboxed; large ones shrunk), so its boxes and text are
    the full pipeline's. The quick reading scales the longer side to 736 instead: a 448x634 image runs at 512x736
    rather than 736x1056, which moved the recogniser's spacing and 1.5 % of the flags on generated text images."""
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    full = RapidOcrEngine(engine="full")
    full._engine.text_det.infer = seen_full = _Recording(full._engine.text_det.infer)
    full.read(image)
    for engine, read in [(quick := RapidOcrEngine(runtime="onnxruntime"), "read_exact"),
                         (RapidOcrEngine(runtime="onnxruntime", det_side=None), "read_many")]:  # fmt: skip
        engine._det.infer = seen = _Recording(engine._det.infer)
        getattr(engine, read)([image])
        assert len(seen_full.inputs) == len(seen.inputs) == 1
        assert seen.inputs[0].shape == seen_full.inputs[0].shape
        assert np.array_equal(seen.inputs[0], seen_full.inputs[0])
    assert not quick.exact and RapidOcrEngine(runtime="onnxruntime", det_side=None).exact and full.exact


def test_could_show_name_catches_what_a_second_reading_may_flag() -> None:
    """The quick reading's near misses: spacing inside or around the name, or one letter off (seen between the
    quick and the exact reading on generated text images); text with nothing like the name is settled."""
    for text in ["mailbox76", "themailbox", "SchoolBus", "Lemo", "ptetzel", "jetlyfish", "mail-box", "MAILBOX 7"]:
        name = {"Lemo": "lemon", "ptetzel": "pretzel", "jetlyfish": "jellyfish", "SchoolBus": "school bus"}.get(
            text, "mailbox"
        )
        assert could_show_name(name, text), (name, text)
    assert could_show_name("school bus", "the school bus") and shows_name("school bus", "the school bus")
    for name, text in [("mailbox", ""), ("mailbox", "summer sale 2019"), ("lion", "lemon"), ("ox", "xo"),
                       ("ox", "o x"[:1]), ("", "anything"), ("jellyfish", "jelly")]:  # fmt: skip
        assert not could_show_name(name, text), (name, text)
    assert (
        could_show_name("ox", "oxen") and could_show_name("lion", "lio n") and could_show_name("lion", "loin") is False
    )


def test_could_show_name_is_one_edit_from_a_substring_on_random_text() -> None:
    """Against brute force (Levenshtein distance to every substring) on random short strings over a small alphabet,
    so that near misses are common: the half-match shortcut before the dynamic programme loses none."""
    import random

    def distance(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            previous, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
        return row[-1]

    rng = random.Random(3)
    agree = 0
    for _ in range(1500):
        name = "".join(rng.choice("abc") for _ in range(rng.randrange(1, 7)))
        text = "".join(rng.choice("abc ") for _ in range(rng.randrange(0, 12)))
        letters = text.replace(" ", "")
        best = min(distance(name, letters[i:j]) for i in range(len(letters) + 1) for j in range(i, len(letters) + 1))
        expected = best == 0 or (len(name) >= 4 and best <= 1)
        assert could_show_name(name, text) == expected, (name, text)
        agree += expected
    assert 200 < agree < 1300  # both outcomes well represented


class _QuickAndExact:
    """An engine whose quick reading spaces words differently from its exact one, as the fast engine's may."""

    exact = False

    def __init__(self, quick: dict[str, str], careful: dict[str, str]) -> None:
        self.quick, self.careful, self.reread = quick, careful, []

    def read(self, image) -> str:
        return self.quick[image]

    def read_many(self, images) -> list[str]:
        return [self.quick[i] for i in images]

    def read_exact(self, images) -> list[str]:
        self.reread.extend(images)
        return [self.careful[i] for i in images]


def test_strict_reading_decides_every_possible_flag_on_the_exact_reading() -> None:
    quick = {"a": "mailbox76", "b": "the mailbox", "c": "summer sale", "d": "", "e": "Lemo", "f": "lemon"}
    careful = {"a": "mailbox 76", "b": "themailbox", "c": "summer sale", "d": "", "e": "Lemon", "f": "lemon"}
    engine = _QuickAndExact(quick, careful)
    names = ["mailbox", "mailbox", "mailbox", "mailbox", "lemon", None]
    texts = read_texts(engine, list("abcdef"), names, keep_shown=False)
    assert texts == ["mailbox 76", "themailbox", "summer sale", "", "Lemon", "lemon"]
    assert [shows_name(n or "", t) for n, t in zip(names, texts, strict=True)] == [
        True,
        False,
        False,
        False,
        True,
        False,
    ]
    assert engine.reread == ["a", "b", "e"]  # the rest is settled by the quick reading: nothing like the name
    engine.exact = True
    assert read_texts(engine, list("abc"), names[:3]) == ["mailbox76", "the mailbox", "summer sale"]


def test_a_quick_reading_that_shows_the_name_settles_its_image() -> None:
    """The default (``keep_shown``): a quick reading that shows the name settles the image (flagged, whatever a
    second reading would space differently); one that comes near the name without showing it is read again and
    decides on that."""
    quick = {"a": "mailbox76", "b": "the mailbox", "c": "summer sale", "e": "Lemo", "g": "goldenretriever"}
    careful = {"a": "mailbox 76", "b": "themailbox", "c": "summer sale", "e": "Lemo", "g": "goldenretriever"}
    engine = _QuickAndExact(quick, careful)
    names = ["mailbox", "mailbox", "mailbox", "lemon", "golden retriever"]
    texts = read_texts(engine, list("abceg"), names)
    assert texts == ["mailbox 76", "the mailbox", "summer sale", "Lemo", "goldenretriever"]
    assert [shows_name(n, t) for n, t in zip(names, texts, strict=True)] == [True, True, False, False, False]
    assert engine.reread == ["a", "e", "g"]  # "b" shows its name in the quick reading: not read again


@pytest.mark.parametrize("lion", ["summer sale", "the lion"])
def test_the_stage_flags_near_misses_on_the_exact_reading(tmp_path, lion) -> None:
    """Through ``run_ocr``: a sample whose quick text misses its class name by a space is flagged as the exact
    reading decides, and keeps that reading's text; one whose quick text shows nothing like it, or shows the name,
    is not read again."""
    catalog, shards = _tiny_stage(tmp_path, shards=1)  # k0: golden retriever (ink 0), k1: lion (ink 1)
    quick, careful = {0: "goldenretriever", 1: lion}, {0: "golden retriever", 1: "thelion"}

    class Inked(_QuickAndExact):
        def read_many(self, images):
            return [quick[i.getpixel((0, 0))[0] // 100] for i in images]

        def read_exact(self, images):
            self.reread.extend(images)
            return [careful[i.getpixel((0, 0))[0] // 100] for i in images]

    engine = Inked({}, {})
    manifest = run_ocr(shards, catalog, str(tmp_path / "ocr"), lambda: engine)
    flags = pd.concat([pd.read_parquet(p) for p in manifest.outputs]).set_index("key")
    shown = lion == "the lion"
    assert flags["flagged"].to_dict() == {"k0": True, "k1": shown}
    assert flags["text"].to_dict() == {"k0": "golden retriever", "k1": lion}
    assert len(engine.reread) == 1 and manifest.extra["flagged"] == 1 + shown


class _Counting:
    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str):  # the model's session, for the engine's close
        return getattr(self.inner, name)


def test_images_without_a_detected_box_skip_recognition() -> None:
    engine = RapidOcrEngine(runtime="onnxruntime")
    engine._rec, engine._cls = _Counting(engine._rec), _Counting(engine._cls)  # type: ignore[assignment]
    blank = [Image.new("RGB", (300, 200), colour) for colour in [(255, 255, 255), (20, 90, 30), (200, 40, 40)]]
    assert engine.read_many(blank) == ["", "", ""]
    assert engine.calls["det"] == 3 and engine._rec.calls == 0 and engine._cls.calls == 0
    written = Image.open(io.BytesIO(_picture("Golden Retriever"))).convert("RGB")
    assert "golden retriever" in engine.read(written).lower() and engine._rec.calls == 1


def test_thread_settings_reach_every_session(monkeypatch) -> None:
    for threads in (1, 2):
        engine = RapidOcrEngine(threads=threads, runtime="onnxruntime")
        for wrapper in engine.sessions():
            options = wrapper.session.get_session_options()
            assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    in_child(_openvino_settings)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert RapidOcrEngine(runtime="onnxruntime").threads == 3  # the cores this process may run on
    with pytest.raises(ValueError, match="unknown OCR engine"):
        RapidOcrEngine(engine="nope")


def _openvino_settings() -> None:
    for threads in (1, 2):
        engine = RapidOcrEngine(threads=threads, runtime="openvino", precision="f32")
        for wrapper in engine.sessions():
            assert wrapper.session.setting("INFERENCE_NUM_THREADS") == threads
            assert wrapper.session.setting("NUM_STREAMS") == 1
            assert wrapper.session.setting("ENABLE_CPU_PINNING") is False  # processes share the machine's cores
            assert str(wrapper.session.setting("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_quick_pass_runs_in_bf16_where_native_and_the_exact_reading_in_fp32(native_bf16) -> None:
    in_child(_precisions, native_bf16)


def _precisions(native_bf16: bool) -> None:
    from laionet.images import ocr_engine

    really = ocr_engine.cpu_has_bf16()
    ocr_engine.cpu_has_bf16 = lambda: native_bf16  # this child process only
    engine = RapidOcrEngine(threads=1, runtime="openvino")
    quick = "bf16" if native_bf16 else "f32"
    assert engine.precision == quick and engine.exact is False
    assert (engine._quick is engine._exact) == (quick == "f32")  # fp32 sessions of their own only when needed
    hint = {"bf16": "<Type: 'bfloat16'>", "f32": "<Type: 'float32'>"}
    # a CPU without bf16 units may compile a bf16 request as fp32
    hints = {hint["bf16"], hint["f32"]} if native_bf16 and not really else {hint[quick]}
    assert {str(w.session.setting("INFERENCE_PRECISION_HINT")) for w in engine.sessions()} <= hints
    seen: list[str] = []

    def recording(session):
        run = session.run

        def recorded(names, feed):
            seen.append(str(session.setting("INFERENCE_PRECISION_HINT")))
            return run(names, feed)

        return recorded

    for session in {id(s): s for s in [*engine._quick, *engine._exact]}.values():
        session.run = recording(session)  # type: ignore[method-assign]
    image = Image.open(io.BytesIO(_picture("Golden Retriever"))).convert("RGB")
    assert shows_name("golden retriever", engine.read_exact([image])[0])
    assert len(seen) == 3  # detection, direction, recognition
    assert set(seen) == {hint["f32"]}  # the exact reading ran on fp32 sessions, whatever the quick pass's
    assert all(w.session is q for w, q in zip(engine.sessions(), engine._quick, strict=True))  # quick ones again
    assert RapidOcrEngine(threads=1, runtime="onnxruntime").precision == "f32"  # ONNX Runtime: fp32 throughout
    with pytest.raises(ValueError, match="unknown OCR precision"):
        RapidOcrEngine(precision="fp8")
    engine.close()


class InlinePool:
    """``ProcessPoolExecutor`` in this process (records that the stage asked for a pool, and how many workers)."""

    pools: ClassVar[list[int]] = []

    def __init__(self, workers, context, initializer, initargs) -> None:
        self.pools.append(workers)
        initializer(*initargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future: Future = Future()
        future.set_result(fn(*args))
        return future


@pytest.fixture
def recorded_engines(monkeypatch) -> list[dict]:
    """The default engine's build arguments, recorded: pools run in this process (``InlinePool.pools`` lists their
    sizes), the engine is ``InkOcr``, and the process sees 4 cores."""
    built: list[dict] = []

    class Recording(InkOcr):
        def __init__(self, **kwargs) -> None:
            built.append(kwargs)

    monkeypatch.setattr(ocr, "RapidOcrEngine", Recording)
    monkeypatch.setattr(ocr, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(InlinePool, "pools", [])
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    return built


def test_run_ocr_builds_its_engine_with_the_threads_and_device_given(tmp_path, recorded_engines) -> None:
    """The default engine is built in a worker process (a pool even for one worker) with the threads and device
    given; here the pool runs in this process so that the engine's arguments can be recorded."""
    catalog, shards = _tiny_stage(tmp_path, shards=1)
    built = recorded_engines
    run_ocr(shards, catalog, str(tmp_path / "a"))
    run_ocr(shards, catalog, str(tmp_path / "b"), threads=1, device="cuda:1")
    assert built == [{"threads": 4, "device": "cpu"}, {"threads": 1, "device": "cuda:1"}]
    assert InlinePool.pools == [1, 1]
    run_ocr(shards, catalog, str(tmp_path / "c"), InkOcr)  # a given engine, one worker: in this process
    assert InlinePool.pools == [1, 1]


def test_auto_workers_are_one_process_per_core_once_there_are_enough_shards(tmp_path, recorded_engines) -> None:
    """``workers="auto"`` (the presets' default): one process per core with one thread each, but at most one per 4
    shards still to do; the outputs are the serial run's. A demo's 2 shards stay one process with every core."""
    from laionet.core.config import Preset
    from laionet.images.ocr import auto_workers, per_task_workers

    assert [auto_workers(n, 4) for n in (0, 2, 7, 8, 12, 16, 1000)] == [1, 1, 1, 2, 3, 4, 4]
    assert auto_workers(3, 16) == 1 and auto_workers(10_000, 16) == 16
    # a flow's shard-group tasks are the fan-out themselves: one process each under "auto"
    assert (per_task_workers("auto", 8), per_task_workers("auto", 1), per_task_workers(3, 8)) == (1, "auto", 3)
    assert Preset(name="x").ocr_workers == "auto"
    for bad in (0, -2, "many"):
        with pytest.raises(ValueError, match="ocr_workers"):
            Preset(name="x", ocr_workers=bad)
        with pytest.raises(ValueError, match="OCR workers"):
            run_ocr("s", "c", str(tmp_path / "never"), workers=bad)

    catalog, shards = _tiny_stage(tmp_path, shards=9)
    built = recorded_engines
    fanned = run_ocr(shards, catalog, str(tmp_path / "auto"), workers="auto")
    assert InlinePool.pools == [2] and built == [{"threads": 2, "device": "cpu"}]  # 9 shards: 2 processes × 2 threads
    serial = run_ocr(shards, catalog, str(tmp_path / "serial"), InkOcr)
    assert fanned.extra == serial.extra and _records(tmp_path / "auto") == _records(tmp_path / "serial")


def test_the_default_engine_never_loads_in_the_calling_process(tmp_path) -> None:
    """The real engine (OpenVINO or ONNX Runtime sessions and their thread pools) lives in a spawned worker, one worker
    included: the process that ran the stage (a Prefect worker, this test session) never loads either runtime, and
    the flags are the real OCR's."""
    import subprocess
    import sys

    catalog = _named_stage(tmp_path, samples=2)
    script = (
        "import sys, pandas as pd\n"
        "from laionet.images.ocr import run_ocr\n"
        f"m = run_ocr({str(tmp_path / 'shards')!r}, {catalog!r}, {str(tmp_path / 'ocr')!r})\n"
        "flags = pd.concat(pd.read_parquet(p) for p in m.outputs).set_index('key')['flagged'].to_dict()\n"
        "print(flags, sorted(n for n in ('openvino', 'onnxruntime', 'rapidocr_onnxruntime') if n in sys.modules))\n"
        # no interpreter teardown: pyarrow's thread pool can abort a process at exit after a parquet read ("terminate
        # called without an active exception", apache/arrow#34314), seen once here with every line already printed
        "sys.stdout.flush(); import os; os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "{'a': True, 'b': False} []"


def test_closing_an_engine_releases_its_sessions() -> None:
    """``close`` drops every model session (OpenVINO's request, compiled model and core, in that order) at once."""
    in_child(_closing)


def _closing() -> None:
    engine = RapidOcrEngine(threads=1, runtime="openvino")
    sessions = [wrapper.session for wrapper in engine.sessions()]
    assert engine.read(Image.new("RGB", (200, 80), "white")) == ""
    engine.close()
    assert [wrapper.session for wrapper in engine.sessions()] == [None, None, None]
    assert all(s._request is None and s._compiled is None and s._core is None for s in sessions)


# ---------------------------------------------------------------------------------------------------------------------
# per-shard fan-out


class InkOcr:
    """A stand-in engine (picklable, for worker processes): the 'text' is the class name the image's colour encodes."""

    def read(self, image) -> str:
        return {0: "golden retriever", 1: "lion"}.get(image.getpixel((0, 0))[0] // 100, "nothing")


class ClosingInk(InkOcr):
    """``InkOcr`` that leaves a file in ``folder`` when closed (picklable through functools.partial)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def close(self) -> None:
        import os

        Path(self.folder, f"closed-{os.getpid()}").touch()


def test_worker_processes_close_their_engines_at_exit(tmp_path) -> None:
    """Each spawned worker closes the engine it built before its interpreter ends (native sessions released in their
    order, not in module teardown); a given engine run in this process is closed when the stage is done."""
    import functools

    catalog, shards = _tiny_stage(tmp_path, shards=2)
    closed = tmp_path / "closed"
    closed.mkdir()
    run_ocr(shards, catalog, str(tmp_path / "a"), functools.partial(ClosingInk, str(closed)), workers=2)
    assert len(list(closed.iterdir())) == 2  # one per worker process
    for marker in closed.iterdir():
        marker.unlink()
    run_ocr(shards, catalog, str(tmp_path / "b"), functools.partial(ClosingInk, str(closed)))
    assert [p.name for p in closed.iterdir()] == [f"closed-{os.getpid()}"]  # in this process


def _tiny_stage(tmp_path, shards: int = 5) -> tuple[str, str]:
    classes = tmp_path / "classes.txt"
    classes.write_text(f"{GOLDEN}\n{LION}\n")
    catalog = str(tmp_path / "catalog.parquet")
    run_catalog(str(classes), catalog)
    writer = ShardWriter(str(tmp_path / "shards"), per_shard=3)
    for i in range(3 * shards - 1):
        wnid = (GOLDEN, LION)[i % 2]
        colour = ((i % 3) * 100 + 20, 60, 60)  # 0: golden retriever, 1: lion, 2: no name
        writer.write(f"k{i}", _picture(None, colour), "", {"wnid": wnid, "class_index": i % 2})
    writer.close()
    return catalog, str(tmp_path / "shards")


def _records(out: Path) -> dict[str, dict]:
    import json

    return {  # the outputs' mtimes (output_identity) differ between any two runs: the rest must not
        p.name: {
            k: (v.replace(str(out), "OUT") if isinstance(v, str) else v)
            for k, v in json.loads(p.read_text()).items()
            if k != "output_identity"
        }
        for p in sorted((out / "_parts").iterdir())
    }


def test_workers_write_the_serial_runs_outputs_and_records(tmp_path) -> None:
    catalog, shards = _tiny_stage(tmp_path)
    serial = run_ocr(shards, catalog, str(tmp_path / "serial"), InkOcr)
    done = []
    parallel = run_ocr(
        shards, catalog, str(tmp_path / "parallel"), InkOcr, workers=2, progress=lambda i, n: done.append((i, n))
    )
    assert serial.extra == parallel.extra and serial.extra["flagged"] == 6 and serial.rows_in == parallel.rows_in == 14
    assert serial.dropped == parallel.dropped and serial.inputs == parallel.inputs
    assert [Path(p).name for p in serial.outputs] == [Path(p).name for p in parallel.outputs]
    for a, b in zip(serial.outputs, parallel.outputs, strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    assert _records(tmp_path / "serial") == _records(tmp_path / "parallel") and len(_records(tmp_path / "serial")) == 5
    assert done[-1] == (5, 5) and [i for i, _ in done] == sorted(i for i, _ in done)
    (tmp_path / "parallel" / "_manifest.json").unlink()  # resume: only what is missing is redone
    again = run_ocr(shards, catalog, str(tmp_path / "parallel"), InkOcr, workers=2)
    assert again.extra == serial.extra and _records(tmp_path / "parallel") == _records(tmp_path / "serial")


def test_ocr_command_and_task_take_workers(tmp_path, monkeypatch) -> None:
    """`laionet ocr --workers N` and the acquire flow's `ocr` task (Preset.ocr_workers) reach run_ocr's process
    fan-out; the task leaves the worker count out of its cache key (it changes how fast, not what)."""
    from typer.testing import CliRunner

    import laionet.images.ocr as ocr_module
    import tasks.acquire
    from laionet.cli import app
    from laionet.core.config import Preset
    from laionet.core.manifest import Manifest

    seen: list[int | str] = []

    def fake(*args, workers: int | str = 1, **kwargs) -> Manifest:
        seen.append(workers)
        return Manifest(stage="ocr", config={}, config_hash="0", rows_in=0, rows_out=0, extra={"flagged": 0})

    monkeypatch.setattr(ocr_module, "run_ocr", fake)
    for argv, expected in ((["--workers", "3"], 3), ([], 1), (["--workers", "1"], 1), (["--workers", "auto"], "auto")):
        result = CliRunner().invoke(app, ["ocr", "--shards", "s", "--catalog", "c", "--out", str(tmp_path), *argv])
        assert result.exit_code == 0, result.output
        assert seen[-1] == expected
    result = CliRunner().invoke(
        app, ["ocr", "--shards", "s", "--catalog", "c", "--out", str(tmp_path), "--workers", "x"]
    )
    assert result.exit_code == 2 and "--workers 'x'" in result.output and len(seen) == 4
    assert "workers" in tasks.acquire.ocr.cache_policy.exclude
    assert Preset(name="x", ocr_workers=4).ocr_workers == 4
    result = CliRunner().invoke(
        app, ["ocr", "--shards", "s", "--catalog", "c", "--out", str(tmp_path), "--device", "cuda"]
    )
    assert result.exit_code == 2 and "onnxruntime-gpu" in result.output and len(seen) == 4  # refused before running


def test_shard_groups_then_a_final_call_give_the_serial_run(tmp_path) -> None:
    """A fanned-out OCR (flow: one `ocr-shards` task per shard group, then `ocr`): each group writes its shards'
    flags and part records only, the output stays visibly incomplete, and the final call builds no engine and writes
    the manifest of the serial run."""
    from laionet.core.manifest import read_manifest
    from laionet.core.stage import incomplete_marker
    from laionet.images.ocr import run_ocr_shards
    from laionet.images.shard_list import list_shards, shard_groups

    catalog, shards = _tiny_stage(tmp_path)
    serial = run_ocr(shards, catalog, str(tmp_path / "serial"), InkOcr)
    out = tmp_path / "fanned"
    groups = shard_groups(shards, 2)
    assert [len(g) for g in groups] == [3, 2] and [s for g in groups for s in g] == list_shards(shards)
    assert run_ocr_shards(shards, catalog, str(out), groups[1], InkOcr) == 2
    assert read_manifest(str(out)) is None and Path(incomplete_marker(str(out))).exists()
    assert len(_records(out)) == 2
    stems = [Path(s).name.removesuffix(".tar") for s in groups[0]]  # stems name shards as well as paths do
    assert run_ocr_shards(shards, catalog, str(out), stems, InkOcr) == 3
    assert run_ocr_shards(shards, catalog, str(out), groups[0], InkOcr) == 0  # a retried group: nothing left

    def no_engine() -> InkOcr:
        raise AssertionError("the final call found every shard done and must not build an engine")

    final = run_ocr(shards, catalog, str(out), no_engine)
    assert final.extra == serial.extra and final.rows_in == serial.rows_in == 14 and final.dropped == serial.dropped
    assert _records(out) == _records(tmp_path / "serial")
    assert not Path(incomplete_marker(str(out))).exists()
    with pytest.raises(ValueError, match="not among its 5 shards"):
        run_ocr_shards(shards, catalog, str(out), ["99999"], InkOcr)


def test_a_shard_group_stats_only_its_own_shards(tmp_path, monkeypatch) -> None:
    """A group task looks at its shards only (on object storage every look is a request; 80k shards per task
    would be 80k requests), not at every shard of the stage."""
    from laionet.images.ocr import run_ocr_shards
    from laionet.images.shard_list import shard_groups

    catalog, shards = _tiny_stage(tmp_path)
    seen: list[str] = []
    real = ocr.input_identity
    monkeypatch.setattr(ocr, "input_identity", lambda path: seen.append(path) or real(path))
    group = shard_groups(shards, 3)[1]
    assert run_ocr_shards(shards, catalog, str(tmp_path / "out"), group, InkOcr) == len(group) == 2
    assert seen == group


def test_ocr_device_picks_onnxruntime_providers(monkeypatch) -> None:
    """`cuda[:i]` runs the same models through onnxruntime-gpu's CUDA provider on device i; `auto` is CUDA only where
    the installed onnxruntime has that provider (here it does not: the CPU); a CUDA request without it, or an unknown
    device, fails naming what to do, before any model is loaded."""
    import onnxruntime as ort

    from laionet.images.ocr import RapidOcrEngine, ocr_providers

    assert ocr_providers("cpu") == ocr_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="install onnxruntime-gpu"):
        ocr_providers("cuda")
    with pytest.raises(ValueError, match="install onnxruntime-gpu"):
        RapidOcrEngine(device="cuda:0")
    with pytest.raises(ValueError, match="unknown OCR device 'gpu'"):
        ocr_providers("gpu")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ocr_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert (
        ocr_providers("auto")
        == ocr_providers("cuda")
        == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    )
    with pytest.raises(ValueError, match="unknown OCR device 'cuda:x'"):
        ocr_providers("cuda:x")


def test_openvino_runs_the_same_models_as_onnxruntime(monkeypatch) -> None:
    """On the CPU the fast engine runs the ONNX files on OpenVINO (fp32) where it is installed: the detector's map
    is ONNX Runtime's within 1e-3 and the recognised texts are the same; ``$LAIONET_OCR_RUNTIME`` or the argument
    chooses, CUDA always runs on ONNX Runtime, and a bad choice fails before any model is loaded."""
    from laionet.images.ocr_engine import ocr_runtime

    in_child(_openvino_against_onnxruntime)
    cpu, cuda = ["CPUExecutionProvider"], [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert ocr_runtime(None, cuda) == ocr_runtime("onnxruntime", cpu) == "onnxruntime"
    monkeypatch.setenv("LAIONET_OCR_RUNTIME", "onnxruntime")
    assert ocr_runtime(None, cpu) == "onnxruntime" and RapidOcrEngine().runtime == "onnxruntime"
    assert ocr_runtime("openvino", cpu) == "openvino"  # the argument wins over the environment
    monkeypatch.setenv("LAIONET_OCR_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match=r"unknown OCR runtime 'tensorrt' \(argument or \$LAIONET_OCR_RUNTIME\)"):
        RapidOcrEngine()
    with pytest.raises(ValueError, match="CPU only"):
        ocr_runtime("openvino", cuda)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert ocr_runtime("auto", cpu) == "onnxruntime"  # not installed: ONNX Runtime, as before
    with pytest.raises(ValueError, match="pip install openvino"):
        ocr_runtime("openvino", cpu)


def _openvino_against_onnxruntime() -> None:
    import numpy as np

    images = [image for image, _ in _text_set()[:12]]
    default, onnx = RapidOcrEngine(precision="f32"), RapidOcrEngine(runtime="onnxruntime")
    assert (default.runtime, onnx.runtime) == ("openvino", "onnxruntime")
    tensor = np.stack([default._det_input(default._prepared(image), default.det_side) for image in images[:2]])
    maps = [engine._det.infer(tensor)[0] for engine in (default, onnx)]
    assert maps[0].shape == maps[1].shape == (2, 1, *tensor.shape[2:])
    assert np.abs(maps[0] - maps[1]).max() < 1e-3 and maps[1].max() > 0.5  # text found, in both
    texts = default.read_many(images)
    assert texts == onnx.read_many(images) and sum(bool(text) for text in texts) >= 6


def test_ocr_tasks_take_a_device_slot_only_for_a_gpu(tmp_path, monkeypatch) -> None:
    """The OCR tasks hold a device slot (like inference) when OCR runs on a GPU, and pass the slot's device to the
    driver; on the CPU (or `auto` without onnxruntime-gpu) they take none. The device is out of the cache key."""
    from contextlib import contextmanager

    import onnxruntime as ort

    import tasks.acquire

    slots: list[str] = []

    @contextmanager
    def fake_slot(device: str):
        slots.append(device)
        yield "cuda:1"  # the slot this task got

    monkeypatch.setattr(tasks.acquire, "gpu_slot", fake_slot)
    with tasks.acquire.ocr_device("auto") as placed:
        assert placed == "cpu" and slots == []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with tasks.acquire.ocr_device("auto") as placed:
        assert placed == "cuda:1" and slots == ["auto"]
    with tasks.acquire.ocr_device("cpu") as placed:
        assert placed == "cpu" and slots == ["auto"]
    assert {"workers", "device"} <= set(tasks.acquire.ocr.cache_policy.exclude)
