"""MaPLe on the prompt mechanism: coupled prompts, independent recomputation, training, cascade."""
import open_clip
import pytest
import torch

from caspl_plugin.boosting import BoostingConfig, make_boosting_group
from caspl_plugin.clip import Backbone
from caspl_plugin.engine import make_optimizer, training_step
from caspl_plugin.methods import get_method, get_preset
from caspl_plugin.methods.maple import MaPLe
from caspl_plugin.prompts import PromptedCLIP, PromptGroup, PromptSpec

CLASSES = ["red circle", "blue square", "green_triangle"]


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


@pytest.fixture(scope="module")
def unequal_clip():
    """A tiny CLIP whose text (48) and vision (64) widths differ, so a hard-coded width would fail."""
    torch.manual_seed(2)
    model = open_clip.model.CLIP(
        embed_dim=24,
        vision_cfg={"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        text_cfg={"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
        quick_gelu=True,
    )
    backbone = Backbone("unequal-widths", "test", model.eval().requires_grad_(False), open_clip.get_tokenizer("ViT-B-16"))
    return PromptedCLIP(backbone)


def _images(n, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _block_inputs(blocks):
    seen = []
    handles = [b.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].detach().clone()), with_kwargs=True) for b in blocks]
    return seen, handles


def _frozen_boosting(clip, **geometry):
    config = BoostingConfig(**{"n_text": 3, "n_vision": 3, "depth_text": 2, "depth_vision": 3, "ctx_init": "", **geometry})
    return make_boosting_group(clip, config, learnable=False, generator=torch.Generator().manual_seed(5))


def test_registered_with_presets_that_build(clip):
    assert get_method("MaPLe") is MaPLe
    assert get_preset("maple", "base2novel").train["epochs"] == 5
    assert get_preset("maple", "caspl_base2novel").model == {"n_ctx": 8, "depth": 12, "ctx_init": "a photo of a"}
    for name, preset in MaPLe.presets.items():
        model = MaPLe(clip, CLASSES, **preset.model)
        assert model.depth == min(preset.model["depth"], 3)  # limited to the tiny CLIP's 3 blocks
        assert len(model.compound_prompts_text) == model.depth - 1


def test_widths_come_from_the_clip_and_logits_have_class_shape(unequal_clip):
    torch.manual_seed(0)
    model = MaPLe(unequal_clip, CLASSES, n_ctx=2, depth=2)
    assert tuple(model.ctx.shape) == (2, 48)
    assert tuple(model.proj.weight.shape) == (64, 48)
    assert [tuple(p.shape) for p in model.compound_prompts_text] == [(2, 48)]
    assert tuple(model.compound_prompt_projections[0].weight.shape) == (64, 48)
    with torch.no_grad():
        assert model(_images(4, size=32)).shape == (4, len(CLASSES))


def test_initialisation_follows_the_reference(clip):
    torch.manual_seed(0)
    short = MaPLe(clip, CLASSES, n_ctx=2, depth=3)
    assert torch.equal(short.ctx.detach(), clip.word_embeddings("a photo", 2))
    assert short.template == "of a {}."  # the rest of "a photo of a" stays as fixed words
    assert MaPLe(clip, CLASSES, n_ctx=2, depth=1, template="{} texture.").template == "of a {} texture."
    full = MaPLe(clip, CLASSES, n_ctx=4, depth=3)
    assert torch.equal(full.ctx.detach(), clip.word_embeddings("a photo of a")) and full.template == "{}."
    rand = MaPLe(clip, CLASSES, n_ctx=6, depth=3)
    assert rand.template == "{}." and rand.ctx.std().item() == pytest.approx(0.02, rel=0.3)
    # the compound projections start as copies of one layer
    p0, p1 = rand.compound_prompt_projections
    assert torch.equal(p0.weight, p1.weight) and p0.weight is not p1.weight
    with pytest.raises(ValueError, match="n_ctx"):
        MaPLe(clip, CLASSES, n_ctx=0)


def test_text_with_word_context_equals_the_plain_sentence(clip, tiny_student):
    """Layer-0 ctx = "a photo" (+ fixed "of a"), depth 1 == open_clip on "a photo of a {class}."."""
    model = MaPLe(clip, CLASSES, n_ctx=2, depth=1)
    plain = clip.text_inputs(model.class_names, template="a photo of a {}.")
    with torch.no_grad():
        ours = model.encode_classes()
        reference = tiny_student.model.encode_text(plain.token_ids)
    assert (ours - reference).abs().max() <= 1e-5


def test_deep_text_prompts_replace_positions_1_to_n_at_each_block(clip, tiny_student):
    """Compound prompt i set to the plain sentence's hidden states at block i+1 reproduces it."""
    model = MaPLe(clip, CLASSES, n_ctx=2, depth=3)
    plain = clip.text_inputs(model.class_names, template="a photo of a {}.")
    seen, handles = _block_inputs(tiny_student.model.transformer.resblocks)
    with torch.no_grad():
        reference = tiny_student.model.encode_text(plain.token_ids)
    for h in handles:
        h.remove()
    with torch.no_grad():
        for i, prompt in enumerate(model.compound_prompts_text):
            prompt.copy_(seen[i + 1][0, 1:3])
        assert (model.encode_classes() - reference).abs().max() <= 1e-5
        model.compound_prompts_text[1].add_(torch.randn(2, clip.text_width))
        assert (model.encode_classes() - reference).abs().max() > 1e-3


