"""PromptSRC on the prompt mechanism: regularisers by hand, GPA, anchors, training and the cascade."""
import math

import pytest
import torch

from caspl_plugin.boosting import BoostingConfig, make_boosting_group
from caspl_plugin.data.catalog import IMAGENET_TEMPLATES
from caspl_plugin.engine import make_optimizer, training_step
from caspl_plugin.methods import GaussianPromptAggregation, PromptSRC, get_method, get_preset
from caspl_plugin.methods.promptsrc import FEW_SHOT_GPA, gaussian_weights
from caspl_plugin.prompts import PromptedCLIP, PromptGroup, PromptSpec

CLASSES = ["red circle", "blue square", "green_triangle"]
GEOMETRY = {"n_ctx_text": 4, "n_ctx_vision": 2, "depth_text": 2, "depth_vision": 3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not compete with parallel test runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip(tiny_student):
    return PromptedCLIP(tiny_student)


def _images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _boosting(clip, **geometry):
    config = BoostingConfig(**{"n_text": 2, "n_vision": 3, "depth_text": 2, "depth_vision": 3, "ctx_init": "", **geometry})
    return make_boosting_group(clip, config, learnable=False, generator=torch.Generator().manual_seed(5))


def _model(clip, seed=0, **kwargs):
    torch.manual_seed(seed)
    return PromptSRC(clip, CLASSES, **{**GEOMETRY, **kwargs})


def _vanilla_fixed_text(backbone, names):
    """Frozen open_clip: mean over the 60 templates of unnormalised features, then normalised."""
    with torch.no_grad():
        features = [backbone.model.encode_text(backbone.tokenizer([t.format(n) for n in names])) for t in IMAGENET_TEMPLATES]
    mean = torch.stack(features).mean(0)
    return mean / mean.norm(dim=-1, keepdim=True)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_registered_presets(clip):
    assert get_method("PromptSRC") is PromptSRC
    b2n = get_preset("promptsrc", "base2novel")
    assert (b2n.model["n_ctx_text"], b2n.model["depth_text"], b2n.model["gpa_mean"], b2n.model["gpa_std"]) == (4, 9, 15.0, 1.0)
    assert (b2n.train["lr"], b2n.train["epochs"], b2n.train["batch_size"]) == (0.0025, 20, 4)
    assert get_preset("promptsrc", "caspl_base2novel").model["n_ctx_vision"] == 8
    assert get_preset("promptsrc", "caspl_cross_dataset").model["depth_vision"] == 3
    assert get_preset("promptsrc", "few_shot").train["epochs"] == 50
    assert FEW_SHOT_GPA["EuroSAT"] == (45.0, 5.0) and FEW_SHOT_GPA["ImageNet"] == (30.0, 30.0)
    for preset in PromptSRC.presets.values():
        model = PromptSRC(clip, CLASSES, **preset.model)
        assert (model.text_loss_weight, model.image_loss_weight) == (25.0, 10.0)
    model = _model(clip, anchor="boosted", gpa_mean=None)
    rebuilt = PromptSRC(clip, CLASSES, **model.settings())
    assert rebuilt.settings() == model.settings()
    with pytest.raises(ValueError, match="anchor"):
        _model(clip, anchor="zeroshot")


def test_logits_shape_and_loss_terms(clip):
    model = _model(clip)
    with torch.no_grad():
        assert model(_images(4)).shape == (4, 3)
    loss, metrics = model.loss(_images(4), torch.tensor([0, 1, 2, 0]))
    assert set(metrics) == {"loss", "ce", "scl_text", "scl_image", "scl_logits", "acc"}
    total = metrics["ce"] + metrics["scl_text"] + metrics["scl_image"] + metrics["scl_logits"]
    assert float(loss.detach()) == pytest.approx(float(total), rel=1e-6)


def test_each_regulariser_equals_a_hand_computation(clip, tiny_student):
    model = _model(clip)
    with torch.no_grad():  # prompts away from their init so that every term is clearly non-zero
        for p in model.learnable_parameters():
            p.add_(0.3 * torch.randn_like(p))
    images, labels = _images(5, seed=2), torch.tensor([0, 1, 2, 0, 1])
    _, metrics = model.loss(images, labels)

    with torch.no_grad():
        text = _unit(clip.encode_text(model.text_inputs(), [model.adapting.text_tokens()]))
        image = _unit(clip.encode_image(images, [model.adapting.vision_tokens()]))
        fixed = _vanilla_fixed_text(tiny_student, model.class_names)
        anchor = _unit(tiny_student.model.encode_image(images))
    scale = tiny_student.model.logit_scale.exp()
    z, z_anchor = scale * image @ text.t(), scale * anchor @ fixed.t()
    p, p_anchor = z.softmax(-1), z_anchor.softmax(-1)
    by_hand = {
        "scl_text": 25.0 * (text - fixed).abs().sum() / text.numel(),
        "scl_image": 10.0 * (image - anchor).abs().sum() / image.numel(),
        "scl_logits": (p_anchor * (p_anchor.log() - p.log())).sum() / (5 * 3),  # KL(anchor || prompted) / (B*C)
        "ce": -(p[torch.arange(5), labels]).log().mean(),
    }
    for name, value in by_hand.items():
        assert float(metrics[name]) == pytest.approx(float(value), rel=1e-4, abs=1e-7), name
    reverse = (p * (p.log() - p_anchor.log())).sum() / 15
    assert abs(float(reverse) - float(metrics["scl_logits"])) > 1e-3 * float(metrics["scl_logits"])
    assert torch.allclose(model.fixed_text_features(), fixed, atol=1e-6)


@pytest.mark.parametrize("with_boosting", [False, True])
def test_gradients_reach_exactly_the_adapting_prompts(clip, with_boosting):
    model = _model(clip, boosting=_boosting(clip) if with_boosting else None)
    loss, _ = model.loss(_images(3), torch.tensor([0, 1, 2]))
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"adapting.text", "adapting.vision"}
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)
    assert [id(p) for p in model.learnable_parameters()] == [id(model.adapting.text), id(model.adapting.vision)]


