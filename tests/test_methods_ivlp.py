"""IVLP: independent deep text and vision prompts on the prompt mechanism."""
import pytest
import torch

from caspl_plugin.methods import IVLP, cascade, get_preset
from caspl_plugin.prompts import PromptedCLIP, PromptGroup, collect_tokens

from helpers_prompt_methods import (
    CLASSES, assert_eval_cache_is_fresh, assert_gradients_reach_exactly, assert_training_step_keeps_frozen,
    frozen_boosting, hand_logits, images_for, assert_overfits, sentence_features,
)


@pytest.fixture
def clip(tiny_student):
    return PromptedCLIP(tiny_student)


@pytest.fixture
def batch(tiny_student):
    return images_for(tiny_student, 4), torch.tensor([0, 1, 2, 3])


def test_shapes_init_and_depth_clamping(clip, batch):
    images, _ = batch
    model = IVLP(clip, CLASSES)  # defaults 4+4 at depth 9, clamped to the tiny encoders' 3 blocks
    assert model(images).shape == (4, len(CLASSES))
    spec = model.prompt_spec
    assert (spec.n_text, spec.n_vision, spec.depth_text, spec.depth_vision) == (4, 4, 3, 3)
    assert model.adapting.text.shape == (3, 4, clip.text_width)
    assert model.adapting.vision.shape == (3, 4, clip.vision_width)
    assert torch.equal(model.adapting.text[0].detach(), clip.word_embeddings("a photo of a"))
    random = IVLP(clip, CLASSES, n_ctx_text=6)  # more than 4 tokens: random, as the authors do
    assert random.template == "{}." and abs(float(random.adapting.text.detach()[0].std()) - 0.02) < 0.005


@pytest.mark.parametrize("n_ctx_text", [4, 3, 2])
def test_word_tokens_at_depth_one_equal_the_plain_sentence(tiny_student, clip, batch, n_ctx_text):
    """The first n tokens of "a photo of a" are the prompt, the other words stay fixed text."""
    images, _ = batch
    model = IVLP(clip, CLASSES, n_ctx_text=n_ctx_text, n_ctx_vision=0, depth_text=1)
    with torch.no_grad():
        text = sentence_features(tiny_student, [f"a photo of a {c}." for c in CLASSES])
        assert (model.encode_classes() - text).abs().max() <= 1e-5
        assert (model(images) - hand_logits(tiny_student, images, text)).abs().max() <= 1e-4
        deeper = IVLP(clip, CLASSES, n_ctx_text=n_ctx_text, n_ctx_vision=0, depth_text=2)
        assert (deeper.encode_classes() - text).abs().max() > 1e-3  # random deep tokens take over


def test_init_words_must_fit(clip):
    with pytest.raises(ValueError, match="has 2 tokens"):
        IVLP(clip, CLASSES, n_ctx_text=3, ctx_init="a photo")


def test_vision_side_is_the_prompted_encoder_with_the_group(tiny_student, clip, batch):
    images, _ = batch
    boosting = frozen_boosting(clip)
    model = IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=3, depth_text=2, depth_vision=3, boosting=boosting)
    with torch.no_grad():
        tokens = collect_tokens([boosting, model.adapting], "vision")
        assert torch.equal(model.encode_image(images), clip.encode_image(images, tokens))
        assert (model.encode_image(images) - tiny_student.model.encode_image(images)).abs().max() > 1e-3
        without_deep = collect_tokens([boosting], "vision") + [model.adapting.vision_tokens()]
        without_deep[-1] = type(without_deep[-1])("ivlp", "adapting", without_deep[-1].layers[:1])
        assert (model.encode_image(images) - clip.encode_image(images, without_deep)).abs().max() > 1e-4


