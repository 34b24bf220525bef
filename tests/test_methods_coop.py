"""CoOp on the prompt mechanism: hand-built equivalences, training behaviour, cascade and cache."""
import pytest
import torch

from caspl_plugin.methods import CoOp, ZeroShotCLIP, cascade, get_method, get_preset
from caspl_plugin.prompts import PromptedCLIP

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


def test_logits_shape_and_context_shapes(clip, batch):
    images, _ = batch
    model = CoOp(clip, CLASSES, n_ctx=5)
    assert model(images).shape == (4, len(CLASSES))
    assert model.ctx.shape == (5, clip.text_width)
    assert abs(float(model.ctx.detach().std()) - 0.02) < 0.005
    assert CoOp(clip, CLASSES).ctx.shape == (16, clip.text_width)  # CoOp's default
    csc = CoOp(clip, CLASSES, n_ctx=3, csc=True)
    assert csc.ctx.shape == (len(CLASSES), 3, clip.text_width)
    assert csc(images).shape == (4, len(CLASSES))


@pytest.mark.parametrize("position, sentence", [
    ("end", "a photo of a {}."),
    ("middle", "a photo {} of a."),
    ("front", "{} a photo of a."),
])
def test_context_of_words_equals_the_hand_built_sentence(tiny_student, clip, batch, position, sentence):
    images, _ = batch
    model = CoOp(clip, CLASSES, ctx_init="a photo of a", class_position=position)
    assert model.n_ctx == 4 and torch.equal(model.ctx.detach(), clip.word_embeddings("a photo of a"))
    with torch.no_grad():
        text = sentence_features(tiny_student, [sentence.format(c) for c in CLASSES])
        assert (model.encode_classes() - text).abs().max() <= 1e-5
        assert (model(images) - hand_logits(tiny_student, images, text)).abs().max() <= 1e-4
        if position == "end":
            zero_shot = ZeroShotCLIP(clip, CLASSES, template="a photo of a {}.")
            assert (model(images) - zero_shot(images)).abs().max() <= 1e-5


@pytest.mark.parametrize("position, sentence", [("end", "{} {}."), ("front", "{1} {0}.")])
def test_class_specific_contexts_equal_per_class_sentences(tiny_student, clip, position, sentence):
    contexts = ["a photo of a", "a sketch of the", "a picture of my", "an image of one"]
    assert all(len(clip.tokenizer.encode(c)) == 4 for c in contexts)
    model = CoOp(clip, CLASSES, n_ctx=4, csc=True, class_position=position)
    with torch.no_grad():
        model.ctx.copy_(torch.stack([clip.word_embeddings(c) for c in contexts]))
        ours = model.encode_classes()
        text = sentence_features(tiny_student, [sentence.format(ctx, c) for ctx, c in zip(contexts, CLASSES)])
    assert (ours - text).abs().max() <= 1e-5


def test_ctx_init_fixes_the_context_length(clip):
    assert CoOp(clip, CLASSES, ctx_init="a_photo of a").n_ctx == 4
    assert CoOp(clip, CLASSES, n_ctx=4, ctx_init="a photo of a").n_ctx == 4
    with pytest.raises(ValueError, match=r"n_ctx=8 disagrees with ctx_init='a photo of a', which has 4 tokens"):
        CoOp(clip, CLASSES, n_ctx=8, ctx_init="a photo of a")
    with pytest.raises(ValueError, match="class_position must be one of"):
        CoOp(clip, CLASSES, class_position="left")
    with pytest.raises(ValueError, match="needs the template"):
        CoOp(clip, CLASSES, class_position="middle", template="a {} pet.")


def test_class_sets_switch_for_shared_context_only(clip):
    model = CoOp(clip, CLASSES, n_ctx=4)
    model.set_class_names(["tree", "car"])
    assert model.text_inputs().rows == 2
    csc = CoOp(clip, CLASSES, n_ctx=4, csc=True)
    with pytest.raises(ValueError, match="learned for 4 classes"):
        csc.set_class_names(["tree", "car"])


