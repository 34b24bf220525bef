"""Integrity of exported classifiers (.onnx): the digest over the graph and the caspl.* metadata is
checked by `caspl classify`, OnnxClassifier and `caspl inspect`; every field is validated against the
graph before anything is allocated, even when an editor recomputed the digest; random corruption
only raises the package's own errors, and the CLI never prints a traceback."""
import json
import re
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from caspl_plugin.cli import main as caspl  # noqa: E402
from caspl_plugin.export import ExportError, OnnxClassifier  # noqa: E402
from caspl_plugin.export.integrity import (  # noqa: E402
    DIGEST_KEY,
    check_classifier_file,
    onnx_digest,
    parse_onnx_bytes,
    read_onnx_file,
)

CLASSES = ["triangle", "bird", "square"]


def tiny_model(seed, classes=CLASSES):
    from caspl_plugin.clip import create_clip
    from caspl_plugin.methods import get_method
    from caspl_plugin.prompts import PromptedCLIP

    torch.manual_seed(seed)
    clip = PromptedCLIP(create_clip("caspl-tiny-student", "random"))
    return get_method("coop")(clip, classes, n_ctx=2, ctx_init="").eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two exports of the same classifier kind (different weights), and an image."""
    from PIL import Image

    from caspl_plugin.export.onnx_export import export_model

    folder = tmp_path_factory.mktemp("integrity-onnx")
    export_model(tiny_model(0), folder / "good.onnx")
    export_model(tiny_model(1, CLASSES + ["star"]), folder / "other.onnx")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "img.png")
    return {"good": folder / "good.onnx", "other": folder / "other.onnx", "image": str(folder / "img.png")}


def edited(source, path, edit, reseal=False):
    """``source`` with ``edit(proto)`` applied, written to ``path``; with ``reseal`` the digest is
    recomputed, as an editor who knows how it is defined would."""
    proto = onnx.load_model(str(source))
    edit(proto)
    if reseal:
        kept = [(p.key, p.value) for p in proto.metadata_props if p.key != DIGEST_KEY]
        del proto.metadata_props[:]
        for key, value in kept:
            proto.metadata_props.add(key=key, value=value)
        proto.metadata_props.add(key=DIGEST_KEY, value=onnx_digest(parse_onnx_bytes(proto.SerializeToString())))
    onnx.save_model(proto, str(path))
    return path


def set_meta(key, value):
    def edit(proto):
        for prop in proto.metadata_props:
            if prop.key == "caspl." + key:
                prop.value = value
                return
        proto.metadata_props.add(key="caspl." + key, value=value)
    return edit


def run(argv, capsys):
    capsys.readouterr()
    code = caspl(argv)
    return code, capsys.readouterr()


# ---- what must hold ------------------------------------------------------------------------------


def test_edited_class_names_are_refused_and_the_untouched_file_is_inspected(exported, tmp_path, capsys):
    code, captured = run(["inspect", str(exported["good"])], capsys)
    assert code == 0 and "validation" in captured.out and ": ok" in captured.out
    assert "(ok, graph+metadata)" in captured.out and "logits ['batch', 3]" in captured.out
    assert "3: triangle, bird, square" in captured.out
    for names in (["bird", "triangle", "square"], ["cat", "dog", "fish"]):
        path = edited(exported["good"], tmp_path / "names.onnx", set_meta("class_names", json.dumps(names)))
        for argv in (["classify", "--model", str(path), exported["image"]], ["inspect", str(path)]):
            code, captured = run(argv, capsys)
            errors = captured.err.strip().splitlines()
            assert code == 2 and len(errors) == 1 and "do not match the digest recorded at export" in errors[0]
            assert "Traceback" not in captured.err and "%" not in captured.out
        with pytest.raises(ExportError, match="digest"):
            OnnxClassifier(path)


def _flip(proto):
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(tensor.raw_data)
    raw[7] ^= 1
    tensor.raw_data = bytes(raw)


@pytest.mark.parametrize("edit, message", [
    (_flip, "digest"),
    ("other graph", "digest"),
    (lambda p: p.metadata_props.add(key="caspl.class_names", value='["a", "b", "c"]'), "appears more than once"),
    (set_meta("format_version", "1"), "version 1 exports carry no integrity digest"),
    (lambda p: p.metadata_props.__delitem__(slice(None)), "not a caspl classifier export"),
])
def test_graph_edits_and_foreign_files_are_refused(edit, message, exported, tmp_path):
    if edit == "other graph":  # another export's graph under this file's metadata
        other = onnx.load_model(str(exported["other"])).graph

        def edit(proto):
            proto.graph.CopyFrom(other)
    path = edited(exported["good"], tmp_path / "x.onnx", edit)
    with pytest.raises(ExportError, match=re.escape(message)):
        check_classifier_file(read_onnx_file(path))


RESEALED = {  # every field checked, against the graph, even under a recomputed digest
    "4 names, 3 logits": (set_meta("class_names", json.dumps(CLASSES + ["star"])), "has 4 names but the graph gives 3 logits"),
    "2 names, 3 logits": (set_meta("class_names", json.dumps(CLASSES[:2])), "has 2 names but the graph gives 3 logits"),
    "size 64 on a 32 graph": (set_meta("image_size", "64"), "image_size is 64 but the graph takes 32x32 images"),
    "size 100000": (set_meta("image_size", "100000"), "image_size: expected an integer in 1..4096, got '100000'"),
    "size 0": (set_meta("image_size", "0"), "image_size: expected an integer in 1..4096"),
    "size -5": (set_meta("image_size", "-5"), "image_size: expected an integer in 1..4096"),
    "std zero": (set_meta("std", "[0, 0, 0]"), "std: expected non-zero numbers"),
    "std a string": (set_meta("std", '"abc"'), "std: expected 3 finite numbers"),
    "mean NaN": (set_meta("mean", "[NaN, 0.4, 0.4]"), "mean: expected 3 finite numbers"),
    "name with RLO": (set_meta("class_names", json.dumps(["tri\u202eangle", "bird", "square"])), "U+202E"),
    "unknown key": (set_meta("note", "x"), "unknown field(s) caspl.note"),
    "quantization": (set_meta("quantization", "int4"), "quantization: expected one of none, int8"),
}


@pytest.mark.parametrize("case", sorted(RESEALED))
def test_every_field_is_validated_against_the_graph(case, exported, tmp_path, capsys, monkeypatch):
    from caspl_plugin.export import runtime

    edit, message = RESEALED[case]
    path = edited(exported["good"], tmp_path / "x.onnx", edit, reseal=True)
    monkeypatch.setattr(runtime, "eval_pixels", lambda *a, **k: pytest.fail("pixels allocated before validation"))
    with pytest.raises(ExportError, match=re.escape(message)):
        OnnxClassifier(path)
    for argv in (["classify", "--model", str(path), exported["image"]], ["inspect", str(path)]):
        code, captured = run(argv, capsys)
        assert code == 2 and message in captured.err and "Traceback" not in captured.err
        assert len(captured.err.strip().splitlines()) == 1


def test_inspect_and_read_metadata_need_no_onnxruntime(exported, monkeypatch, capsys):
    from caspl_plugin.export import read_metadata

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert read_metadata(exported["good"])["class_names"] == CLASSES
    assert run(["inspect", str(exported["good"])], capsys)[0] == 0


# ---- random corruption: only the package's errors -------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_mutations_raise_only_export_errors(exported, tmp_path, data):
    raw = bytearray(exported["good"].read_bytes())
    original = bytes(raw)
    for position, value in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
                                              min_size=1, max_size=4)):
        raw[position] = value
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "mutated.onnx"
    path.write_bytes(bytes(raw))
    assert caspl(["inspect", str(path)]) in (0, 2)  # an exception escaping main() would be a traceback
    try:
        check_classifier_file(read_onnx_file(path))
    except ExportError:
        return
    assert bytes(raw) == original or _same_protobuf(bytes(raw), original)


def _same_protobuf(a: bytes, b: bytes) -> bool:
    """Some byte changes leave the message the same (e.g. a redundant varint byte): equal parses."""
    return onnx.load_model_from_string(a) == onnx.load_model_from_string(b)


METADATA_VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["", "[]", "{}", "null", "NaN", "[1, 2, 3]",
                                                                   '["a", "b", "c"]', "32", "0", "-1", "1e9",
                                                                   "[0.5, 0.5, 0.5]", "[0, 0, 0]", "true", "int8"]))
KEYS = ["format", "format_version", "method", "settings", "class_names", "image_size", "mean", "std", "student",
        "boosting", "boosting_sha256", "quantization", "input", "output", "source_sha256", "extra"]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_metadata_raises_only_export_errors_and_the_cli_no_traceback(exported, tmp_path, data):
    edits = data.draw(st.dictionaries(st.sampled_from(KEYS), METADATA_VALUES, min_size=1, max_size=3))
    reseal = data.draw(st.booleans())

    def edit(proto):
        for key, value in edits.items():
            set_meta(key, value)(proto)
    path = edited(exported["good"], tmp_path / "meta.onnx", edit, reseal=reseal)
    try:
        classifier = OnnxClassifier(path)
    except ExportError:
        pass
    else:  # what loads must run and name one of its classes
        size = classifier.image_size
        prediction = classifier.predict(np.zeros((1, 3, size, size), dtype=np.float32), topk=1)[0]
        assert prediction.classes[0] in classifier.class_names
    for argv in (["classify", "--model", str(path), exported["image"]], ["inspect", str(path)]):
        assert caspl(argv) in (0, 2)  # an exception escaping main() would be a traceback for the user