def test_training_step_leaves_clip_and_boosting_bit_identical_and_overfits(clip):
    model = _model(clip, boosting=_boosting(clip), gpa_mean=None)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("clip.", "boosting."))}
    images, labels = _images(3, seed=1), torch.tensor([0, 1, 2])
    optimizer = make_optimizer(model.learnable_parameters(), lr=0.01)
    losses = [training_step(model, images, labels, optimizer)["loss"] for _ in range(20)]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    assert losses[-1] < 0.9 * losses[0] and losses[-1] < losses[2]


def test_gaussian_weights_follow_the_density_and_sum_to_one():
    weights = gaussian_weights(20, 15, 1)
    assert sum(weights) == pytest.approx(1.0, abs=1e-12) and len(weights) == 20
    assert max(range(20), key=weights.__getitem__) == 14  # epoch e = 15 (1-based)
    for e in (13, 16, 20):
        assert weights[e - 1] / weights[14] == pytest.approx(math.exp(-0.5 * (e - 15) ** 2), rel=1e-9)
    flat = gaussian_weights(4, 30, 30)
    assert flat[0] < flat[1] < flat[2] < flat[3]  # mean beyond the last epoch: rising weights
    with pytest.raises(ValueError, match="std"):
        gaussian_weights(5, 3, 0)
    with pytest.raises(ValueError, match="epochs"):
        gaussian_weights(0, 3, 1)


def test_gpa_through_on_epoch_end_gives_the_weighted_average_of_epoch_snapshots(clip):
    epochs = 3
    model = _model(clip, boosting=_boosting(clip), gpa_mean=2.0, gpa_std=0.8)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("clip.", "boosting."))}
    optimizer = make_optimizer(model.learnable_parameters(), lr=0.05)
    snapshots = []
    for epoch in range(epochs):
        training_step(model, _images(3, seed=epoch), torch.tensor([0, 1, 2]), optimizer)
        snapshots.append({k: v.clone() for k, v in model.learnable_state_dict().items()})
        model.on_epoch_end(epoch, epochs)
    weights = gaussian_weights(epochs, 2.0, 0.8)
    assert model.gpa.complete and model.gpa.weights == weights
    for name, value in model.learnable_state_dict().items():
        expected = sum(w * s[name] for w, s in zip(weights, snapshots))
        assert torch.allclose(value, expected, atol=1e-6), name
        assert not torch.allclose(value, snapshots[-1][name], atol=1e-4)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    # the eval cache sees the new prompt values
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.class_features(), model.encode_classes())


def test_gpa_object_guards_and_state(clip):
    model = _model(clip, boosting=_boosting(clip))
    gpa = GaussianPromptAggregation(model, 2, 1.0, 1.0)
    assert set(gpa.params) == {"adapting.text", "adapting.vision"}  # frozen tensors are not aggregated
    gpa.update(0)
    with pytest.raises(ValueError, match="already"):
        gpa.update(0)
    with pytest.raises(ValueError, match="0..1"):
        gpa.update(2)
    with pytest.raises(RuntimeError, match=r"\[1\]"):
        gpa.apply()
    restored = GaussianPromptAggregation(model, 2, 1.0, 1.0)
    restored.load_state_dict(gpa.state_dict())
    assert restored.recorded == [0] and all(torch.equal(restored.sums[k], gpa.sums[k]) for k in gpa.sums)
    with pytest.raises(RuntimeError, match="restore"):
        _model(clip).on_epoch_end(1, 2)  # a resumed run without the GPA state
    plain = _model(clip, gpa_mean=None)
    before = {k: v.clone() for k, v in plain.learnable_state_dict().items()}
    plain.on_epoch_end(0, 1)
    assert plain.gpa is None and all(torch.equal(plain.learnable_state_dict()[k], v) for k, v in before.items())


