"""Open vocabulary: a classifier ranks class names it never saw (caspl classify / export --class-names,
Classifier.with_class_names); torch and ONNX agree on them; class-specific context refuses."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from caspl_plugin.cli import main as caspl
from caspl_plugin.clip import create_clip
from caspl_plugin.inference import Classifier, save_classifier
from caspl_plugin.methods import get_method
from caspl_plugin.prompts import PromptedCLIP

TRAINED = ["red circle", "blue square", "green star"]
NEW = ["purple heart", "orange triangle", "yellow moon", "grey cloud"]


def _image(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    clip = PromptedCLIP(create_clip("toy-student"))
    torch.manual_seed(0)
    coop = get_method("coop")(clip, TRAINED, n_ctx=2, ctx_init="")
    csc = get_method("coop")(clip, TRAINED, n_ctx=2, ctx_init="", csc=True)
    paths = {"coop": folder / "coop.safetensors", "csc": folder / "csc.safetensors"}
    save_classifier(paths["coop"], coop)
    save_classifier(paths["csc"], csc)
    names = folder / "new.txt"
    names.write_text("\n".join(NEW) + "\n")
    images = [_image(folder / f"img{i}.png", i) for i in range(3)]
    return paths, names, images


def test_the_library_ranks_new_names_as_a_model_built_on_them(saved):
    paths, _, images = saved
    classifier = Classifier.load(paths["coop"])
    renamed = classifier.with_class_names(NEW)
    assert renamed.class_names == NEW and classifier.class_names == TRAINED  # a new classifier, the old one kept
    assert renamed.model.clip is classifier.model.clip  # the frozen CLIP is shared, not copied
    direct = get_method("coop")(classifier.model.clip, NEW, n_ctx=2, ctx_init="")
    with torch.no_grad():
        direct.ctx.copy_(classifier.model.ctx)
        expected = direct.eval()(renamed.load_images(images)).softmax(-1)
    for prediction, row in zip(renamed.predict(images, topk=4), expected):
        assert set(prediction.classes) == set(NEW)
        assert np.allclose(prediction.probabilities, sorted(row.tolist(), reverse=True), atol=1e-6)


def test_classify_and_export_rank_over_exactly_the_new_names_and_agree(saved, tmp_path, capsys):
    paths, names, images = saved
    assert caspl(["classify", "--model", str(paths["coop"]), "--class-names", str(names), "--topk", "3", "--json", *images]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    assert all({t["class"] for t in r["top"]} <= set(NEW) and len(r["top"]) == 3 for r in torch_result)

    onnx = tmp_path / "new.onnx"
    assert caspl(["export", "--model", str(paths["coop"]), "--class-names", str(names), "-o", str(onnx)]) == 0
    capsys.readouterr()
    assert caspl(["classify", "--model", str(onnx), "--topk", "3", "--json", *images]) == 0
    onnx_result = json.loads(capsys.readouterr().out)
    for ours, theirs in zip(torch_result, onnx_result):
        assert [t["class"] for t in ours["top"]] == [t["class"] for t in theirs["top"]]
        assert np.allclose([t["probability"] for t in ours["top"]], [t["probability"] for t in theirs["top"]], atol=1e-4)


def test_class_specific_context_and_onnx_files_refuse_new_names(saved, tmp_path, capsys):
    paths, names, images = saved
    with pytest.raises(ValueError, match="Class-specific context"):
        Classifier.load(paths["csc"]).with_class_names(NEW)
    assert caspl(["classify", "--model", str(paths["csc"]), "--class-names", str(names), images[0]]) == 2
    assert "Class-specific context" in capsys.readouterr().err
    onnx = tmp_path / "trained.onnx"
    assert caspl(["export", "--model", str(paths["coop"]), "-o", str(onnx)]) == 0
    capsys.readouterr()
    assert caspl(["classify", "--model", str(onnx), "--class-names", str(names), images[0]]) == 2
    err = capsys.readouterr().err
    assert "class features as constants" in err and "caspl export --class-names" in err
