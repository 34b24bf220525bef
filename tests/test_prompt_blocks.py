"""Running the residual blocks sequence-first on their own weights gives open_clip's numbers."""
import pytest
import torch
from open_clip.model import QuickGELU
from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

from caspl_plugin.prompts import PromptedCLIP, PromptGroup, PromptSpec, Slot
from caspl_plugin.prompts.blocks import BlockRunner, is_causal_mask, is_fusable


def _run_both(block, x, mask=None):
    """(fused output, the block's own output), both batch-first."""
    fused = BlockRunner("fused")
    return fused.leave(fused(block, fused.enter(x), mask)), block(x, attn_mask=mask)


def _causal(length):
    return torch.full((length, length), float("-inf")).triu_(1)


@pytest.mark.parametrize("act", [QuickGELU, torch.nn.GELU])
@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_fused_block_equals_the_blocks_forward_with_and_without_masks(act, layer_scale):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4, ls_init_value=layer_scale, act_layer=act).eval()
    assert is_fusable(block)
    x = torch.randn(3, 7, 32)
    additive = torch.randn(7, 7)
    per_head = torch.randn(3 * 4, 7, 7)
    for mask in (None, _causal(7), additive, per_head):
        ours, theirs = _run_both(block, x, mask)
        assert (ours - theirs).abs().max() <= 1e-5


def test_fused_block_gradients_equal_the_blocks_own():
    torch.manual_seed(1)
    block = ResidualAttentionBlock(32, 4, act_layer=QuickGELU).eval().requires_grad_(False)
    x = torch.randn(2, 6, 32, requires_grad=True)
    grads = []
    for fused in (True, False):
        out = _run_both(block, x, _causal(6))[0 if fused else 1]
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        grads.append(grad)
    assert (grads[0] - grads[1]).abs().max() <= 1e-5


def test_bf16_autocast_matches_the_blocks_own_under_autocast():
    torch.manual_seed(2)
    block = ResidualAttentionBlock(32, 4).eval()
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = _run_both(block, x, _causal(5))
    assert ours.dtype == theirs.dtype
    assert (ours.float() - theirs.float()).abs().max() <= 2e-2 * theirs.abs().max()


def test_unrecognised_blocks_and_hooked_blocks_run_their_own_forward():
    torch.manual_seed(3)
    custom = CustomResidualAttentionBlock(32, 4, qk_norm=True).eval()
    assert not is_fusable(custom)
    x = torch.randn(2, 5, 32)
    ours, theirs = _run_both(custom, x)
    assert torch.equal(ours, theirs)
    block = ResidualAttentionBlock(32, 4).eval()
    seen = []
    block.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    _run_both(block, x)
    assert seen == [x.shape, x.shape]  # the hook sees batch-first input in both modes


def test_causal_mask_detection():
    assert is_causal_mask(_causal(5))
    assert not is_causal_mask(None)
    assert not is_causal_mask(torch.zeros(5, 5))
    assert not is_causal_mask(_causal(5).T)
    assert not is_causal_mask(torch.ones(5, 5, dtype=torch.bool).triu(1))


def test_prompted_encoders_run_fused_and_agree_with_module_mode(tiny_student, monkeypatch):
    clip = PromptedCLIP(tiny_student)
    g = torch.Generator().manual_seed(4)
    boost = PromptGroup("boosting", "boosting", PromptSpec(3, 3, 2, 2), clip.text_width, clip.vision_width, generator=g)
    adapt = PromptGroup("ctx", "adapting", PromptSpec(2, 2, 3, 3), clip.text_width, clip.vision_width, generator=g)
    inputs = clip.text_inputs(["dog", "sea lion"], [Slot("ctx", "adapting", 2), Slot("boosting", "boosting", 3)])
    images = torch.randn(2, 3, 32, 32, generator=g)
    text_prompts = [adapt.text_tokens(), boost.text_tokens()]
    vision_prompts = [boost.vision_tokens(), adapt.vision_tokens()]

    def features_and_grads():
        text = clip.encode_text(inputs, text_prompts)
        image = clip.encode_image(images, vision_prompts)
        grads = torch.autograd.grad(text.square().sum() + image.square().sum(), [adapt.text, adapt.vision, boost.vision])
        return [text.detach(), image.detach(), *grads]

    module_mode = PromptedCLIP(tiny_student, block_mode="module")
    clip.block_mode = "module"
    reference = features_and_grads()
    clip.block_mode = "fused"

    def refuse(*args, **kwargs):
        raise AssertionError("the fused mode must not call the block's forward")

    monkeypatch.setattr(ResidualAttentionBlock, "forward", refuse)
    fused = features_and_grads()
    for ours, theirs in zip(fused, reference):  # features, then gradients (up to ~1e2: relative)
        assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, theirs.abs().max().item())
    with pytest.raises(AssertionError, match="must not call"):
        module_mode.encode_image(images)
    with pytest.raises(ValueError, match="block mode"):
        PromptedCLIP(tiny_student, block_mode="fast")
