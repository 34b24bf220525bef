"""Classifier artifacts: round trip for every method (with and without boosting), `caspl classify`,
and the error cases (bad images, mismatched artifacts, unknown methods)."""
import pytest
import torch

from caspl_plugin.artifacts.store import ArtifactError, load_artifact, save_artifact
from caspl_plugin.boosting import BoostingConfig, make_boosting_group
from caspl_plugin.cli import main as caspl
from caspl_plugin.inference import Classifier, load_classifier, save_classifier
from caspl_plugin.methods import get_method, list_methods
from caspl_plugin.prompts import PromptedCLIP

CLASSES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def tiny_from_file(tiny_student, tmp_path_factory):
    """The tiny student loaded from a weights file, so a reload gets the same CLIP."""
    from safetensors.torch import save_file

    from caspl_plugin.clip import create_clip

    path = tmp_path_factory.mktemp("weights") / "tiny-student.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_student.model.state_dict().items()}, str(path))
    return create_clip("caspl-tiny-student", str(path))


def _perturb(model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.learnable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("method", ["zeroshot", "coop", "cocoop", "ivlp", "maple", "promptsrc"])
@pytest.mark.parametrize("boosted", [False, True])
def test_round_trip_gives_the_same_logits(method, boosted, tiny_from_file, tmp_path):
    assert method in list_methods()
    clip = PromptedCLIP(tiny_from_file)
    group = make_boosting_group(clip, BoostingConfig(2, 2, 2, 2), learnable=False) if boosted else None
    kwargs = {"n_ctx": 2, "ctx_init": ""} if method in ("coop", "cocoop") else {}
    model = get_method(method)(clip, CLASSES, boosting=group, **kwargs)
    _perturb(model)
    model.eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images)
    path = tmp_path / "clf.safetensors"
    save_classifier(path, model)
    loaded = load_classifier(path)
    assert type(loaded) is type(model) and loaded.class_names == model.class_names
    assert (loaded.boosting is not None) == boosted
    with torch.no_grad():
        assert torch.allclose(loaded(images), expected, atol=1e-5)


@pytest.fixture
def saved_coop(tiny_from_file, tmp_path):
    clip = PromptedCLIP(tiny_from_file)
    model = get_method("coop")(clip, CLASSES, n_ctx=2, boosting=make_boosting_group(clip, BoostingConfig(2, 2, 1, 1), learnable=False))
    path = tmp_path / "coop.safetensors"
    save_classifier(path, model)
    return path


def _png(path, seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def test_classify_cli_prints_topk(saved_coop, tmp_path, capsys):
    images = [_png(tmp_path / "a.png", 0), _png(tmp_path / "b.png", 1)]
    assert caspl(["classify", "--model", str(saved_coop), "--topk", "2", *map(str, images)]) == 0
    out = capsys.readouterr().out
    assert "coop on caspl-tiny-student, 3 classes, with boosting prompts" in out
    assert out.count("%") == 4 and "a.png" in out and "b.png" in out
    predictions = Classifier.load(saved_coop).predict([str(p) for p in images], topk=3)
    assert all(abs(sum(p.probabilities) - 1) < 1e-5 for p in predictions)
    assert sorted(predictions[0].classes) == sorted(CLASSES)


def test_classify_errors(saved_coop, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no image here")
    assert caspl(["classify", "--model", str(saved_coop), str(broken)]) == 2
    assert "Cannot read image" in capsys.readouterr().err
    assert caspl(["classify", "--model", str(saved_coop), str(tmp_path / "missing.png")]) == 2
    assert "Image not found" in capsys.readouterr().err

    tensors, meta = load_artifact(saved_coop)
    save_artifact(tmp_path / "unknown.safetensors", tensors, {**meta, "method": "coopp"})
    with pytest.raises(ArtifactError, match="Unknown method 'coopp'.*Did you mean coop"):
        load_classifier(tmp_path / "unknown.safetensors")
    save_artifact(tmp_path / "wide.safetensors", tensors, {**meta, "student": {**meta["student"], "text_width": 512}})
    with pytest.raises(ArtifactError, match=r"metadata says \[1, 2, 512\].*student.text_width"):
        load_classifier(tmp_path / "wide.safetensors")
    save_artifact(tmp_path / "other.safetensors", tensors, {**meta, "settings": {**meta["settings"], "n_ctx": 5}})
    with pytest.raises(ArtifactError, match=r"do not match method 'coop'.*artifact \[\(2, 64\)\].*model \[\(5, 64\)\]"):
        load_classifier(tmp_path / "other.safetensors")
    boosting = load_artifact(saved_coop)[1]["format"]
    assert boosting == "caspl-classifier"
    with pytest.raises(ArtifactError):
        load_classifier(tmp_path / "broken.png")
