"""ONNX export (`caspl export`, caspl_plugin.export): for CoOp, IVLP, MaPLe and PromptSRC with and
without boosting the onnxruntime logits equal PyTorch's, the metadata round-trips and
`caspl classify` gives the same answer on the .onnx as on the .safetensors classifier; CoCoOp,
int8, bad files and missing extras behave as documented. Each configuration is exported once
(module-scoped fixture, through the CLI)."""
import hashlib
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from caspl_plugin import __version__
from caspl_plugin.boosting import BoostingConfig, make_boosting_group
from caspl_plugin.cli import main as caspl
from caspl_plugin.export import FORMAT, ExportError, OnnxClassifier, read_metadata
from caspl_plugin.export.onnx_export import export_model
from caspl_plugin.inference import load_classifier, save_classifier
from caspl_plugin.methods import get_method
from caspl_plugin.prompts import PromptedCLIP

CLASSES = ["red circle", "blue square", "green star", "yellow heart"]
BOOSTING_SHA = "ab" * 32
CONFIGS = [(m, b) for m in ("coop", "ivlp", "maple", "promptsrc") for b in (False, True)]


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    """The tiny student saved to a weights file, so every reload gets the same CLIP."""
    from safetensors.torch import save_file

    from caspl_plugin.clip import create_clip

    torch.manual_seed(0)
    backbone = create_clip("caspl-tiny-student")
    path = tmp_path_factory.mktemp("weights") / "tiny-student.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(path))
    return path


def build_model(student_file, method, boosted, classes=CLASSES):
    from caspl_plugin.clip import create_clip

    clip = PromptedCLIP(create_clip("caspl-tiny-student", str(student_file)))
    group = None
    if boosted:
        group = make_boosting_group(clip, BoostingConfig(2, 3, 2, 2, ctx_init=""), learnable=False,
                                    generator=torch.Generator().manual_seed(3))
        group.artifact_sha256 = BOOSTING_SHA
    kwargs = {"n_ctx": 2, "ctx_init": ""} if method in ("coop", "cocoop") else {}
    model = get_method(method)(clip, classes, boosting=group, **kwargs)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # trained-looking prompts: far from their init, so a misplaced one shows
        for p in model.learnable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.eval()


def write_pngs(folder, count=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 40), (29, 53), (64, 33)][:count]):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


class Exports:
    """Each configuration built, saved and exported (`caspl export`) once per module, on first use."""

    def __init__(self, student_file, tmp_path_factory):
        self.student_file, self.tmp_path_factory, self.done = student_file, tmp_path_factory, {}

    def get(self, method, boosted):
        if (method, boosted) not in self.done:
            folder = self.tmp_path_factory.mktemp(f"{method}-{'boosted' if boosted else 'alone'}")
            model = build_model(self.student_file, method, boosted)
            classifier = folder / "clf.safetensors"
            save_classifier(classifier, model)
            onnx_path = folder / "clf.onnx"
            assert caspl(["export", "--model", str(classifier), "-o", str(onnx_path)]) == 0
            self.done[method, boosted] = {"method": method, "boosted": boosted, "model": model,
                                          "classifier": classifier, "onnx": onnx_path, "folder": folder}
        return self.done[method, boosted]


@pytest.fixture(scope="module")
def exports(student_file, tmp_path_factory):
    return Exports(student_file, tmp_path_factory)


@pytest.fixture(params=CONFIGS, ids=[f"{m}-{'boosted' if b else 'alone'}" for m, b in CONFIGS])
def exported(request, exports):
    return exports.get(*request.param)


def test_exported_logits_equal_pytorch(exported):
    runtime = OnnxClassifier(exported["onnx"])
    model = load_classifier(exported["classifier"])
    for batch in (1, 5):  # the batch axis is dynamic
        images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(images).numpy()
        got = runtime.logits(images.numpy())
        assert got.shape == (batch, len(CLASSES))
        assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected).max() > 1  # real logits, not a degenerate graph


def test_metadata_round_trip(exported):
    meta = read_metadata(exported["onnx"])
    model = exported["model"]
    assert meta["format"] == FORMAT and meta["format_version"] == "2"
    assert meta["method"] == exported["method"] and meta["class_names"] == CLASSES
    assert meta["image_size"] == 32
    assert meta["mean"] == pytest.approx(list(model.clip.mean)) and meta["std"] == pytest.approx(list(model.clip.std))
    assert meta["student"]["backbone"] == "caspl-tiny-student"
    assert meta["student"]["vision_width"] == model.clip.vision_width
    assert meta["boosting"] is exported["boosted"]
    assert meta["boosting_sha256"] == (BOOSTING_SHA if exported["boosted"] else "")
    assert meta["settings"] == json.loads(json.dumps(model.settings()))
    assert meta["library_version"] == __version__ and meta["quantization"] == "none"
    assert meta["source_sha256"] == hashlib.sha256(exported["classifier"].read_bytes()).hexdigest()


