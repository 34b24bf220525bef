"""Classifier artifact -> ONNX: the image path of a phase-2 model with its class features folded in.

The graph is built through the model's public image path (``model.encode_image``, which places
the vision prompts, deep ones included) and ``PromptedCLIP.logits``; it is exported with the
dynamo-based ``torch.onnx.export`` (torch.export + onnxscript), which keeps the batch axis
dynamic. (The TorchScript-based exporter bakes the traced batch size into the prompt expansion
and cannot export ``nn.MultiheadAttention``'s inference fast path.)
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..files import atomic_write, file_sha256
from . import FORMAT, FORMAT_VERSION, INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, QUANTIZATIONS, ExportError

logger = logging.getLogger(__name__)

#: protobuf's limit for one serialised ONNX model
_PROTOBUF_LIMIT = 2 * 1024**3
#: fp32 export must reproduce PyTorch's logits to this (max abs) on the verification batch
FP32_TOLERANCE = 1e-4


class DeployedClassifier(nn.Module):
    """``images [B, 3, H, W] -> logits [B, C]``: the model's image encoder (with its vision prompts)
    against constant class text features, scaled by the model's logit scale."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "image_conditioned_text", False):
            raise ExportError(
                f"{getattr(model, 'method', type(model).__name__)}: the class text features depend on each image "
                "(CoCoOp's meta-net shifts the text context per image), so they cannot be folded into the graph as "
                "constants and the text encoder would have to run for every image and class; use the .safetensors "
                "classifier with `caspl classify` instead"
            )
        self.model = model.eval()
        with torch.no_grad():
            self.register_buffer("class_features", model.class_features().detach().float().clone())
            self.register_buffer("logit_scale", model.clip.logit_scale.detach().float().clone())

    def forward(self, images: Tensor) -> Tensor:
        features = self.model.encode_image(images).float()
        return self.model.clip.logits(features, self.class_features, self.logit_scale)


def _require_export_packages() -> None:
    from . import INSTALL_HINT

    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


def build_metadata(model: nn.Module, *, quantization: str = "none", source_sha256: Optional[str] = None) -> dict[str, str]:
    """Our ``metadata_props`` (string values; lists and dicts as JSON) for ``model``'s export."""
    from ..version import __version__

    from ..data.classnames import ClassNamesError, check_class_names

    try:
        check_class_names(model.class_names, f"{model.method} classifier")
    except ClassNamesError as error:
        raise ExportError(str(error)) from None
    clip = model.clip
    boosting = model.boosting
    student = {"backbone": clip.backbone_name, "weights": clip.weights_source, **clip.geometry}
    values = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "method": model.method,
        "settings": json.dumps(model.settings(), sort_keys=True),
        "class_names": json.dumps(list(model.class_names), ensure_ascii=False),
        "image_size": str(int(clip.geometry["image_size"])),
        "mean": json.dumps([float(v) for v in clip.mean]),
        "std": json.dumps([float(v) for v in clip.std]),
        "student": json.dumps(student, sort_keys=True, default=str),
        "boosting": "true" if boosting is not None else "false",
        "boosting_sha256": (getattr(boosting, "artifact_sha256", None) or "") if boosting is not None else "",
        "quantization": quantization,
        "library_version": __version__,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
    }
    if source_sha256:
        values["source_sha256"] = source_sha256
    return {METADATA_PREFIX + key: value for key, value in values.items()}


def _our_properties(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


def _sealed(proto, path) -> bytes:
    """``proto`` serialised with its digest (``caspl.content_sha256`` over the graph and our metadata),
    after checking that the bytes verify as the runtime will check them (nothing is written otherwise)."""
    from .integrity import DIGEST_KEY, check_classifier_file, onnx_digest, parse_onnx_bytes

    _set_metadata(proto, {k: v for k, v in _our_properties(proto).items() if k != DIGEST_KEY})
    digest = onnx_digest(parse_onnx_bytes(proto.SerializeToString(), str(path)))
    proto.metadata_props.add(key=DIGEST_KEY, value=digest)
    data = proto.SerializeToString()
    check_classifier_file(parse_onnx_bytes(data, str(path)))
    return data


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del proto.metadata_props[:]
    for prop in kept:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def _to_onnx(module: DeployedClassifier, example: Tensor, opset: Optional[int]):
    """The ONNX ``ModelProto`` of ``module`` with a dynamic batch axis."""
    batch = torch.export.Dim("batch", min=1)
    kwargs = {"opset_version": opset} if opset is not None else {}
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}}, optimize=True, verbose=False, **kwargs,
        )
    return program.model_proto


