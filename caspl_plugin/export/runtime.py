"""Run an exported classifier with onnxruntime: PIL + numpy preprocessing, no torch."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..prediction import Prediction
from . import INPUT_NAME, INSTALL_HINT, OUTPUT_NAME, ExportError
from .preprocess import eval_pixels, open_image


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"Running an .onnx classifier needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def _providers(ort, device: str) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.split(":")[0] == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError(f"device {device!r}: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ExportError(f"device {device!r}: expected cpu, cuda or cuda:N for an .onnx classifier")


def open_session(data: bytes, path, providers=("CPUExecutionProvider",)):
    """An onnxruntime session over ``data`` (the bytes that were verified), with the CPU threads the
    command chose (:func:`caspl_plugin.threads.configured_threads`); errors as one line."""
    from ..threads import configured_threads

    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if configured_threads() is not None:
        options.intra_op_num_threads = configured_threads()
    try:
        return ort.InferenceSession(data, options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{path} is not a readable ONNX model: {first_line}") from None


def read_metadata(path) -> dict:
    """Our metadata of the exported classifier at ``path`` (JSON values decoded), after the file's
    digest and every field were verified (:mod:`caspl_plugin.export.integrity`; no onnxruntime needed)."""
    from .integrity import check_classifier_file, read_onnx_file

    return check_classifier_file(read_onnx_file(path))


class OnnxClassifier:
    """An exported classifier in onnxruntime: ``predict(paths or pixel array, topk)``.

    The file is read once; its digest and every metadata field are verified against the graph
    (:func:`caspl_plugin.export.integrity.check_classifier_file`) before onnxruntime sees the same
    bytes, so what runs is what was verified.
    """

    def __init__(self, path, *, device: str = "cpu"):
        from .integrity import check_classifier_file, read_onnx_file

        ort = _onnxruntime()
        self.path = str(path)
        providers = _providers(ort, device)
        onnx_file = read_onnx_file(path)
        self.metadata = check_classifier_file(onnx_file)
        self.session = open_session(onnx_file.data, path, providers)
        inputs, outputs = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise ExportError(f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, the graph has {inputs} -> {outputs}")
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.method: str = self.metadata["method"]
        self.image_size: int = self.metadata["image_size"]

    @property
    def description(self) -> str:
        """One line: method, student, classes, boosting, ONNX precision."""
        student = self.metadata.get("student", {}).get("backbone", "?")
        quantization = self.metadata.get("quantization", "none")
        return (f"{self.method} on {student}, {len(self.class_names)} classes"
                + (", with boosting prompts" if self.metadata["boosting"] else "")
                + f" (ONNX, {'fp32' if quantization == 'none' else quantization})")

    def load_images(self, paths: Sequence[str]) -> np.ndarray:
        """``[N, 3, S, S]`` float32 pixels of ``paths``, preprocessed as the PyTorch eval path."""
        images = []
        for path in paths:
            try:
                image = open_image(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"Image not found: {path}") from None
            except Exception as error:
                raise ValueError(f"Cannot read image {path}: {error}") from None
            images.append(eval_pixels(image, self.image_size, self.metadata["mean"], self.metadata["std"]))
        return np.stack(images)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Logits ``[N, C]`` of preprocessed pixels ``[N, 3, S, S]``."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        expected = (3, self.image_size, self.image_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(f"Expected pixels [N, {', '.join(map(str, expected))}], got {list(pixels.shape)}")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]

    def predict(self, images, topk: int = 5, names: Optional[Sequence[str]] = None) -> list[Prediction]:
        if not isinstance(images, np.ndarray):
            names = [str(p) for p in images]
            images = self.load_images(names)
        names = names or [f"image {i}" for i in range(len(images))]
        logits = self.logits(images).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(-1, keepdims=True)
        k = min(topk, probs.shape[-1])
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        return [
            Prediction(name, [self.class_names[i] for i in idx], [float(row[i]) for i in idx])
            for name, idx, row in zip(names, order, probs)
        ]
