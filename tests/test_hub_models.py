"""hf-hub:ORG/REPO names are accepted where open_clip takes them (config and weights from the hub's
cache); offline without a cache they fail with one clear line. The hub is replaced by a local tiny
model here (nothing can be downloaded)."""
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from caspl_plugin.clip import create_clip
from caspl_plugin.clip.factory import HubModelUnavailable
from caspl_plugin.clip.names import resolve_model_name
from caspl_plugin.inference import load_classifier, save_classifier
from caspl_plugin.methods import get_method
from caspl_plugin.prompts import PromptedCLIP

HUB = "hf-hub:example/tiny-clip"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """open_clip's hub reads answered by the tiny student config and a weights file in tmp_path."""
    from caspl_plugin.clip.names import register_package_configs

    register_package_configs()
    torch.manual_seed(0)
    reference = open_clip.create_model("caspl-tiny-student")
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    real_create, real_tokenizer = open_clip.create_model, open_clip.get_tokenizer

    def create_model(name, *args, **kwargs):
        if name != HUB:
            return real_create(name, *args, **kwargs)
        model = real_create("caspl-tiny-student", *args, **{k: v for k, v in kwargs.items() if k == "device"})
        model.load_state_dict(reference.state_dict())
        return model

    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name, *a, **k: real_tokenizer("caspl-tiny-student" if name == HUB else name))
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", lambda model_id, *a, **k: str(weights))
    return reference, weights


def test_hub_names_resolve_and_bad_ones_are_named():
    assert resolve_model_name(HUB) == HUB
    with pytest.raises(ValueError, match="hf-hub:ORG/REPO"):
        resolve_model_name("hf-hub:no-repo")


def test_a_hub_model_is_a_student_and_its_classifier_verifies_the_cached_weights(fake_hub, tmp_path):
    from caspl_plugin.artifacts.store import ArtifactError
    from caspl_plugin.clip.weights import IncompatibleWeightsError

    reference, weights = fake_hub
    backbone = create_clip(HUB)
    assert backbone.weights.kind == "hub" and backbone.weights.path == str(weights)
    clip = PromptedCLIP(backbone)
    texts = ["a photo of a cat.", "a photo of a dog."]
    model = get_method("zeroshot")(clip, ["cat", "dog"])
    with torch.no_grad():
        assert torch.allclose(model.encode_classes(), reference.encode_text(backbone.tokenizer(texts)), atol=1e-5)
    path = tmp_path / "zs.safetensors"
    save_classifier(path, model)
    assert load_classifier(path).class_names == ("cat", "dog")
    with open(weights, "ab") as handle:  # the hub cache's file changed since the classifier was saved
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="differ from the ones it was saved with"):
        load_classifier(path)
    with pytest.raises(IncompatibleWeightsError, match="brings its own weights"):
        create_clip(HUB, "openai")


def test_an_uncached_hub_model_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubModelUnavailable, match="run once online") as error:
        create_clip("hf-hub:example/not-cached")
    assert "\n" not in str(error.value)
