"""The integrity of an exported classifier (``.onnx``): a digest over the graph and our metadata, and a
check of every ``caspl.*`` field against the graph, before anything is allocated for it.

An ONNX file is a serialised ``ModelProto``. :func:`read_onnx_file` reads its top-level fields with a
small protocol-buffers wire-format reader (no onnx, protobuf or torch import; the graph's weights are
never decoded): the ``metadata_props`` entries, and the names and shapes of the graph's inputs and
outputs. The digest an export records in ``caspl.content_sha256`` is (:func:`onnx_digest`)::

    sha256( b"caspl-onnx-classifier graph+metadata\\n"
            + every top-level field of the ModelProto but metadata_props (field 14), its bytes as in the file
            + b"metadata <n>\\n" + the canonical JSON of the caspl.* entries but caspl.content_sha256 )

so an edited weight, node or opset, a graph swapped for another one, and an edited, added or removed
``caspl.*`` entry all change it; other tools' metadata entries are not covered. :func:`check_classifier_file`
then validates every field (:func:`metadata_problems`): class names (as many as the graph's output
width, no control or bidirectional-override characters), image size (equal to the graph's input,
at most :data:`MAX_IMAGE_SIZE`), mean and std (3 finite numbers, std non-zero), method, settings,
student, quantisation, boosting record, input/output names. Every problem is an
:class:`~caspl_plugin.export.ExportError` with one line naming the file and what is wrong. The bytes
checked are the bytes handed to onnxruntime (:class:`~caspl_plugin.export.runtime.OnnxClassifier`),
so what runs is what was verified.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from . import FORMAT, FORMAT_VERSION, INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, QUANTIZATIONS, ExportError

__all__ = [
    "DIGEST_KEY", "MAX_IMAGE_SIZE", "OnnxFile", "check_classifier_file", "digest_problem", "foreign_problem",
    "metadata_problems", "onnx_digest", "parse_onnx_bytes", "read_onnx_file", "verify_digest",
]

#: our metadata key holding the digest
DIGEST_KEY = METADATA_PREFIX + "content_sha256"
#: the largest image side an exported classifier may declare (ViT-L/14@336 is 336)
MAX_IMAGE_SIZE = 4096
#: protobuf's limit for one serialised model: nothing we export is larger
MAX_FILE_BYTES = 2 * 1024**3
_DIGEST_HEADER = b"caspl-onnx-classifier graph+metadata\n"
_JSON_KEYS = ("class_names", "mean", "std", "student", "settings")
_REQUIRED = ("format", "format_version", "method", "settings", "class_names", "image_size", "mean", "std", "student",
             "boosting", "boosting_sha256", "quantization", "library_version", "input", "output", "content_sha256")
_OPTIONAL = ("source_sha256",)
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# ModelProto, GraphProto, ValueInfoProto, TypeProto, TensorProto field numbers (onnx.proto3)
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_TENSOR_DATA_LOCATION, _EXTERNAL = 14, 1

Dim = Union[int, str, None]


class _Truncated(Exception):
    pass


@dataclass
class OnnxFile:
    """An ONNX file as read here: its bytes, metadata entries, and graph inputs/outputs (name -> shape)."""

    path: str
    data: bytes
    properties: dict[str, str]
    inputs: dict[str, Optional[list[Dim]]] = field(default_factory=dict)
    outputs: dict[str, Optional[list[Dim]]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    external_data: bool = False

    @property
    def ours(self) -> dict[str, str]:
        """Our entries (``caspl.`` prefix removed)."""
        return {k[len(METADATA_PREFIX):]: v for k, v in self.properties.items() if k.startswith(METADATA_PREFIX)}


# ---- the wire format --------------------------------------------------------------------------------

def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _fields(data: memoryview, start: int, end: int):
    """``(number, wire type, value start, value end, field start)`` of every field in ``data[start:end]``."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, stop = _varint(data, pos, end)
        elif wire == 1:
            stop = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            stop = pos + length
        elif wire == 5:
            stop = pos + 4
        else:
            raise ValueError(f"wire type {wire} (groups are not used by ONNX)")
        if stop > end:
            raise _Truncated
        yield number, wire, pos, stop, field_start
        pos = stop


def _text(data: memoryview, start: int, stop: int) -> str:
    return bytes(data[start:stop]).decode("utf-8")