def test_gradients_training_step_and_overfit(tiny_student, clip, batch):
    images, labels = batch
    model = IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=2, boosting=frozen_boosting(clip))
    assert_gradients_reach_exactly(model, {"adapting.text", "adapting.vision"}, images, labels)
    model.loss(images, labels)[0].backward()
    assert (model.adapting.text.grad.abs().sum(dim=(1, 2)) > 0).all()  # every layer's tokens are used
    assert (model.adapting.vision.grad.abs().sum(dim=(1, 2)) > 0).all()
    model.zero_grad(set_to_none=True)
    assert_training_step_keeps_frozen(model, images, labels)
    torch.manual_seed(0)
    assert_overfits(IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=2), tiny_student, lr=0.002)


def test_cascade_order_zero_tokens_and_learnable_boosting(clip, batch):
    images, labels = batch
    model = cascade("ivlp", clip, CLASSES, frozen_boosting(clip, n_text=3), n_ctx_text=4)
    inputs = model.text_inputs()
    assert inputs.positions["ivlp"].tolist() == [1, 2, 3, 4] and inputs.positions["boosting"].tolist() == [5, 6, 7]
    first_class_token = torch.tensor([clip.tokenizer.encode(c)[0] for c in CLASSES])
    assert torch.equal(inputs.token_ids[:, 8], first_class_token)
    fixed_words = cascade("ivlp", clip, CLASSES, frozen_boosting(clip, n_text=3), n_ctx_text=2)
    assert fixed_words.text_inputs().positions["boosting"].tolist() == [3, 4, 5]  # [SOS][a photo][boost] of a ...
    alone = IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=2)
    empty = IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=2, boosting=frozen_boosting(clip, n_text=0, n_vision=0))
    empty.load_state_dict(alone.state_dict())
    with torch.no_grad():
        assert torch.equal(alone(images), empty(images))
    learnable = IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=2, boosting=frozen_boosting(clip), learnable_boosting=True)
    expected = {"adapting.text", "adapting.vision", "boosting.text", "boosting.vision"}
    assert_gradients_reach_exactly(learnable, expected, images, labels)


def test_eval_cache_is_used_and_refreshed(clip, batch, monkeypatch):
    model = IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=2, boosting=frozen_boosting(clip))
    assert_eval_cache_is_fresh(model, *batch, monkeypatch)


def test_group_building_is_overridable(clip):
    class ZeroDeepIVLP(IVLP):
        method = "zero_deep_ivlp"  # not registered: a subclass only changes how the group is built

        def build_prompt_group(self, text_init):
            group = super().build_prompt_group(text_init)
            with torch.no_grad():
                group.text[1:].zero_()
            return group

    model = ZeroDeepIVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=2)
    assert isinstance(model.adapting, PromptGroup) and model.adapting.name == "zero_deep_ivlp"
    assert model.own_groups() == [model.adapting]
    assert not model.adapting.text[1:].any() and model.adapting.text[0].any()
    assert "zero_deep_ivlp" in model.text_inputs().positions


def test_settings_rebuild_and_presets(clip):
    model = IVLP(clip, CLASSES, n_ctx_text=2, n_ctx_vision=3, depth_text=2, depth_vision=1, template="{}, a pet.")
    assert model.template == "of a {}, a pet."
    rebuilt = IVLP(clip, CLASSES, **model.settings())
    assert rebuilt.settings() == model.settings() and rebuilt.template == model.template
    assert rebuilt.adapting.text.shape == model.adapting.text.shape
    assert rebuilt.adapting.vision.shape == model.adapting.vision.shape
    expected = {"base2novel": (4, 9, 0.0025, 20), "base2novel_maple": (2, 12, 0.0035, 5), "caspl_base2novel": (8, 12, 0.0025, 20)}
    for name, (n, depth, lr, epochs) in expected.items():
        preset = get_preset("ivlp", name)
        assert (preset.model["n_ctx_text"], preset.model["depth_text"], preset.train["lr"], preset.train["epochs"]) == (n, depth, lr, epochs)
        assert IVLP(clip, CLASSES, **preset.model).prompt_spec.n_vision == n
