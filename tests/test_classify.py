"""`caspl classify`: every image checked before the model is loaded, unreadable ones reported while
the others are still classified (exit != 0), `--json`; the onnxruntime path runs without torch and
its numpy preprocessing equals the torchvision eval transform."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from caspl_plugin.cli import classify as classify_module
from caspl_plugin.cli import main as caspl
from caspl_plugin.data.unlabeled import eval_transform
from caspl_plugin.export.preprocess import eval_pixels, open_image
from caspl_plugin.inference import Classifier, save_classifier
from caspl_plugin.methods import get_method
from caspl_plugin.prompts import PromptedCLIP

CLASSES = ["red circle", "blue square", "green star"]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _png(path, size=(40, 40), seed=0, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (size[1], size[0]) + ((channels,) if channels else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return str(path)


@pytest.mark.parametrize("size", [(40, 40), (37, 91), (300, 17), (32, 32), (33, 32), (10, 12)])
@pytest.mark.parametrize("target", [32, 224])
def test_numpy_preprocessing_equals_the_torchvision_eval_transform(size, target, tmp_path):
    for mode in ("RGB", "RGBA", "L"):
        image = open_image(_png(tmp_path / f"x-{mode}.png", size, seed=size[0], mode=mode))
        expected = eval_transform(target, MEAN, STD)(image).numpy()
        got = eval_pixels(image, target, MEAN, STD)
        assert got.shape == expected.shape == (3, target, target) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-6


@pytest.fixture(scope="module")
def coop_classifier(tmp_path_factory):
    from safetensors.torch import save_file

    from caspl_plugin.clip import create_clip

    folder = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    weights = folder / "tiny-student.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("caspl-tiny-student").model.state_dict().items()}, str(weights))
    model = get_method("coop")(PromptedCLIP(create_clip("caspl-tiny-student", str(weights))), CLASSES, n_ctx=2, ctx_init="")
    path = folder / "coop.safetensors"
    save_classifier(path, model)
    return path


def test_unreadable_images_are_reported_and_the_others_classified(coop_classifier, tmp_path, capsys, monkeypatch):
    good = [_png(tmp_path / "a.png", seed=1), _png(tmp_path / "b.png", (50, 30), seed=2)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    missing = str(tmp_path / "missing.png")
    loaded_after = []
    real_load = classify_module.load_model

    def load_model(args):  # records what was already reported when the model is loaded
        loaded_after.append(capsys.readouterr().err)
        return real_load(args)

    monkeypatch.setattr(classify_module, "load_model", load_model)
    argv = ["classify", "--topk", "2", "--model", str(coop_classifier), good[0], str(broken), missing, good[1]]
    assert caspl(argv) == 2
    captured = capsys.readouterr()
    assert "Cannot read image" in loaded_after[0] and "Image not found" in loaded_after[0]  # checked before loading
    assert f"Cannot read image {broken}" in loaded_after[0] and f"Image not found: {missing}" in loaded_after[0]
    assert "2 of 4 image(s) could not be read" in captured.err
    assert good[0] in captured.out and good[1] in captured.out and captured.out.count("%") == 4

    assert caspl(["classify", "--json", "--topk", "3", *argv[3:]]) == 2
    document = json.loads(capsys.readouterr().out)
    assert [entry["image"] for entry in document] == [good[0], str(broken), missing, good[1]]
    assert set(document[1]) == {"image", "error"} and "Cannot read image" in document[1]["error"]
    assert set(document[2]) == {"image", "error"} and "Image not found" in document[2]["error"]
    expected = Classifier.load(coop_classifier).predict(good, topk=3)
    for entry, prediction in zip((document[0], document[3]), expected):
        assert [t["class"] for t in entry["top"]] == prediction.classes
        assert np.allclose([t["probability"] for t in entry["top"]], prediction.probabilities, atol=1e-6)
        assert abs(sum(t["probability"] for t in entry["top"]) - 1) < 1e-5


def test_no_readable_image_never_loads_the_model(tmp_path, capsys, monkeypatch):
    def load_model(args):
        raise AssertionError("the model was loaded although no image is readable")

    monkeypatch.setattr(classify_module, "load_model", load_model)
    assert caspl(["classify", "--json", "--model", "whatever.onnx", str(tmp_path / "none.png")]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{"image": str(tmp_path / "none.png"), "error": f"Image not found: {tmp_path / 'none.png'}"}]


def _linear_onnx(path, image_size, weights, props=True):
    """A hand-built classifier graph (flatten + MatMul) with our metadata: runs without torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if props:  # the metadata of an export, sealed with its digest as `caspl export` does
        from caspl_plugin.export.integrity import DIGEST_KEY, onnx_digest, parse_onnx_bytes

        meta = {"format": "caspl-onnx-classifier", "format_version": "2", "method": "coop", "settings": "{}",
                "class_names": json.dumps(CLASSES), "image_size": str(image_size), "mean": json.dumps(MEAN),
                "std": json.dumps(STD), "student": json.dumps({"backbone": "hand-made"}), "boosting": "false",
                "boosting_sha256": "", "quantization": "none", "library_version": "test", "input": "images",
                "output": "logits"}
        for key, value in meta.items():
            model.metadata_props.add(key="caspl." + key, value=value)
        model.metadata_props.add(key=DIGEST_KEY, value=onnx_digest(parse_onnx_bytes(model.SerializeToString())))
    onnx.save(model, str(path))
    return str(path)


def test_onnx_classify_runs_without_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    size = 16
    weights = np.random.default_rng(0).normal(size=(3 * size * size, len(CLASSES))).astype(np.float32) * 0.05
    model_path = _linear_onnx(tmp_path / "linear.onnx", size, weights)
    images = [_png(tmp_path / "a.png", (40, 24), seed=3), _png(tmp_path / "b.png", (20, 33), seed=4)]
    script = (
        "import json, sys\n"
        "from caspl_plugin.cli import main\n"
        f"rc = main(['classify', '--json', '--topk', '3', '--model', {model_path!r}, *{images!r}, {str(tmp_path / 'gone.png')!r}])\n"
        "print('TORCH_LOADED=' + str('torch' in sys.modules), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "TORCH_LOADED=False" in done.stderr
    document = json.loads(done.stdout)
    assert "Image not found" in document[2]["error"]
    for entry, image in zip(document[:2], images):
        logits = eval_transform(size, MEAN, STD)(open_image(image)).numpy().reshape(-1) @ weights
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        order = np.argsort(-probs)
        assert [t["class"] for t in entry["top"]] == [CLASSES[i] for i in order]
        assert np.allclose([t["probability"] for t in entry["top"]], probs[order], atol=1e-5)


def test_onnx_classify_refuses_weights_flags(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model_path = _linear_onnx(tmp_path / "linear.onnx", 8, np.zeros((3 * 8 * 8, 3), dtype=np.float32))
    image = _png(tmp_path / "a.png")
    assert caspl(["classify", "--model", model_path, "--weights", "random", image]) == 2
    assert "--weights apply to .safetensors classifiers" in capsys.readouterr().err
    assert caspl(["classify", "--model", model_path, image]) == 0
    assert "coop on hand-made, 3 classes (ONNX, fp32)" in capsys.readouterr().out
    no_meta = _linear_onnx(tmp_path / "plain.onnx", 8, np.zeros((3 * 8 * 8, 3), dtype=np.float32), props=False)
    assert caspl(["classify", "--model", no_meta, image]) == 2
    assert "not a caspl classifier export" in capsys.readouterr().err