def _shape(data: memoryview, start: int, stop: int) -> Optional[list[Dim]]:
    """The tensor shape of a ValueInfoProto (``None`` when it has none)."""
    for number, wire, a, b, _ in _fields(data, start, stop):
        if number == 2 and wire == 2:  # type: TypeProto
            for n2, w2, a2, b2, _ in _fields(data, a, b):
                if n2 == 1 and w2 == 2:  # tensor_type: TypeProto.Tensor
                    for n3, w3, a3, b3, _ in _fields(data, a2, b2):
                        if n3 == 2 and w3 == 2:  # shape: TensorShapeProto
                            dims: list[Dim] = []
                            for n4, w4, a4, b4, _ in _fields(data, a3, b3):
                                if n4 == 1 and w4 == 2:  # dim
                                    value: Dim = None
                                    for n5, w5, a5, b5, _ in _fields(data, a4, b4):
                                        if n5 == 1 and w5 == 0:
                                            value = _varint(data, a5, b5)[0]
                                        elif n5 == 2 and w5 == 2:
                                            value = _text(data, a5, b5)
                                    dims.append(value)
                            return dims
    return None


def _value_info(data: memoryview, start: int, stop: int) -> tuple[str, Optional[list[Dim]]]:
    name = ""
    for number, wire, a, b, _ in _fields(data, start, stop):
        if number == 1 and wire == 2:
            name = _text(data, a, b)
    return name, _shape(data, start, stop)


def _uses_external_data(data: memoryview, start: int, stop: int) -> bool:
    return any(number == _TENSOR_DATA_LOCATION and wire == 0 and _varint(data, a, b)[0] == _EXTERNAL
               for number, wire, a, b, _ in _fields(data, start, stop))


def read_onnx_file(path) -> OnnxFile:
    """Read the ONNX file at ``path`` (its bytes, metadata and graph interface); :class:`ExportError`
    if it is not a readable ONNX model (nothing is decoded beyond the fields listed above)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ExportError(f"{path} is not a readable ONNX model: {size} bytes, over protobuf's 2 GiB limit for one file")
    with open(path, "rb") as handle:
        data = handle.read()
    return parse_onnx_bytes(data, path)


def parse_onnx_bytes(data: bytes, origin: str = "<bytes>") -> OnnxFile:
    """:func:`read_onnx_file` on bytes already read."""
    view = memoryview(data)
    found = OnnxFile(origin, data, {})
    graphs = 0
    try:
        for number, wire, start, stop, _ in _fields(view, 0, len(view)):
            if number == _MODEL_METADATA and wire == 2:
                key = value = ""
                for n, w, a, b, _ in _fields(view, start, stop):
                    if n == 1 and w == 2:
                        key = _text(view, a, b)
                    elif n == 2 and w == 2:
                        value = _text(view, a, b)
                if key in found.properties:
                    found.duplicates.append(key)
                found.properties[key] = value
            elif number == _MODEL_GRAPH and wire == 2:
                graphs += 1
                for n, w, a, b, _ in _fields(view, start, stop):
                    if n in (_GRAPH_INPUT, _GRAPH_OUTPUT) and w == 2:
                        name, shape = _value_info(view, a, b)
                        (found.inputs if n == _GRAPH_INPUT else found.outputs)[name] = shape
                    elif n == _GRAPH_INITIALIZER and w == 2 and _uses_external_data(view, a, b):
                        found.external_data = True
    except _Truncated:
        raise ExportError(f"{origin} is not a readable ONNX model: the file ends inside a field (truncated?)") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ExportError(f"{origin} is not a readable ONNX model: {error}") from None
    if graphs != 1:
        raise ExportError(f"{origin} is not a readable ONNX model: it holds {graphs} graphs, expected one")
    return found


def onnx_digest(onnx_file: OnnxFile) -> str:
    """The digest of an ONNX file's graph and our metadata (see the module docstring)."""
    from ..files import canonical_json

    view = memoryview(onnx_file.data)
    digest = hashlib.sha256(_DIGEST_HEADER)
    for number, _wire, _start, stop, field_start in _fields(view, 0, len(view)):
        if number != _MODEL_METADATA:
            digest.update(view[field_start:stop])
    ours = {k: v for k, v in onnx_file.properties.items() if k.startswith(METADATA_PREFIX) and k != DIGEST_KEY}
    document = canonical_json(ours)
    digest.update(b"metadata %d\n" % len(document) + document)
    return digest.hexdigest()


