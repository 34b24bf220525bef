"""Run an exported classifier with onnxruntime: PIL + numpy preprocessing, no torch."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from ..prediction import Prediction
from . import FORMAT, FORMAT_VERSION, INPUT_NAME, INSTALL_HINT, METADATA_PREFIX, OUTPUT_NAME, ExportError
from .preprocess import eval_pixels, open_image

_JSON_KEYS = ("class_names", "mean", "std", "student", "settings")


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


def parse_metadata(props: dict, origin: str) -> dict:
    """Our metadata from an ONNX model's ``metadata_props`` map, checked; a clear error otherwise."""
    ours = {k[len(METADATA_PREFIX):]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
    if ours.get("format") != FORMAT:
        found = ours.get("format")
        raise ExportError(
            f"{origin} is an ONNX model but not a caspl classifier export "
            + (f"(format {found!r}, expected {FORMAT!r})" if found else f"(no {METADATA_PREFIX}format metadata)")
            + "; export one with `caspl export --model CLASSIFIER.safetensors -o FILE.onnx`"
        )
    try:
        version = int(ours.get("format_version", ""))
    except ValueError:
        version = None
    if version != FORMAT_VERSION:
        raise ExportError(f"{origin}: format version {ours.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    missing = [k for k in ("method", "class_names", "image_size", "mean", "std") if k not in ours]
    if missing:
        raise ExportError(f"{origin}: caspl metadata lacks {', '.join(missing)}")
    meta = dict(ours)
    try:
        for key in _JSON_KEYS:
            if key in meta:
                meta[key] = json.loads(meta[key])
        meta["image_size"] = int(meta["image_size"])
    except ValueError as error:
        raise ExportError(f"{origin}: unreadable caspl metadata: {error}") from None
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ExportError(f"{origin}: class_names must be a non-empty list of strings")
    for key in ("mean", "std"):
        if not (isinstance(meta[key], list) and len(meta[key]) == 3):
            raise ExportError(f"{origin}: {key} must be 3 numbers, got {meta[key]!r}")
    meta["boosting"] = meta.get("boosting") == "true"
    return meta


def _open_session(path, providers):
    ort = _onnxruntime()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{path} is not a readable ONNX model: {first_line}") from None


def read_metadata(path) -> dict:
    """Our metadata of the exported classifier at ``path`` (JSON values decoded)."""
    session = _open_session(path, ["CPUExecutionProvider"])
    return parse_metadata(session.get_modelmeta().custom_metadata_map, str(path))


class OnnxClassifier:
    """An exported classifier in onnxruntime: ``predict(paths or pixel array, topk)``."""

    def __init__(self, path, *, device: str = "cpu"):
        ort = _onnxruntime()
        self.path = str(path)
        self.session = _open_session(path, _providers(ort, device))
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
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
