"""The OCR engines of the text-in-image filter (``laionet.images.ocr`` runs the stage): the ``OcrEngine`` protocol
and ``RapidOcrEngine``, RapidOCR's PP-OCRv4 models (shipped inside the ``rapidocr-onnxruntime`` wheel) run on the CPU
by OpenVINO (``ocr_runtime``) or ONNX Runtime, or on a CUDA device through onnxruntime-gpu (``ocr_providers``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Protocol

from laionet.core.runtime import cores, cpu_has_bf16


class OcrEngine(Protocol):
    """What the OCR stage needs of an engine: ``read``. It also uses, where an engine has them, ``read_many``
    (a batch of images), ``close``, and ``exact`` with ``read_exact`` (an engine whose ``read`` is a quick
    approximation re-reads the images that could be flagged: ``laionet.images.ocr_rule.read_texts``)."""

    def read(self, image: Any) -> str:
        """All text recognised in a PIL RGB image, joined by spaces."""
        ...


ENGINES = ("fast", "full")
DET_SIDE = 736  # the fast engine's detector input, its longer side (None: the library's own); see RapidOcrEngine
RUNTIMES = ("auto", "openvino", "onnxruntime")
PRECISIONS = ("auto", "f32", "bf16")  # the quick pass's, on OpenVINO: see ``quick_precision``
RUNTIME_ENV = "LAIONET_OCR_RUNTIME"  # the fast engine's default runtime (``auto`` when unset): see ``ocr_runtime``


class RapidOcrEngine:
    """RapidOCR (PP-OCRv4 detection + direction + recognition, ONNX Runtime, CPU); images are shrunk so their longer
    side is at most ``max_side``.

    ``engine="full"`` is the library's own pipeline (``RapidOCR()``, its default thread settings), kept as the
    reference. ``engine="fast"`` (the default) runs the same three models and the same pre- and post-processing
    (``read`` of both gives the same text up to detector noise), and differs where the wall clock goes:

    - detection runs with the longer side scaled to ``det_side`` (up or down, rounded to 32). The library scales
      the *shorter* side up to 736, which for a typical 448x634 web image means a 736x1056 input rather than
      512x736. The smaller input moves a box by a pixel or two, and the recogniser's spacing with it ('mailbox 76'
      read as 'mailbox76'), which alone changed 1.5 % of the flags on 1,000 generated text images (2026-12-01). So
      the engine is not ``exact``: ``read_exact`` reads as the library does (its detector input, the same boxes and
      text as ``engine="full"``), and ``run_ocr`` re-reads with it every image whose quick text comes near its class
      name without showing it (``laionet.images.ocr_rule.read_texts``).
      ``det_side=None`` runs every image at the library's input (``exact`` in fp32; 1.5x slower than the quick pass
      alone on text images);
    - recognition (and the direction classifier) runs only on detected boxes, and not at all without one;
    - ``read_many`` detects a batch of images at once (images whose detector input has the same shape run as one
      tensor);
    - the models run on OpenVINO's CPU plugin where it is installed (``runtime``, see ``ocr_runtime``): in fp32 it
      gives the detector's probability map within 1e-4 of ONNX Runtime's at 1.6x its speed on this project's CPUs;
    - on OpenVINO the quick pass runs in bf16 where the CPU computes it natively (``precision="auto"``, see
      ``quick_precision``); the exact reading always runs in fp32, on sessions of its own;
    - ``threads`` sets each session's threads (ONNX Runtime's ``intra_op_num_threads``, OpenVINO's
      ``INFERENCE_NUM_THREADS``; one stream, sequential execution, threads not pinned): give it the cores this process
      owns (``run_ocr`` divides the cores among its workers).
    """

    def __init__(
        self,
        max_side: int = 960,
        engine: str = "fast",
        threads: int | None = None,
        det_side: int | None = DET_SIDE,
        batch: int = 1,
        det_upscale: float | None = None,
        device: str = "cpu",
        runtime: str | None = None,
        precision: str = "auto",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown OCR engine {engine!r}; expected one of {ENGINES}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown OCR precision {precision!r}; expected one of {PRECISIONS}")
        self.providers = ocr_providers(device)  # before any model is loaded: a bad device fails first
        # the full engine is the library's own pipeline, ONNX Runtime included
        self.runtime = ocr_runtime(runtime, self.providers) if engine == "fast" else "onnxruntime"
        self.max_side, self.engine, self.threads, self.det_side, self.batch = max_side, engine, threads, det_side, batch
        self.det_upscale = det_upscale
        self.precision = quick_precision(precision, self.runtime) if engine == "fast" else "f32"
        self.calls = {"det": 0, "cls": 0, "rec": 0}  # model runs (batches), for tests and benchmarks
        if engine == "full":
            from rapidocr_onnxruntime import RapidOCR

            self._engine = RapidOCR()
            return
        from rapidocr_onnxruntime.ch_ppocr_cls import TextClassifier
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml, update_model_path

        config = update_model_path(read_yaml(DEFAULT_CFG_PATH))
        self.threads = threads = max(1, threads or cores())
        glob = config["Global"]
        self._text_score, self._min_height, self._ratio = (
            glob["text_score"],
            glob["min_height"],
            glob["width_height_ratio"],
        )
        self._min_side, self._max_side = glob["min_side_len"], glob["max_side_len"]
        self._det = TextDetector(config["Det"])
        self._cls = TextClassifier(config["Cls"])
        self._rec = TextRecognizer(config["Rec"])
        paths = [config[part]["model_path"] for part in ("Det", "Cls", "Rec")]
        if self.runtime == "openvino":
            self._quick = [_OpenVinoSession(path, threads, self.precision) for path in paths]
            self._exact = (
                self._quick if self.precision == "f32" else [_OpenVinoSession(path, threads, "f32") for path in paths]
            )
        else:
            self._quick = self._exact = [_session(path, threads, self.providers) for path in paths]
        self._use(self._quick)

    def _use(self, sessions: list[Any]) -> None:
        """Run the models on ``sessions`` (detection, direction, text): the quick pass's or the exact reading's."""
        for wrapper, session in zip(self.sessions(), sessions, strict=True):
            wrapper.session = session

    def close(self) -> None:
        """Release the models' sessions now (OpenVINO's in their order; see ``_OpenVinoSession.close``) rather than
        whenever the garbage collector reaches them; the engine cannot read after this."""
        sessions = [*getattr(self, "_quick", []), *getattr(self, "_exact", [])]
        for wrapper in self.sessions():
            wrapper.session = None
        self._quick = self._exact = []
        for session in {id(s): s for s in sessions}.values():
            if hasattr(session, "close"):
                session.close()
        self._engine = None

    def sessions(self) -> list[Any]:
        """The fast engine's ONNX Runtime sessions (wrapped as the library wraps them): detection, direction, text."""
        return [self._det.infer, self._cls.infer, self._rec.session] if self.engine == "fast" else []

    def read(self, image: Any) -> str:
        if self.engine == "full":
            return self._read_full(image)
        return self.read_many([image])[0]

    def read_many(self, images: list[Any]) -> list[str]:
        """``read`` of each image; the fast engine detects ``batch`` images per model run."""
        if self.engine == "full":
            return [self._read_full(image) for image in images]
        return self._read_batched(images, self.det_side)

    @property
    def exact(self) -> bool:
        """Whether ``read`` gives the library's own boxes and text (the full engine, or the library's detector
        input in fp32); where not, ``read_exact`` does."""
        return self.engine == "full" or (self.det_side is None and self.precision == "f32")

    def read_exact(self, images: list[Any]) -> list[str]:
        """``read_many`` as the library reads: the fast engine with the library's detector input and fp32 models,
        whatever ``det_side`` and ``precision`` are (the same boxes and text as ``engine="full"``)."""
        if self.engine == "full":
            return self.read_many(images)
        self._use(self._exact)
        try:
            return self._read_batched(images, None)
        finally:
            self._use(self._quick)

    def _read_batched(self, images: list[Any], det_side: int | None) -> list[str]:
        texts: list[str] = []
        for start in range(0, len(images), max(1, self.batch)):
            texts.extend(self._read_fast(images[start : start + max(1, self.batch)], det_side))
        return texts

    def _shrunk(self, image: Any) -> Any:
        import numpy as np

        if max(image.size) > self.max_side:
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side))
        return np.asarray(image)[:, :, ::-1]  # OpenCV order

    def _read_full(self, image: Any) -> str:
        result, _ = self._engine(self._shrunk(image))
        self.calls["det"] += 1
        return " ".join(str(item[1]) for item in result or [])

    def _prepared(self, image: Any) -> Any:
        """The library's own preparation (``RapidOCR.preprocess`` and ``maybe_add_letterbox``): the long side down to
        ``max_side_len``, the short side up to ``min_side_len``, thin images letterboxed."""
        import numpy as np
        from rapidocr_onnxruntime.utils import add_round_letterbox, increase_min_side, reduce_max_side

        img = self._shrunk(image)
        if max(img.shape[:2]) > self._max_side:
            img, _, _ = reduce_max_side(img, self._max_side)
        if min(img.shape[:2]) < self._min_side:
            img, _, _ = increase_min_side(img, self._min_side)
        h, w = img.shape[:2]
        if h <= self._min_height or (self._ratio != -1 and w / h > self._ratio):
            pad = int(abs(max(int(w / self._ratio), self._min_height) * 2 - h) / 2)
            img = add_round_letterbox(img, (pad, pad, 0, 0))
        return np.ascontiguousarray(img)

    def _det_input(self, img: Any, det_side: int | None) -> Any:
        """The detector's input tensor (C, H, W) for a prepared image, or None where the library's own
        preprocessing gives none (an image it cannot resize: no text)."""
        import cv2
        import numpy as np

        h, w = img.shape[:2]
        if det_side is None:
            tensor = self._det.get_preprocess(max(h, w))(img)  # the library's resize, normalisation and layout
            return None if tensor is None else tensor[0]
        ratio = det_side / max(h, w)
        if self.det_upscale is not None:
            ratio = min(ratio, self.det_upscale)
        size = (max(32, round(w * ratio / 32) * 32), max(32, round(h * ratio / 32) * 32))
        resized = cv2.resize(img, size).astype(np.float32)
        return ((resized / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)

    def _read_fast(self, images: list[Any], det_side: int | None) -> list[str]:
        import numpy as np
        from rapidocr_onnxruntime import RapidOCR

        prepared = [self._prepared(image) for image in images]
        inputs = [self._det_input(img, det_side) for img in prepared]
        maps: list[Any] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, tensor in enumerate(inputs):
            if tensor is not None:
                by_shape.setdefault(tensor.shape, []).append(i)
        for members in by_shape.values():
            preds = self._det.infer(np.stack([inputs[i] for i in members]))[0]
            self.calls["det"] += 1
            for row, i in enumerate(members):
                maps[i] = preds[row : row + 1]
        texts = []
        for img, pred in zip(prepared, maps, strict=True):
            if pred is None:
                texts.append("")  # the library's preprocessing gave no input: it reads no text either
                continue
            boxes, _ = self._det.postprocess_op(pred, img.shape[:2])
            boxes = self._det.filter_tag_det_res(boxes, img.shape[:2])
            if len(boxes) < 1:
                texts.append("")  # no text: nothing to recognise
                continue
            crops = [_crop(img, box) for box in RapidOCR.sorted_boxes(boxes)]
            crops, _, _ = self._cls(crops)
            recognised, _ = self._rec(crops)
            self.calls["cls"] += 1
            self.calls["rec"] += 1
            texts.append(" ".join(str(text) for text, score, *_ in recognised if float(score) >= self._text_score))
        return texts


OCR_DEVICES = "cpu, auto, cuda or cuda:<i>"


def ocr_providers(device: str) -> list[Any]:
    """ONNX Runtime execution providers for ``device``: the same models on ``cuda[:i]`` through onnxruntime-gpu's
    ``CUDAExecutionProvider`` (device ``i``; the CPU provider after it runs any operator CUDA lacks), on ``cpu`` the
    CPU provider alone; ``auto`` is CUDA device 0 where the installed onnxruntime has the CUDA provider, else the
    CPU (the OCR then runs on CPU workers as before).

    Raises:
        ValueError: an unknown device, or ``cuda`` where onnxruntime has no CUDA provider (install onnxruntime-gpu
            in place of onnxruntime; the rapidocr-onnxruntime wheel pulls in the CPU build).
    """
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise ValueError(f"unknown OCR device {device!r}; expected {OCR_DEVICES}")
    if not cuda:
        raise ValueError(
            f"OCR device {device!r}: onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu, or use the cpu device"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def ocr_runtime(runtime: str | None, providers: list[Any]) -> str:
    """The runtime the fast engine's models run on: ``openvino`` (OpenVINO's CPU plugin) or ``onnxruntime``.
    ``runtime`` None reads ``$LAIONET_OCR_RUNTIME`` (default ``auto``); ``auto`` is ONNX Runtime for a CUDA device
    (``providers``) and OpenVINO on the CPU where it is installed, else ONNX Runtime.

    Raises:
        ValueError: an unknown runtime; ``openvino`` for a CUDA device, or where OpenVINO is not installed.
    """
    runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown OCR runtime {runtime!r} (argument or ${RUNTIME_ENV}); expected one of {RUNTIMES}")
    cuda = providers != ["CPUExecutionProvider"]
    installed = importlib.util.find_spec("openvino") is not None
    if runtime == "auto":
        return "openvino" if installed and not cuda else "onnxruntime"
    if runtime == "openvino" and cuda:
        raise ValueError("OCR runtime 'openvino' runs on the CPU only; a CUDA device needs runtime onnxruntime")
    if runtime == "openvino" and not installed:
        raise ValueError("OCR runtime 'openvino': the openvino package is not installed (pip install openvino)")
    return runtime


def quick_precision(precision: str, runtime: str) -> str:
    """The precision of the fast engine's quick pass: ``auto`` is bf16 on OpenVINO where the CPU computes bf16
    natively (AVX512-BF16 or AMX), else fp32; ONNX Runtime runs fp32 whatever is asked. The exact reading (of the
    images the quick pass could not settle) always runs in fp32.

    Why only the quick pass: in bf16 the detector's map moves by up to 0.8 and flags differ from the library's on
    0.7 % of generated text images even after the exact re-reading (99.3 % same), while a bf16 quick pass followed
    by an fp32 exact re-reading gave the fp32 engine's flags on all of 1,000 (100 %, 1.18x faster there;
    2026-12-01, AMD EPYC with AVX512-BF16)."""
    if precision == "auto":
        return "bf16" if runtime == "openvino" and cpu_has_bf16() else "f32"
    return precision if runtime == "openvino" else "f32"


class _OpenVinoSession:
    """What RapidOCR's model wrappers ask of an ONNX Runtime session (``run``, ``get_inputs``, ``get_outputs``),
    answered by OpenVINO's CPU plugin from the same ONNX file, compiled for fp32 (``INFERENCE_PRECISION_HINT``: on a
    CPU with bf16 units OpenVINO would otherwise run in bf16, which moves the detector's map by up to 0.8), ``threads``
    threads in one stream, not pinned to cores (several OCR processes share a machine)."""

    def __init__(self, model_path: str, threads: int, precision: str = "f32") -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(model_path)
        settings = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        self._core: Any = core  # kept: the compiled model and its request are released before it (``close``)
        self._compiled: Any = core.compile_model(model, "CPU", settings)
        self._request: Any = self._compiled.create_infer_request()
        self._inputs = [_Named(port.get_any_name()) for port in model.inputs]
        self._outputs = [_Named(port.get_any_name()) for port in model.outputs]

    def close(self) -> None:
        """Release the request, then the compiled model, then the core (the order OpenVINO builds them in, undone);
        the session cannot run after this."""
        self._request = None
        self._compiled = None
        self._core = None

    def setting(self, name: str) -> Any:
        """A property of the compiled model (``INFERENCE_NUM_THREADS``, ``INFERENCE_PRECISION_HINT``, ...)."""
        return self._compiled.get_property(name)

    def get_inputs(self) -> list[Any]:
        return list(self._inputs)

    def get_outputs(self) -> list[Any]:
        return list(self._outputs)

    def run(self, output_names: list[str] | None, feed: dict[str, Any]) -> list[Any]:
        import numpy as np

        result = self._request.infer({name: np.ascontiguousarray(value) for name, value in feed.items()})
        names = [out.name for out in self._outputs]
        return [np.array(result[names.index(name)]) for name in output_names or names]  # copies: the request reuses


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def _session(model_path: str, threads: int, providers: list[Any] | None = None) -> Any:
    """An ONNX Runtime session (``providers``, default the CPU's) for a machine shared with other work: ``threads``
    intra-op threads that sleep instead of spinning when idle (spinning threads took the core from the other
    process's work: on 2 loaded cores the detector ran at 4.2-5.3 images/s with the library's settings, 7.6 without
    spinning), one inter-op thread, sequential execution, the memory arena on (the library turns it off; buffers are
    then allocated per run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_cpu_mem_arena = True
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model_path, sess_options=options, providers=providers or ["CPUExecutionProvider"])


def _crop(img: Any, points: Any) -> Any:
    """The library's crop of a detected box: perspective-warped upright, tall crops turned (``get_crop_img_list``)."""
    import cv2
    import numpy as np

    points = np.asarray(points, dtype=np.float32)
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(points, target)
    crop = cv2.warpPerspective(img, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(crop) if crop.shape[0] * 1.0 / crop.shape[1] >= 1.5 else crop
