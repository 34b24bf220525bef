"""The prompt-placement mechanism: equivalence with open_clip and token positions (CasPL §1 order)."""
import pytest
import torch

from caspl_plugin.prompts import PromptedCLIP, PromptGroup, PromptSpec, PromptTokens, Slot


def _capture_block_inputs(blocks):
    """Record the input of every residual block (forward pre-hooks)."""
    seen, handles = [], []
    for block in blocks:
        handles.append(block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].detach().clone()), with_kwargs=True))
    return seen, handles


def _words(clip: PromptedCLIP, text: str) -> torch.Tensor:
    return clip.word_embeddings(text)


@pytest.mark.parametrize("backbone", ["tiny_student", "vit_b16"])
def test_no_prompts_equals_open_clip(backbone, request):
    bb = request.getfixturevalue(backbone)
    clip = PromptedCLIP(bb)
    names = ["dog", "golden retriever", "sea_lion"]
    inputs = clip.text_inputs(names, template="a photo of a {}.")
    ids = bb.tokenizer([f"a photo of a {n}." for n in names])
    assert torch.equal(inputs.token_ids, ids)
    images = torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (clip.encode_text(inputs) - bb.model.encode_text(ids)).abs().max() <= 1e-5
        assert (clip.encode_image(images) - bb.model.encode_image(images)).abs().max() <= 1e-5


def test_text_tokens_of_known_words_reproduce_the_sentence(tiny_student):
    """Adapting "a photo" + boosting "of a small" at layer 0 == plain "a photo of a small dog."."""
    clip = PromptedCLIP(tiny_student)
    names = ["dog", "golden retriever"]
    adapt = PromptTokens("adapt", "adapting", (_words(clip, "a photo"),))
    boost = PromptTokens("boost", "boosting", (_words(clip, "of a small"),))
    slots = [Slot("boost", "boosting", 3), Slot("adapt", "adapting", 2)]  # given out of order on purpose
    inputs = clip.text_inputs(names, slots)
    plain = clip.text_inputs(names, template="a photo of a small {}.")
    assert inputs.positions["adapt"].tolist() == [1, 2] and inputs.positions["boost"].tolist() == [3, 4, 5]
    assert torch.equal(inputs.eot_index, plain.eot_index)
    with torch.no_grad():
        ours = clip.encode_text(inputs, [boost, adapt])
        reference = tiny_student.model.encode_text(plain.token_ids)
    assert (ours - reference).abs().max() <= 1e-5


def test_deep_text_tokens_replace_their_slice_at_each_block(tiny_student):
    """Two groups of different lengths and depths: deep tokens set to the hidden states the plain
    sentence has at those positions reproduce it exactly; wrong positions would not."""
    clip = PromptedCLIP(tiny_student)
    names = ["red circle", "cat"]
    plain = clip.text_inputs(names, template="a photo of a small {}.")
    seen, handles = _capture_block_inputs(tiny_student.model.transformer.resblocks)
    with torch.no_grad():
        reference = tiny_student.model.encode_text(plain.token_ids)
    for h in handles:
        h.remove()
    # hidden states before the class name are identical across classes (causal mask)
    adapt_layers = [_words(clip, "a photo")] + [seen[i][0, 1:3] for i in (1, 2)]  # depth 3
    boost_layers = [_words(clip, "of a small")] + [seen[1][0, 3:6]]  # depth 2
    adapt = PromptTokens("adapt", "adapting", tuple(adapt_layers))
    boost = PromptTokens("boost", "boosting", tuple(boost_layers))
    inputs = clip.text_inputs(names, [Slot("adapt", "adapting", 2), Slot("boost", "boosting", 3)])
    with torch.no_grad():
        ours = clip.encode_text(inputs, [adapt, boost])
        assert (ours - reference).abs().max() <= 1e-5
        # the deep tokens matter: perturbing a deep layer changes the result
        moved = PromptTokens("boost", "boosting", (boost_layers[0], boost_layers[1] + torch.randn(boost_layers[1].shape)))
        assert (clip.encode_text(inputs, [adapt, moved]) - reference).abs().max() > 1e-3