def test_cascade_token_order(clip, tiny_student):
    boost = _boosting(clip)
    model = _model(clip, boosting=boost)
    inputs = model.text_inputs()
    assert inputs.positions["promptsrc"].tolist() == [1, 2, 3, 4] and inputs.positions["boosting"].tolist() == [5, 6]
    blocks = tiny_student.model.visual.transformer.resblocks
    seen = []
    handles = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone())) for b in blocks]
    with torch.no_grad():
        model.encode_image(_images(2))
    for h in handles:
        h.remove()
    n0 = tiny_student.model.visual.positional_embedding.shape[0]
    assert seen[0].shape[1] == n0 + 3 + 2
    for i in (1, 2):  # deep blocks: [..][boost 3][adapt 2]
        assert torch.equal(seen[i][:, n0:n0 + 3], boost.vision[i].expand(2, -1, -1))
        assert torch.equal(seen[i][:, n0 + 3:], model.adapting.vision[i].detach().expand(2, -1, -1))


@pytest.mark.parametrize("anchor", ["clip", "boosted"])
def test_zero_token_boosting_group_equals_the_method_alone(clip, anchor):
    alone = _model(clip)
    empty = PromptGroup("boosting", "boosting", PromptSpec(0, 0), clip.text_width, clip.vision_width)
    cascaded = _model(clip, seed=1, boosting=empty, anchor=anchor)
    cascaded.load_state_dict(alone.state_dict(), strict=False)
    images, labels = _images(3), torch.tensor([0, 2, 1])
    with torch.no_grad():
        assert torch.equal(cascaded(images), alone(images))
        _, ours = cascaded.loss(images, labels)
        _, reference = alone.loss(images, labels)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_anchor_default_is_vanilla_clip_and_boosted_uses_the_boosting_prompts(clip, tiny_student):
    images = _images(3, seed=4)
    boost = _boosting(clip, n_text=2, depth_text=1)
    with torch.no_grad():
        boost.text[0].copy_(clip.word_embeddings("my own"))  # known words: "[SOS]my own <template>"
    default = _model(clip, boosting=boost)
    boosted = _model(clip, boosting=boost, anchor="boosted")
    vanilla_image = _unit(tiny_student.model.encode_image(images))
    assert torch.allclose(default.anchor_image_features(images), vanilla_image, atol=1e-6)
    assert torch.allclose(default.fixed_text_features(), _vanilla_fixed_text(tiny_student, default.class_names), atol=1e-6)

    with torch.no_grad():
        boosted_image = _unit(clip.encode_image(images, [boost.vision_tokens()]))
        words = [[f"my own {t.format(n)}" for n in boosted.class_names] for t in IMAGENET_TEMPLATES]
        mean = torch.stack([tiny_student.model.encode_text(tiny_student.tokenizer(w)) for w in words]).mean(0)
    assert torch.allclose(boosted.anchor_image_features(images), boosted_image, atol=1e-6)
    assert (boosted_image - vanilla_image).abs().max() > 1e-3
    assert torch.allclose(boosted.fixed_text_features(), _unit(mean), atol=1e-5)
    with pytest.raises(ValueError, match="boosting group"):
        _model(clip, anchor="boosted").anchor_image_features(images)


def test_fixed_text_features_are_cached_per_class_set(clip):
    model = _model(clip)
    first = model.fixed_text_features()
    assert model.fixed_text_features() is first and not first.requires_grad
    model.set_class_names(["cat", "dog"])
    assert model.fixed_text_features().shape[0] == 2


def test_anchor_text_features_are_computed_when_training_starts_not_in_the_first_step(clip, monkeypatch, caplog):
    model = _model(clip).eval()
    calls = []
    encode_text = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda *a, **k: calls.append(1) or encode_text(*a, **k))
    assert model._fixed_text_cache is None  # building and eval mode do not compute them
    with caplog.at_level("INFO", logger="caspl_plugin.methods.promptsrc"):
        model.train()
    assert len(calls) == len(IMAGENET_TEMPLATES)
    assert "anchor text features of 3 classes x 60 templates" in caplog.text
    calls.clear()
    optimizer = make_optimizer(model.learnable_parameters(), lr=0.01)
    training_step(model, _images(2), torch.tensor([0, 1]), optimizer)
    assert len(calls) == 1  # the step encodes only the prompted classes
    model.train()
    assert len(calls) == 1  # up to date: nothing recomputed
    model.set_class_names(["cat", "dog"])  # a new class set during training: prepared right away
    assert len(calls) == 1 + len(IMAGENET_TEMPLATES)
    model.eval()
    model.set_class_names(["cat", "dog", "bird"])  # evaluation never needs them
    assert len(calls) == 1 + len(IMAGENET_TEMPLATES)