# ---- our metadata ----------------------------------------------------------------------------------

def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite_triplet(value) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def metadata_problems(ours: dict[str, str], onnx_file: Optional[OnnxFile] = None) -> tuple[dict, list[str]]:
    """``(decoded metadata, problems)``: every ``caspl.*`` field checked for its type and range, and
    against the graph's input and output shapes when ``onnx_file`` is given. Nothing is allocated."""
    from ..names import class_name_problem

    problems: list[str] = []
    meta: dict = dict(ours)
    missing = [key for key in _REQUIRED if key not in ours]
    unknown = sorted(set(ours) - set(_REQUIRED) - set(_OPTIONAL))
    if missing:
        problems.append(f"missing field(s) {', '.join(METADATA_PREFIX + k for k in missing)}")
    if unknown:
        problems.append(f"unknown field(s) {', '.join(METADATA_PREFIX + k for k in unknown)}")
    for key in _JSON_KEYS:
        if key in ours:
            try:
                meta[key] = json.loads(ours[key])
            except ValueError:
                problems.append(f"{METADATA_PREFIX}{key}: expected JSON, got {_shown(ours[key])}")
                meta[key] = None
    if not isinstance(ours.get("method"), str) or not _METHOD.fullmatch(ours.get("method", "")):
        problems.append(f"{METADATA_PREFIX}method: expected a method name, got {_shown(ours.get('method'))}")
    if "settings" in ours and not isinstance(meta.get("settings"), dict):
        problems.append(f"{METADATA_PREFIX}settings: expected a JSON object, got {_shown(ours['settings'])}")
    if "student" in ours and not isinstance(meta.get("student"), dict):
        problems.append(f"{METADATA_PREFIX}student: expected a JSON object, got {_shown(ours['student'])}")
    names = meta.get("class_names")
    names_ok = isinstance(names, list) and bool(names) and all(isinstance(n, str) for n in names)
    if "class_names" in ours and not names_ok:
        problems.append(f"{METADATA_PREFIX}class_names: expected a non-empty JSON list of strings, got {_shown(ours['class_names'])}")
    elif names_ok:
        for i, name in enumerate(names):
            reason = class_name_problem(name)
            if reason:
                problems.append(f"{METADATA_PREFIX}class_names[{i}]: {reason}")
        if len(set(names)) != len(names):
            problems.append(f"{METADATA_PREFIX}class_names: expected distinct names, got duplicates")
    size_text = ours.get("image_size")
    size = None
    if isinstance(size_text, str) and re.fullmatch(r"[0-9]{1,6}", size_text):
        size = int(size_text)
    if size is None or not 1 <= size <= MAX_IMAGE_SIZE:
        problems.append(f"{METADATA_PREFIX}image_size: expected an integer in 1..{MAX_IMAGE_SIZE}, got {_shown(size_text)}")
        size = None
    meta["image_size"] = size
    for key in ("mean", "std"):
        if key in ours and not _finite_triplet(meta.get(key)):
            problems.append(f"{METADATA_PREFIX}{key}: expected 3 finite numbers, got {_shown(ours[key])}")
    if _finite_triplet(meta.get("std")) and any(v == 0 for v in meta["std"]):
        problems.append(f"{METADATA_PREFIX}std: expected non-zero numbers (pixels are divided by them), got {meta['std']}")
    if ours.get("boosting") not in ("true", "false"):
        problems.append(f"{METADATA_PREFIX}boosting: expected 'true' or 'false', got {_shown(ours.get('boosting'))}")
    boosting_sha = ours.get("boosting_sha256", "")
    if boosting_sha and not _SHA256.fullmatch(boosting_sha):
        problems.append(f"{METADATA_PREFIX}boosting_sha256: expected 64 hex digits or nothing, got {_shown(boosting_sha)}")
    if "source_sha256" in ours and not _SHA256.fullmatch(ours["source_sha256"]):
        problems.append(f"{METADATA_PREFIX}source_sha256: expected 64 hex digits, got {_shown(ours['source_sha256'])}")
    if ours.get("quantization") not in QUANTIZATIONS:
        problems.append(f"{METADATA_PREFIX}quantization: expected one of {', '.join(QUANTIZATIONS)}, got {_shown(ours.get('quantization'))}")
    for key, expected in (("input", INPUT_NAME), ("output", OUTPUT_NAME)):
        if ours.get(key) != expected:
            problems.append(f"{METADATA_PREFIX}{key}: expected {expected!r}, got {_shown(ours.get(key))}")
    meta["boosting"] = ours.get("boosting") == "true"
    if onnx_file is not None:
        problems += _graph_problems(onnx_file, names if names_ok else None, size)
    return meta, problems


