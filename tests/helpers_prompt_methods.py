"""Checks shared by the method tests (CoOp, CoCoOp, IVLP and their cascades)."""

import torch
import torch.nn.functional as F

from caspl_plugin.boosting.model import BoostingConfig, make_boosting_group
from caspl_plugin.engine import make_optimizer, training_step

CLASSES = ["dog", "golden retriever", "sea lion", "cat"]


def images_for(backbone, n: int, seed: int = 0) -> torch.Tensor:
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def frozen_boosting(clip, n_text: int = 2, n_vision: int = 3, depth: int = 2, learnable: bool = False):
    """A boosting group with random values (seeded), frozen unless ``learnable``."""
    config = BoostingConfig(n_text=n_text, n_vision=n_vision, depth_text=depth, depth_vision=depth, ctx_init="")
    return make_boosting_group(clip, config, learnable=learnable, generator=torch.Generator().manual_seed(3))


def hand_logits(backbone, images: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """scale · cos(image, text) from open_clip's own image encoder and the given text features."""
    image = F.normalize(backbone.model.encode_image(images), dim=-1)
    return backbone.model.logit_scale.exp() * image @ F.normalize(text_features, dim=-1).t()


def sentence_features(backbone, sentences) -> torch.Tensor:
    return backbone.model.encode_text(backbone.tokenizer(list(sentences)))


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bit_identical(before: dict, module: torch.nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"frozen tensors changed: {changed}"


def assert_gradients_reach_exactly(model, expected: set, images, labels) -> None:
    """Backward of the method's loss gives nonzero gradients to exactly ``expected`` parameter names."""
    model.zero_grad(set_to_none=True)
    loss, _ = model.loss(images, labels)
    loss.backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert reached == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert all(p.grad is None for p in model.clip.parameters())
    model.zero_grad(set_to_none=True)


def assert_training_step_keeps_frozen(model, images, labels, lr: float = 0.01) -> None:
    """A training step changes the learnable tensors and leaves CLIP and a frozen boosting group bit-identical."""
    frozen = [model.clip] + ([model.boosting] if model.boosting is not None and not model.boosting.learnable else [])
    before = [snapshot(m) for m in frozen]
    learnable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    training_step(model, images, labels, make_optimizer(model.learnable_parameters(), lr))
    for state, module in zip(before, frozen):
        assert_bit_identical(state, module)
    assert all(not torch.equal(learnable[n], p) for n, p in model.named_parameters() if n in learnable)


def distinct_images(backbone) -> torch.Tensor:
    """Four images that a random tiny CLIP tells apart (red, green, blue, dark, plus noise): random
    noise images give near-identical features, which no prompt can separate."""
    images = torch.zeros(4, 3, backbone.image_size, backbone.image_size)
    for i in range(3):
        images[i, i] = 2.0
    images[3] = -2.0
    return images + 0.3 * images_for(backbone, 4)


def assert_overfits(model, backbone, lr: float, steps: int = 8) -> None:
    """A few training steps on four distinct images with four labels bring the loss clearly below its
    start. (On a random tiny CLIP a text-only context often cannot get far below chance level, ln 4,
    in a few steps; the pre-trained toy CLIPs are where accuracy gains are tested.)"""
    images, labels = distinct_images(backbone), torch.arange(4)
    optimizer = make_optimizer(model.learnable_parameters(), lr)
    losses = [training_step(model, images, labels, optimizer)["loss"] for _ in range(steps)]
    assert losses[-1] < 0.9 * losses[0], losses


def assert_eval_cache_is_fresh(model, images, labels, monkeypatch) -> None:
    """Eval logits come from the class-feature cache, equal the uncached path, and a training step
    invalidates the cache (the next eval logits use the updated prompts)."""
    calls = []
    encode = model.encode_classes
    monkeypatch.setattr(model, "encode_classes", lambda: calls.append(1) or encode())
    model.eval()
    with torch.no_grad():
        first = model(images)
        again = model(images)
        uncached = model.clip.logits(model.encode_image(images), encode())
    assert len(calls) == 1, "eval-mode class features were not cached"
    assert torch.equal(first, again) and torch.equal(first, uncached)
    training_step(model, images, labels, make_optimizer(model.learnable_parameters(), 0.05))
    with torch.no_grad():
        after = model(images)
        fresh = model.clip.logits(model.encode_image(images), encode())
    assert len(calls) == 3, "the cache was not recomputed after the training step"
    assert torch.equal(after, fresh)
    assert (after - first).abs().max() > 1e-4
