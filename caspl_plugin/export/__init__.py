"""Deploy a phase-2 classifier as one ONNX graph and run it with onnxruntime.

After phase 2 the class text features of every method except CoCoOp are constants, so the
deployed classifier is the image encoder with its vision prompts (boosting + adapting, deep ones
included) followed by one product with the normalised class features times the logit scale:

    export_classifier("pets.safetensors", "pets.onnx")             # torch, onnx, onnxscript
    OnnxClassifier("pets.onnx").predict(["cat.jpg"], topk=3)       # onnxruntime + PIL + numpy only

Attributes are imported lazily: the runtime side never imports torch.

Imports inference (the classifier it exports), data, files and names; its runtime modules never
import torch (.importlinter).
"""
from __future__ import annotations

import importlib

FORMAT = "caspl-onnx-classifier"
#: 2: ``caspl.content_sha256``, a digest over the graph and our metadata (:mod:`.integrity`)
FORMAT_VERSION = 2
#: prefix of our keys in the ONNX model's ``metadata_props``
METADATA_PREFIX = "caspl."
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
QUANTIZATIONS = ("none", "int8")
INSTALL_HINT = 'pip install "caspl-plugin[export]"'


class ExportError(ValueError):
    """A classifier that cannot be exported, or an ONNX file that is not one of ours."""


_LAZY = {
    "export_classifier": "onnx_export",
    "export_model": "onnx_export",
    "DeployedClassifier": "onnx_export",
    "OnnxClassifier": "runtime",
    "read_metadata": "runtime",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMAT", "FORMAT_VERSION", "ExportError", *_LAZY]