def _graph_problems(onnx_file: OnnxFile, names: Optional[list], size: Optional[int]) -> list[str]:
    problems = []
    if onnx_file.external_data:
        problems.append("the graph reads tensors from external files; an exported classifier holds all its weights")
    if list(onnx_file.inputs) != [INPUT_NAME] or OUTPUT_NAME not in onnx_file.outputs:
        return problems + [f"expected the graph input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, the graph has "
                           f"{list(onnx_file.inputs)} -> {list(onnx_file.outputs)}"]
    shape_in, shape_out = onnx_file.inputs[INPUT_NAME], onnx_file.outputs[OUTPUT_NAME]
    if not (isinstance(shape_in, list) and len(shape_in) == 4 and shape_in[1] == 3):
        problems.append(f"graph input {INPUT_NAME!r}: expected the shape [batch, 3, size, size], got {shape_in}")
    elif size is not None:
        for axis in (2, 3):
            if isinstance(shape_in[axis], int) and shape_in[axis] != size:
                problems.append(f"{METADATA_PREFIX}image_size is {size} but the graph takes {shape_in[2]}x{shape_in[3]} "
                                f"images (input {INPUT_NAME!r} {shape_in})")
                break
    if not (isinstance(shape_out, list) and len(shape_out) == 2):
        problems.append(f"graph output {OUTPUT_NAME!r}: expected the shape [batch, classes], got {shape_out}")
    elif names is not None and isinstance(shape_out[1], int) and shape_out[1] != len(names):
        problems.append(f"{METADATA_PREFIX}class_names has {len(names)} names but the graph gives {shape_out[1]} logits")
    return problems


def verify_digest(onnx_file: OnnxFile) -> Optional[str]:
    """None if ``onnx_file`` carries our metadata and its digest matches; else one line saying what is wrong."""
    return foreign_problem(onnx_file) or digest_problem(onnx_file)


def foreign_problem(onnx_file: OnnxFile) -> Optional[str]:
    """Why ``onnx_file`` is not one of our exports at all (no or another format, another format
    version, a duplicated metadata entry), or None."""
    ours = onnx_file.ours
    found = ours.get("format")
    if found != FORMAT:
        return (f"{onnx_file.path} is an ONNX model but not a caspl classifier export "
                + (f"(format {found!r}, expected {FORMAT!r})" if found else f"(no {METADATA_PREFIX}format metadata)")
                + "; export one with `caspl export --model CLASSIFIER.safetensors -o FILE.onnx`")
    version = ours.get("format_version")
    if version != str(FORMAT_VERSION):
        older = version == "1"
        return (f"{onnx_file.path}: format version {version!r} is not supported (expected {FORMAT_VERSION})"
                + ("; version 1 exports carry no integrity digest: export the classifier again with `caspl export`"
                   if older else ""))
    ours_duplicates = sorted({k for k in onnx_file.duplicates if k.startswith(METADATA_PREFIX)})
    if ours_duplicates:
        return f"{onnx_file.path}: the metadata entry {ours_duplicates[0]!r} appears more than once (edited file)"
    return None


def digest_problem(onnx_file: OnnxFile) -> Optional[str]:
    """None if the recorded digest matches the graph and our metadata, else one line saying so."""
    recorded = onnx_file.ours.get("content_sha256")
    computed = onnx_digest(onnx_file)
    if recorded != computed:
        return (f"{onnx_file.path}: the graph or its caspl metadata do not match the digest recorded at export "
                f"(recorded {recorded}, computed {computed}); the file was modified or is corrupted: export it again")
    return None


def check_classifier_file(onnx_file: OnnxFile) -> dict:
    """Our decoded metadata of a verified, well-formed exported classifier; :class:`ExportError` (one
    line naming the file and every problem) otherwise."""
    problem = verify_digest(onnx_file)
    if problem is not None:
        raise ExportError(problem)
    meta, problems = metadata_problems(onnx_file.ours, onnx_file)
    if problems:
        raise ExportError(f"{onnx_file.path}: {'; '.join(problems)}")
    return meta
