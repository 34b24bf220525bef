"""CoCoOp: per-image context equals CoOp with that image's shifted context, in one batched pass."""
import pytest
import torch
import torch.nn.functional as F

from caspl_plugin.methods import CoCoOp, CoOp, cascade, get_preset
from caspl_plugin.prompts import PromptedCLIP, collect_tokens

from helpers_prompt_methods import (
    CLASSES, assert_gradients_reach_exactly, assert_training_step_keeps_frozen, frozen_boosting, images_for,
    assert_overfits,
)

META_NET = {"meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias"}


@pytest.fixture
def clip(tiny_student):
    return PromptedCLIP(tiny_student)


@pytest.fixture
def batch(tiny_student):
    return images_for(tiny_student, 3), torch.tensor([0, 2, 3])


def _coop_with_context(clip, context, boosting=None):
    coop = CoOp(clip, CLASSES, n_ctx=context.shape[0], boosting=boosting)
    with torch.no_grad():
        coop.ctx.copy_(context)
    return coop


def test_shapes_defaults_and_meta_net(clip, batch):
    images, _ = batch
    model = CoCoOp(clip, CLASSES)
    assert model(images).shape == (3, len(CLASSES))
    assert model.n_ctx == 4 and torch.equal(model.ctx.detach(), clip.word_embeddings("a photo of a"))
    assert model.meta_net.linear1.in_features == clip.embed_dim
    assert model.meta_net.linear1.out_features == clip.embed_dim // 16
    assert model.meta_net.linear2.out_features == clip.text_width
    assert CoCoOp.image_conditioned_text is True


def test_zeroed_meta_net_equals_coop(clip, batch):
    images, _ = batch
    model = CoCoOp(clip, CLASSES, n_ctx=3, ctx_init="")
    with torch.no_grad():
        model.meta_net.linear2.weight.zero_()
        model.meta_net.linear2.bias.zero_()
        assert (model(images) - _coop_with_context(clip, model.ctx)(images)).abs().max() <= 1e-5


@pytest.mark.parametrize("with_boosting", [False, True])
def test_each_image_sees_coop_with_its_shifted_context(clip, batch, with_boosting):
    """Image b's logits equal CoOp's with context ctx + meta_net(normalised boosted feature of b);
    the boosting tokens are not shifted."""
    images, _ = batch
    boosting = frozen_boosting(clip) if with_boosting else None
    torch.manual_seed(0)
    model = CoCoOp(clip, CLASSES, n_ctx=3, ctx_init="", boosting=boosting)
    with torch.no_grad():
        features = clip.encode_image(images, collect_tokens([boosting] if boosting else [], "vision"))
        bias = model.meta_net(F.normalize(features, dim=-1))
        assert bias.abs().max() > 1e-3
        logits = model(images)
        for b in range(len(images)):
            coop = _coop_with_context(clip, model.ctx + bias[b], boosting)
            assert (logits[b] - coop(images[b:b + 1])[0]).abs().max() <= 1e-4
        # the bias matters: the unshifted context gives other logits
        assert (logits - _coop_with_context(clip, model.ctx, boosting)(images)).abs().max() > 1e-3