def test_vision_order_and_deep_replacement(tiny_student):
    """Block 0 sees [CLS][patches][boosting][adapting] (prompts through ln_pre, no positional
    embedding); block i < depth sees each group's layer-i tokens at its slice; deeper blocks carry
    the previous outputs through."""
    clip = PromptedCLIP(tiny_student)
    visual = tiny_student.model.visual
    g = torch.Generator().manual_seed(3)
    boost = PromptGroup("boost", "boosting", PromptSpec(n_vision=3, depth_vision=3), clip.text_width, clip.vision_width, generator=g)
    adapt = PromptGroup("adapt", "adapting", PromptSpec(n_vision=2, depth_vision=2), clip.text_width, clip.vision_width, generator=g)
    images = torch.randn(2, 3, 32, 32, generator=g)
    seen, handles = _capture_block_inputs(visual.transformer.resblocks)
    outputs = []
    handles += [b.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone())) for b in visual.transformer.resblocks]
    with torch.no_grad():
        clip.encode_image(images, [adapt.vision_tokens(), boost.vision_tokens()])  # order given wrong on purpose
        embeds = visual._embeds(images)  # open_clip's own: conv, cls, +pos, ln_pre
    for h in handles:
        h.remove()
    n0 = embeds.shape[1]
    ln = visual.ln_pre
    with torch.no_grad():
        expected0 = torch.cat([embeds, ln(boost.vision[0]).expand(2, -1, -1), ln(adapt.vision[0]).expand(2, -1, -1)], 1)
    assert seen[0].shape[1] == n0 + 5
    assert (seen[0] - expected0).abs().max() <= 1e-5
    # block 1: both groups replaced; block 2: boosting replaced, adapting carried from block 1's output
    assert torch.equal(seen[1][:, n0:n0 + 3], boost.vision[1].detach().expand(2, -1, -1))
    assert torch.equal(seen[1][:, n0 + 3:], adapt.vision[1].detach().expand(2, -1, -1))
    assert torch.equal(seen[2][:, n0:n0 + 3], boost.vision[2].detach().expand(2, -1, -1))
    assert torch.equal(seen[2][:, n0 + 3:], outputs[1][:, n0 + 3:])
    assert torch.equal(seen[2][:, :n0], outputs[1][:, :n0])


def test_vision_prompts_against_hand_built_sequence(tiny_student):
    clip = PromptedCLIP(tiny_student)
    visual = tiny_student.model.visual
    g = torch.Generator().manual_seed(4)
    boost = PromptGroup("boost", "boosting", PromptSpec(n_vision=2, depth_vision=2), clip.text_width, clip.vision_width, generator=g)
    images = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        x = torch.cat([visual._embeds(images), visual.ln_pre(boost.vision[0]).expand(3, -1, -1)], 1)
        for i, block in enumerate(visual.transformer.resblocks):
            if i == 1:
                x = torch.cat([x[:, :-2], boost.vision[1].expand(3, -1, -1)], 1)
            x = block(x)
        expected = visual.ln_post(x[:, 0]) @ visual.proj
        ours = clip.encode_image(images, [boost.vision_tokens()])
    assert (ours - expected).abs().max() <= 1e-5


def test_class_positions_middle_and_front(tiny_student):
    clip = PromptedCLIP(tiny_student)
    adapt = PromptTokens("ctx", "adapting", (_words(clip, "a photo of"),))
    boost = PromptTokens("boost", "boosting", (_words(clip, "big"),))
    slots = [Slot("ctx", "adapting", 3), Slot("boost", "boosting", 1)]
    names = ["dog", "golden retriever"]
    with torch.no_grad():
        middle = clip.encode_text(clip.text_inputs(names, slots, class_position="middle"), [adapt, boost])
        # middle: [SOS][ctx[:1]][boost][class][ctx[1:]][.]  ->  "a big dog photo of."
        plain_mid = clip.encode_text(clip.text_inputs(names, template="a big {} photo of."))
        front = clip.encode_text(clip.text_inputs(names, slots, class_position="front"), [adapt, boost])
        plain_front = clip.encode_text(clip.text_inputs(names, template="big {} a photo of."))
    assert (middle - plain_mid).abs().max() <= 1e-5
    assert (front - plain_front).abs().max() <= 1e-5