def test_image_features_equal_a_prompt_group_holding_the_projected_tokens(unequal_clip):
    """Projections chosen so that the vision prompts are known tensors V (one-hot text rows pick the
    columns of the weight): MaPLe's image features == PromptedCLIP with a group holding V."""
    clip, n, depth = unequal_clip, 2, 2
    model = MaPLe(clip, CLASSES, n_ctx=n, depth=depth)
    group = PromptGroup("known", "adapting", PromptSpec(n_vision=n, depth_vision=depth), clip.text_width, clip.vision_width,
                        generator=torch.Generator().manual_seed(9))
    one_hot = torch.eye(n, clip.text_width)
    with torch.no_grad():
        for text, layer, target in zip([model.ctx, *model.compound_prompts_text],
                                       [model.proj, *model.compound_prompt_projections], group.vision):
            text.copy_(one_hot)
            layer.weight.zero_()
            layer.weight[:, :n] = target.t()
            layer.bias.zero_()
        images = _images(3)
        ours = model.encode_image(images)
        reference = clip.encode_image(images, [group.vision_tokens()])
        assert (ours - reference).abs().max() <= 1e-6
        assert (ours - clip.encode_image(images)).abs().max() > 1e-3  # the prompts do matter


@pytest.mark.parametrize("with_boosting", [False, True])
def test_gradients_reach_exactly_the_maple_parameters(clip, with_boosting):
    torch.manual_seed(0)
    boosting = _frozen_boosting(clip) if with_boosting else None
    model = MaPLe(clip, CLASSES, n_ctx=2, depth=3, boosting=boosting)
    loss, metrics = model.loss(_images(4), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    own = {name for name, _ in model.named_parameters() if not name.startswith(("clip.", "boosting."))}
    assert {name for name, p in model.named_parameters() if p.grad is not None} == own
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in own)
    assert {id(p) for p in model.learnable_parameters()} == {id(model.get_parameter(n)) for n in own}
    assert set(metrics) >= {"loss", "acc"}


def test_training_step_leaves_clip_and_frozen_boosting_bit_identical_and_overfits(clip):
    torch.manual_seed(0)
    model = MaPLe(clip, CLASSES, n_ctx=2, depth=3, boosting=_frozen_boosting(clip))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("clip.", "boosting."))}
    before = {k: v.detach().clone() for k, v in model.learnable_state_dict().items()}
    images, labels = _images(3, seed=1), torch.tensor([0, 1, 2])
    optimizer = make_optimizer(model.learnable_parameters(), lr=0.01)
    losses = [training_step(model, images, labels, optimizer)["loss"] for _ in range(20)]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert all(not torch.equal(model.learnable_state_dict()[k], v) for k, v in before.items())
    assert losses[-1] < 0.9 * losses[0] and losses[-1] < losses[2]  # still decreasing after the first steps


def test_cascade_token_order(clip, tiny_student):
    """Text [SOS][maple 2][boost 3] of a {class}. ; vision [CLS][patches][boost 3][maple 2] at
    layer 0 (through ln_pre) and at deep blocks; the boosting group keeps its own depth."""
    torch.manual_seed(0)
    boost = _frozen_boosting(clip)
    model = MaPLe(clip, CLASSES, n_ctx=2, depth=2, boosting=boost)
    inputs = model.text_inputs()
    assert inputs.positions["maple"].tolist() == [1, 2] and inputs.positions["boosting"].tolist() == [3, 4, 5]
    of_a = tiny_student.tokenizer.encode("of a")
    assert inputs.token_ids[0, 6:8].tolist() == of_a
    visual = tiny_student.model.visual
    seen, handles = _block_inputs(visual.transformer.resblocks)
    with torch.no_grad():
        model.encode_image(_images(2))
        maple_tokens = model.vision_prompts()[0].layers
    for h in handles:
        h.remove()
    n0 = visual.positional_embedding.shape[0]
    assert seen[0].shape[1] == n0 + 5
    with torch.no_grad():
        assert torch.allclose(seen[0][:, n0:n0 + 3], visual.ln_pre(boost.vision[0]).expand(2, -1, -1), atol=1e-6)
        assert torch.allclose(seen[0][:, n0 + 3:], visual.ln_pre(maple_tokens[0]).expand(2, -1, -1), atol=1e-6)
    assert torch.equal(seen[1][:, n0:n0 + 3], boost.vision[1].expand(2, -1, -1))
    assert torch.equal(seen[1][:, n0 + 3:], maple_tokens[1].expand(2, -1, -1))
    assert torch.equal(seen[2][:, n0:n0 + 3], boost.vision[2].expand(2, -1, -1))  # boosting deeper than MaPLe


def test_zero_token_boosting_group_equals_the_method_alone(clip):
    torch.manual_seed(0)
    alone = MaPLe(clip, CLASSES, n_ctx=2, depth=3)
    empty = PromptGroup("boosting", "boosting", PromptSpec(0, 0), clip.text_width, clip.vision_width)
    cascaded = MaPLe(clip, CLASSES, n_ctx=2, depth=3, boosting=empty)
    cascaded.load_state_dict(alone.state_dict(), strict=False)
    images = _images(3)
    with torch.no_grad():
        assert torch.equal(cascaded(images), alone(images))


def test_settings_rebuild_the_same_architecture(clip):
    model = MaPLe(clip, CLASSES, n_ctx=3, depth=2, ctx_init="")
    rebuilt = MaPLe(clip, CLASSES, **model.settings())
    assert {k: v.shape for k, v in rebuilt.learnable_state_dict().items()} == {
        k: v.shape for k, v in model.learnable_state_dict().items()
    }
    assert rebuilt.template == model.template