def _classify_json(model_path, images, capsys):
    capsys.readouterr()
    assert caspl(["classify", "--json", "--topk", "3", "--model", str(model_path), *images]) == 0
    return json.loads(capsys.readouterr().out)


def test_classify_onnx_equals_safetensors(exported, capsys):
    images = write_pngs(exported["folder"])
    from_onnx = _classify_json(exported["onnx"], images, capsys)
    from_torch = _classify_json(exported["classifier"], images, capsys)
    assert [r["image"] for r in from_onnx] == images == [r["image"] for r in from_torch]
    for a, b in zip(from_onnx, from_torch):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert np.allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=1e-4)
    # the text output names the runtime and shows the same lines
    capsys.readouterr()
    assert caspl(["classify", "--model", str(exported["onnx"]), images[0]]) == 0
    out = capsys.readouterr().out
    assert f"{exported['method']} on caspl-tiny-student, 4 classes" in out and "(ONNX, fp32)" in out
    assert ("with boosting prompts" in out) is exported["boosted"]


def test_export_then_classify_cli_end_to_end(exports):
    """`caspl export` then `caspl classify --json` on the .onnx (a fresh process, without torch): the same
    top class and probability as `caspl classify --json` on the .safetensors."""
    import subprocess

    case = exports.get("promptsrc", True)
    image = write_pngs(case["folder"], 1)

    def classify(model_path):
        done = subprocess.run([sys.executable, "-m", "caspl_plugin.cli", "classify", "--json", "--model", str(model_path), *image],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)[0]["top"][0]

    onnx_top, torch_top = classify(case["onnx"]), classify(case["classifier"])
    assert onnx_top["class"] == torch_top["class"]
    assert abs(onnx_top["probability"] - torch_top["probability"]) <= 1e-3


def test_int8_export_agrees_and_is_marked(student_file, tmp_path, capsys):
    model = build_model(student_file, "ivlp", True)
    classifier = tmp_path / "clf.safetensors"
    save_classifier(classifier, model)
    path = tmp_path / "clf-int8.onnx"
    assert caspl(["export", "--model", str(classifier), "-o", str(path), "--quantize", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
    runtime = OnnxClassifier(path)
    assert runtime.metadata["quantization"] == "int8" and "(ONNX, int8)" in runtime.description
    ops = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(images).numpy()
    got = runtime.logits(images.numpy())
    scale = float(model.clip.logit_scale)
    cosine_error = np.abs(got - expected).max() / scale
    assert 0 < cosine_error < 0.05  # quantised (not bit-equal), yet each cosine within 0.05 of fp32's (range 2)


def test_cocoop_refused_with_the_reason(student_file, tmp_path, capsys):
    model = build_model(student_file, "cocoop", True)
    with pytest.raises(ExportError, match="depend on each image"):
        export_model(model, tmp_path / "direct.onnx")
    classifier = tmp_path / "cocoop.safetensors"
    save_classifier(classifier, model)
    assert caspl(["export", "--model", str(classifier), "-o", str(tmp_path / "cocoop.onnx")]) == 2
    err = capsys.readouterr().err
    assert "CoCoOp" in err or "cocoop" in err
    assert "depend on each image" in err and "caspl classify" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cocoop.safetensors"]  # nothing written


def test_bad_onnx_files_are_refused_clearly(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    with pytest.raises(ExportError, match="not a readable ONNX model"):
        OnnxClassifier(corrupt)
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(ExportError, match="not a caspl classifier export"):
        read_metadata(foreign)
    image = write_pngs(tmp_path, 1)
    for path, message in ((corrupt, "not a readable ONNX model"), (foreign, "not a caspl classifier export")):
        assert caspl(["classify", "--model", str(path), *image]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert caspl(["classify", "--model", str(tmp_path / "missing.onnx"), *image]) == 2
    assert "Model not found" in capsys.readouterr().err


def test_export_without_the_extras_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    assert caspl(["export", "--model", str(tmp_path / "clf.safetensors"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and 'pip install "caspl-plugin[export]"' in err


def test_export_output_checks(student_file, tmp_path, capsys):
    assert caspl(["export", "--model", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "Classifier not found" in capsys.readouterr().err
    (tmp_path / "folder.onnx").mkdir()
    assert caspl(["export", "--model", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "folder.onnx")]) == 2
    assert "is a folder; expected the path of a file" in capsys.readouterr().err