def _saved_bytes_and_grads(model, images, labels):
    """Bytes autograd keeps for the backward pass, and the gradients it then gives."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model.loss(images, labels)
    loss.backward()
    return sum(storages.values()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_chunked_text_passes_equal_one_pass_and_keep_less_for_backward(clip, batch):
    images, labels = batch
    torch.manual_seed(0)
    model = CoCoOp(clip, CLASSES, n_ctx=2, ctx_init="")
    with torch.no_grad():
        one_pass = model(images)
    saved_one_pass, grads_one_pass = _saved_bytes_and_grads(model, images, labels)
    model.max_text_batch = len(CLASSES)  # one image per pass, recomputed in the backward pass
    with torch.no_grad():
        assert (model(images) - one_pass).abs().max() <= 1e-5
    saved_chunked, grads_chunked = _saved_bytes_and_grads(model, images, labels)
    assert all((grads_chunked[n] - g).abs().max() <= 1e-5 * max(1.0, g.abs().max()) for n, g in grads_one_pass.items())
    assert saved_chunked < 0.5 * saved_one_pass
    with pytest.raises(ValueError, match="max_text_batch"):
        CoCoOp(clip, CLASSES, max_text_batch=0)


def test_gradients_training_step_and_overfit(tiny_student, clip, batch):
    images, labels = batch
    torch.manual_seed(0)  # the tiny meta-net has 2 hidden units: a seed where ReLU is not dead on the batch
    model = CoCoOp(clip, CLASSES, boosting=frozen_boosting(clip))
    assert_gradients_reach_exactly(model, {"ctx"} | META_NET, images, labels)
    assert_training_step_keeps_frozen(model, images, labels)
    torch.manual_seed(0)
    assert_overfits(CoCoOp(clip, CLASSES, n_ctx=4, ctx_init=""), tiny_student, lr=0.2)


def test_cascade_order_zero_tokens_and_learnable_boosting(clip, batch):
    images, labels = batch
    model = cascade("cocoop", clip, CLASSES, frozen_boosting(clip, n_text=2), n_ctx=3, ctx_init="")
    inputs = model.text_inputs()
    assert inputs.positions["ctx"].tolist() == [1, 2, 3] and inputs.positions["boosting"].tolist() == [4, 5]
    torch.manual_seed(1)
    alone = CoCoOp(clip, CLASSES, n_ctx=3, ctx_init="")
    empty = CoCoOp(clip, CLASSES, n_ctx=3, ctx_init="", boosting=frozen_boosting(clip, n_text=0, n_vision=0))
    empty.load_state_dict(alone.state_dict())
    with torch.no_grad():
        assert torch.equal(alone(images), empty(images))
    torch.manual_seed(0)
    learnable = CoCoOp(clip, CLASSES, boosting=frozen_boosting(clip), learnable_boosting=True)
    assert_gradients_reach_exactly(learnable, {"ctx", "boosting.text", "boosting.vision"} | META_NET, images, labels)


def test_text_features_are_per_image_and_never_cached(clip, batch):
    images, labels = batch
    model = CoCoOp(clip, CLASSES).eval()
    with pytest.raises(RuntimeError, match="depend on the image"):
        model.class_features()
    with torch.no_grad():
        per_image = model.conditioned_class_features(model.encode_image(images))
        first = model(images)
    assert per_image.shape == (3, len(CLASSES), clip.embed_dim)
    assert (per_image[0] - per_image[1]).abs().max() > 1e-4
    assert_training_step_keeps_frozen(model, images, labels, lr=0.05)
    with torch.no_grad():
        after = model(images)
        fresh = clip.logits(model.encode_image(images), model.conditioned_class_features(model.encode_image(images)))
    assert torch.equal(after, fresh) and (after - first).abs().max() > 1e-4


def test_settings_rebuild_and_presets(clip):
    model = CoCoOp(clip, CLASSES, n_ctx=5, ctx_init="", max_text_batch=40)
    rebuilt = CoCoOp(clip, CLASSES, **model.settings())
    assert rebuilt.settings() == model.settings()
    assert [p.shape for p in rebuilt.parameters() if p.requires_grad] == [p.shape for p in model.learnable_parameters()]
    for name, expected_ctx in [("base2novel", 4), ("cross_dataset", 4), ("caspl_base2novel", 8), ("caspl_cross_dataset", 4)]:
        preset = get_preset("cocoop", name)
        assert CoCoOp(clip, CLASSES, **preset.model).n_ctx == expected_ctx
        assert (preset.train["lr"], preset.train["epochs"], preset.train["batch_size"]) == (0.002, 10, 1)