@pytest.mark.parametrize("csc", [False, True])
def test_gradients_reach_only_the_context_and_frozen_tensors_stay(clip, batch, csc):
    images, labels = batch
    model = CoOp(clip, CLASSES, n_ctx=4, csc=csc, boosting=frozen_boosting(clip))
    assert_gradients_reach_exactly(model, {"ctx"}, images, labels)
    assert_training_step_keeps_frozen(model, images, labels)


def test_loss_decreases_on_an_overfit_batch(tiny_student, clip):
    torch.manual_seed(0)
    assert_overfits(CoOp(clip, CLASSES, n_ctx=4), tiny_student, lr=0.01)


@pytest.mark.parametrize("position", ["end", "middle"])
def test_cascade_token_order(clip, position):
    model = cascade("coop", clip, CLASSES, frozen_boosting(clip, n_text=3), n_ctx=4, class_position=position)
    inputs = model.text_inputs()
    ctx, boost = inputs.positions["ctx"], inputs.positions["boosting"]
    first_class_token = torch.tensor([clip.tokenizer.encode(c)[0] for c in CLASSES])
    if position == "end":  # [SOS][ctx][boost][class . EOS]
        assert ctx.tolist() == [1, 2, 3, 4] and boost.tolist() == [5, 6, 7]
        assert torch.equal(inputs.token_ids[:, 8], first_class_token)
    else:  # [SOS][ctx 1st half][boost][class][ctx 2nd half][. EOS]
        assert ctx.shape == (len(CLASSES), 4) and boost.tolist() == [3, 4, 5]
        assert (ctx[:, :2] == torch.tensor([1, 2])).all()
        assert torch.equal(inputs.token_ids[:, 6], first_class_token)
        lengths = torch.tensor([len(clip.tokenizer.encode(c)) for c in CLASSES])
        assert torch.equal(ctx[:, 2], 6 + lengths)


def test_zero_token_boosting_group_gives_the_method_alone(clip, batch):
    images, _ = batch
    alone = CoOp(clip, CLASSES, n_ctx=4)
    empty = frozen_boosting(clip, n_text=0, n_vision=0)
    cascaded = CoOp(clip, CLASSES, n_ctx=4, boosting=empty)
    cascaded.load_state_dict(alone.state_dict())
    with torch.no_grad():
        assert torch.equal(alone(images), cascaded(images))
        assert (alone(images) - CoOp(clip, CLASSES, n_ctx=4, boosting=frozen_boosting(clip))(images)).abs().max() > 1e-3


def test_learnable_boosting_receives_gradients(clip, batch):
    images, labels = batch
    boosting = frozen_boosting(clip)
    model = CoOp(clip, CLASSES, n_ctx=4, boosting=boosting, learnable_boosting=True)
    assert_gradients_reach_exactly(model, {"ctx", "boosting.text", "boosting.vision"}, images, labels)


def test_eval_cache_is_used_and_refreshed(clip, batch, monkeypatch):
    assert CoOp.image_conditioned_text is False
    assert_eval_cache_is_fresh(CoOp(clip, CLASSES, n_ctx=4, boosting=frozen_boosting(clip)), *batch, monkeypatch)


def test_settings_rebuild_and_presets(clip):
    model = CoOp(clip, CLASSES, ctx_init="a photo of a", csc=True, class_position="front")
    rebuilt = CoOp(clip, CLASSES, **model.settings())
    assert rebuilt.settings() == model.settings() and rebuilt.ctx.shape == model.ctx.shape
    assert get_method("CoOp") is CoOp
    for name, expected_ctx in [("few_shot", 16), ("base2novel", 4), ("cross_dataset", 4), ("caspl_base2novel", 8)]:
        preset = get_preset("coop", name)
        assert CoOp(clip, CLASSES, **preset.model).n_ctx == expected_ctx
        assert {"lr", "epochs", "batch_size", "warmup_epochs", "warmup_lr"} <= preset.train.keys()
    caspl = get_preset("coop", "caspl_base2novel").train
    assert (caspl["lr"], caspl["epochs"], caspl["batch_size"]) == (0.002, 50, 32)