def _quantize_int8(proto):
    """onnxruntime dynamic quantisation: 8-bit weights of MatMul/Gemm, activations quantised at run time.

    Weights are unsigned 8-bit (onnxruntime's U8U8 kernels): when this was chosen, on the toy domain's
    CasPL_PromptSRC classifier of the time, that kept 99.2 % top-1 agreement with fp32, against 98.3 %
    with signed weights and 93.3 % with per-channel signed weights (today's: 99.4 %, benchmarks/bench_export.py). The graph's last two products, the image projection and
    the product with the class features, stay fp32: they are a tiny share of the work, and quantising
    them moves the cosines enough to flip close top-1 decisions (96 % agreement with them).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    products = [node.name for node in proto.graph.node if node.op_type in ("MatMul", "Gemm")]
    with tempfile.TemporaryDirectory(prefix="caspl-onnx-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save_model(proto, str(source))
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8, nodes_to_exclude=products[-2:])
        return onnx.load_model(str(target))


def _session(data: bytes):
    from .runtime import open_session

    return open_session(data, "the exported graph")


def export_model(
    model: nn.Module,
    path,
    *,
    quantize: str = "none",
    opset: Optional[int] = None,
    source_sha256: Optional[str] = None,
    verify: bool = True,
) -> dict:
    """Export ``model`` (a :class:`~caspl_plugin.methods.base.PromptModel`) to ``path`` (written atomically).

    The graph runs in float32 on a CPU copy of the model (``model`` itself is left as it is).
    ``quantize="int8"`` applies onnxruntime's dynamic quantisation. With ``verify`` the written
    graph is run on a random batch against PyTorch. Returns ``{"path", "metadata",
    "max_abs_difference", "top1_agreement"}`` (the last two ``None`` without ``verify``).
    """
    _require_export_packages()
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if opset is not None and opset < 18:
        raise ExportError(f"opset {opset} is too old for the ONNX exporter: use 18 or newer (or leave it unset)")
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"Output {path} is a directory; expected an .onnx file path")
    deployed_model = copy.deepcopy(model).cpu().float().eval()
    module = DeployedClassifier(deployed_model).eval()
    size = int(deployed_model.clip.geometry["image_size"])
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    proto = _to_onnx(module, example, opset)
    if quantize == "int8":
        proto = _quantize_int8(proto)
    _set_metadata(proto, build_metadata(deployed_model, quantization=quantize, source_sha256=source_sha256))
    data = _sealed(proto, path)
    if len(data) >= _PROTOBUF_LIMIT:
        raise ExportError(f"The exported graph is {len(data) / 1024**3:.1f} GiB, over protobuf's 2 GiB limit for one ONNX file")
    difference = agreement = None
    if verify:
        import numpy as np

        check = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = module(check).numpy()
        got = _session(data).run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0]
        difference = float(np.abs(got - expected).max())
        agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
        if quantize == "none" and not difference <= FP32_TOLERANCE:
            raise ExportError(
                f"The exported graph differs from PyTorch by {difference:.3g} (max abs logit), over {FP32_TOLERANCE:g}; "
                "nothing was written"
            )
    atomic_write(path, data)
    logger.info("Wrote %s (%s, %d classes, %s)", path, deployed_model.method, len(deployed_model.class_names), quantize)
    return {"path": str(path), "metadata": _our_properties(proto),
            "max_abs_difference": difference, "top1_agreement": agreement}


def export_classifier(
    source,
    path,
    *,
    quantize: str = "none",
    opset: Optional[int] = None,
    weights: Optional[str] = None,
    weights_dir: Optional[str] = None,
    verify: bool = True,
    class_names: Optional[Sequence[str]] = None,
    template: Optional[str] = None,
) -> dict:
    """Export the classifier artifact ``source`` (``.safetensors`` from phase 2) to the ONNX file ``path``.

    ``weights`` / ``weights_dir`` locate the student CLIP as for :func:`caspl_plugin.inference.load_classifier`;
    ``class_names`` (and ``template``) export it over other classes than it was trained on (open
    vocabulary: :func:`caspl_plugin.inference.with_class_names`). Returns what :func:`export_model` returns.
    """
    from ..inference import load_classifier, with_class_names

    _require_export_packages()
    if os.fspath(source) == os.fspath(path):
        raise ExportError(f"The output {path} is the classifier being exported")
    model = load_classifier(source, weights=weights, weights_dir=weights_dir, device="cpu")
    if class_names is not None or template is not None:
        model = with_class_names(model, model.class_names if class_names is None else class_names, template)
    return export_model(model, path, quantize=quantize, opset=opset, source_sha256=file_sha256(source), verify=verify)


def quantize_onnx(source, path) -> dict[str, str]:
    """Write the int8 (dynamic quantisation) version of the exported classifier ``source`` to ``path``
    atomically, with its metadata marked ``quantization: int8``; returns that metadata."""
    import onnx

    _require_export_packages()
    proto = onnx.load_model(os.fspath(source))
    metadata = {p.key: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}
    if metadata.get(METADATA_PREFIX + "format") != FORMAT:
        raise ExportError(f"{source} is not a caspl classifier export")
    if metadata.get(METADATA_PREFIX + "quantization", "none") != "none":
        raise ExportError(f"{source} is already quantised ({metadata[METADATA_PREFIX + 'quantization']})")
    from .integrity import check_classifier_file, read_onnx_file

    check_classifier_file(read_onnx_file(source))  # only a verified export is quantised
    quantized = _quantize_int8(proto)
    metadata[METADATA_PREFIX + "quantization"] = "int8"
    _set_metadata(quantized, metadata)
    atomic_write(path, _sealed(quantized, path))
    return _our_properties(quantized)