def test_per_sequence_prompts_and_zero_token_groups(tiny_student):
    clip = PromptedCLIP(tiny_student)
    names = ["dog", "cat", "bird"]
    ctx = _words(clip, "a photo of")
    per_image = torch.stack([ctx, ctx + torch.randn(ctx.shape, generator=torch.Generator().manual_seed(0))])  # two images, different context each
    inputs = clip.text_inputs(names, [Slot("ctx", "adapting", 3)]).repeat(2)
    tokens = PromptTokens("ctx", "adapting", (per_image.repeat_interleave(3, dim=0),))
    with torch.no_grad():
        both = clip.encode_text(inputs, [tokens]).reshape(2, 3, -1)
        first = clip.encode_text(clip.text_inputs(names, template="a photo of {}."))
        empty = PromptTokens("none", "boosting", (torch.zeros(0, clip.text_width),))
        same = clip.encode_text(clip.text_inputs(names, [Slot("ctx", "adapting", 3)]), [PromptTokens("ctx", "adapting", (ctx,)), empty])
    assert (both[0] - first).abs().max() <= 1e-5
    assert (both[1] - first).abs().max() > 1e-4
    assert (same - first).abs().max() <= 1e-5


def test_errors_name_the_problem(tiny_student):
    clip = PromptedCLIP(tiny_student)
    long_name = "very " * 40 + "long class"
    with pytest.raises(ValueError, match="very very"):
        clip.text_inputs(["dog", long_name], [Slot("p", "boosting", 4)])
    inputs = clip.text_inputs(["dog"], [Slot("p", "boosting", 4)])
    with pytest.raises(ValueError, match="do not match the tokenized slots"):
        clip.encode_text(inputs, [PromptTokens("p", "boosting", (torch.zeros(3, clip.text_width),))])
    with pytest.raises(ValueError, match="role"):
        PromptTokens("p", "teacher", (torch.zeros(1, 4),))
    with pytest.raises(ValueError, match="n_text"):
        PromptSpec(n_text=-1)


def test_token_primitives_place_and_insert():
    from caspl_plugin.prompts import insert_token_ids, insert_tokens, place_tokens

    x = torch.arange(2 * 6 * 1, dtype=torch.float32).reshape(2, 6, 1)
    v = torch.tensor([[100.0], [101.0]])
    assert place_tokens(x, [1, 2], v)[:, :, 0].tolist() == [[0, 100, 101, 3, 4, 5], [6, 100, 101, 9, 10, 11]]
    assert torch.equal(place_tokens(x.transpose(0, 1), [1, 2], v, seq_first=True), place_tokens(x, [1, 2], v).transpose(0, 1))
    assert insert_tokens(x, 2, v)[0, :, 0].tolist() == [0, 1, 100, 101, 2, 3]
    four_d = torch.zeros(3, 2, 6, 1)
    assert insert_tokens(four_d, 1, v).shape == (3, 2, 6, 1)
    assert torch.equal(insert_tokens(x.transpose(0, 1), 2, v, seq_first=True), insert_tokens(x, 2, v).transpose(0, 1))
    ids = torch.tensor([[9, 5, 7, 8, 0, 0], [9, 5, 8, 0, 0, 0]])
    assert insert_token_ids(ids, 2, 2, fill_id=1).tolist() == [[9, 5, 1, 1, 7, 8], [9, 5, 1, 1, 8, 0]]
    with pytest.raises(ValueError, match=r"row\(s\) \[0\]"):
        insert_token_ids(ids, 2, 3, fill_id=1)


def test_rows_cut_off_names_rows_whose_text_an_insert_would_drop():
    from caspl_plugin.prompts.tokens import rows_cut_off

    ids = torch.tensor([[9, 5, 7, 8, 0, 0], [9, 5, 8, 0, 0, 0], [9, 5, 6, 7, 4, 8]])
    assert rows_cut_off(ids, 0) == [] and rows_cut_off(ids, 2) == [2] and rows_cut_off(ids, 3) == [0, 2]
    assert rows_cut_off(ids, 4) == [0, 1, 2]
