"""CasPL for a host project's own, unmodified trainers: the OpenAI-``clip`` adapters against the host
project in ``tests/host_project`` (CoOp-style ``HostCoOp``, the IVLP fork ``HostIVLP``), real Dassl.

Placement is checked against independent computations: a sentence encoded by the host CLIP without
prompts, and forward passes built by hand from the host's own modules.
"""
import pytest

pytest.importorskip("dassl")

import torch  # noqa: E402

from helpers_dassl import make_dtd  # noqa: E402
from helpers_hosts import (BASE, HOST_GEOMETRY, TEXT_WIDTH, TINY, VISION_WIDTH, build, hand_image,  # noqa: E402,F401
                           images, random_artifact, run_block, save_artifact, seq_first)
from host_project import trainers as host  # noqa: E402  (registers the host's trainers)
from host_project.openai_clip import build_clip, tokenizer  # noqa: E402

from caspl_plugin.artifacts.boosting import ArtifactMismatchError, BoostingArtifact  # noqa: E402

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dtd(tmp_path_factory.mktemp("host_data"))


# --- hand-built forward passes from the host's own modules ----------------------------------------

def hand_text(encoder, learner, boosting, eot):
    """``[SOS][host ctx][boosting][class . EOS]`` + pos -> blocks with both deep slices replaced -> EOT feature."""
    blocks = encoder.transformer.resblocks
    host = [None] + [getattr(b, "VPT_shallow", None) for b in blocks[1:]]
    rows, n_ctx, nb = learner.n_cls, learner.n_ctx, boosting.shape[1]
    suffix = learner.token_suffix[:, :learner.token_suffix.shape[1] - nb]
    x = torch.cat([learner.token_prefix, learner.ctx.expand(rows, -1, -1), boosting[0].expand(rows, -1, -1), suffix], dim=1)
    x = (x + encoder.positional_embedding).permute(1, 0, 2)
    at = 1 + n_ctx
    for i, block in enumerate(blocks):
        theirs = seq_first(host[i], rows) if host[i] is not None else x[1:at]
        ours = seq_first(boosting[i], rows) if 0 < i < len(boosting) else x[at:at + nb]
        x = run_block(block, torch.cat([x[:1], theirs, ours, x[at + nb:]]))
    x = encoder.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(rows), eot] @ encoder.text_projection


def host_eot(trainer, n_ctx):
    """Where the host's own tokenization puts each class's EOT (before any boosting token)."""
    tokenize = tokenizer(TINY["context_length"])
    prefix = " ".join(["X"] * n_ctx)
    return tokenize([f"{prefix} {name}." for name in trainer.dm.dataset.classnames]).argmax(-1)


# --- the tests ------------------------------------------------------------------------------------

def test_cascade_trains_the_host_trainer_with_its_own_loss(data_root, tmp_path, monkeypatch):
    calls = []
    real_loss = host.HostCoOp.compute_loss

    def spy(self, logits, label):
        calls.append(tuple(logits.shape))
        return real_loss(self, logits, label)

    monkeypatch.setattr(host.HostCoOp, "compute_loss", spy)
    trainer = build(data_root, tmp_path / "run", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING",
                    random_artifact(tmp_path / "boosting.safetensors"))
    assert isinstance(trainer, host.HostCoOp) and type(trainer).__name__ == "CasPL_HostCoOp"
    group = trainer.boosting_group
    boosting_before = {k: v.clone() for k, v in group.state_dict().items()}
    ctx_before = trainer.model.prompt_learner.ctx.detach().clone()
    in_optimizer = {id(p) for g in trainer.optim.param_groups for p in g["params"]}
    assert id(trainer.model.prompt_learner.ctx) in in_optimizer
    assert not any(id(p) in in_optimizer or p.requires_grad for p in group.parameters())

    trainer.train()
    n_cls = len(trainer.dm.dataset.classnames)
    assert len(calls) == trainer.num_batches > 0 and all(shape[1] == n_cls for shape in calls)
    assert all(torch.equal(boosting_before[k], v) for k, v in group.state_dict().items())
    assert not torch.equal(trainer.model.prompt_learner.ctx, ctx_before)
    assert (tmp_path / "run" / "prompt_learner" / "model.pth.tar-1").is_file()


def test_boosting_words_complete_the_hosts_sentence(data_root, tmp_path):
    """Host context "a photo" + boosting "of a" = the plain sentence "a photo of a {class}."."""
    clip, tokenize = build_clip("host-tiny"), tokenizer(TINY["context_length"])
    with torch.no_grad():
        of_a = clip.token_embedding(tokenize(["of a"]))[0, 1:3]
    trainer = build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.HOSTCOOP.CTX_INIT", "a photo",
                    "TRAINER.CASPL.BOOSTING", save_artifact(tmp_path / "words.safetensors", text=of_a[None]))
    model = trainer.model
    sentences = tokenize([f"a photo of a {name}." for name in trainer.dm.dataset.classnames])
    with torch.no_grad():
        got = model.text_encoder(model.prompt_learner(), model.tokenized_prompts)
        expected = clip.encode_text(sentences)
    assert torch.equal(model.tokenized_prompts.argmax(-1), sentences.argmax(-1))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_deep_boosting_tokens_match_a_hand_built_forward(data_root, tmp_path):
    g = torch.Generator().manual_seed(3)
    text, vision = torch.randn(3, 2, TEXT_WIDTH, generator=g), torch.randn(2, 3, VISION_WIDTH, generator=g)
    trainer = build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.HOSTCOOP.N_CTX", 3,
                    "TRAINER.CASPL.BOOSTING", save_artifact(tmp_path / "deep.safetensors", text, vision))
    model, pixels = trainer.model, images()
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(pixels), hand_image(model.image_encoder, pixels, vision))
        torch.testing.assert_close(model.text_encoder(model.prompt_learner(), model.tokenized_prompts),
                                   hand_text(model.text_encoder, model.prompt_learner, text, host_eot(trainer, 3) + 2))


def test_ivlp_fork_boosting_and_host_prompts_coexist(data_root, tmp_path):
    """Host: 2 text + 2 vision prompts to depth 3; boosting: 2 text + 3 vision tokens to depth 2."""
    g = torch.Generator().manual_seed(4)
    text, vision = torch.randn(2, 2, TEXT_WIDTH, generator=g), torch.randn(2, 3, VISION_WIDTH, generator=g)
    trainer = build(data_root, tmp_path, "CasPL_HostIVLP", "TRAINER.HOSTIVLP.PROMPT_DEPTH_TEXT", 3,
                    "TRAINER.HOSTIVLP.PROMPT_DEPTH_VISION", 3,
                    "TRAINER.CASPL.BOOSTING", save_artifact(tmp_path / "ivlp.safetensors", text, vision))
    model, pixels = trainer.model, images()
    assert model.caspl_boosting.handle.family == "IVLP"
    tower, encoder = model.image_encoder, model.text_encoder
    seen = {}

    def keep(key):
        return lambda _module, args: seen.__setitem__(key, args[0].detach().clone())

    tower.ln_pre.register_forward_pre_hook(keep("ln_pre"))
    for kind, blocks in (("vision", tower.transformer.resblocks), ("text", encoder.transformer.resblocks)):
        for i, block in enumerate(blocks):
            block.ln_1.register_forward_pre_hook(keep((kind, i)))  # what block i attends over
    with torch.no_grad():
        logits = model(pixels)
    x = seen["ln_pre"]  # [CLS][patches][boosting 3][host VPT 2], batch-first
    assert x.shape[1] == BASE + 3 + 2
    assert torch.equal(x[:, BASE:BASE + 3], vision[0].expand(2, -1, -1)) and torch.equal(x[:, BASE + 3:], tower.VPT.expand(2, -1, -1))
    x = seen["vision", 1]
    assert torch.equal(x[BASE:BASE + 3], seq_first(vision[1], 2))
    assert torch.equal(x[BASE + 3:], seq_first(tower.transformer.resblocks[1].VPT_shallow, 2))
    assert torch.equal(seen["vision", 2][BASE + 3:], seq_first(tower.transformer.resblocks[2].VPT_shallow, 2))
    n_cls = model.prompt_learner.n_cls
    x = seen["text", 1]  # [SOS][host ctx 2][boosting 2][class . EOS]
    assert torch.equal(x[1:3], seq_first(encoder.transformer.resblocks[1].VPT_shallow, n_cls))
    assert torch.equal(x[3:5], seq_first(text[1], n_cls))
    torch.testing.assert_close(seen["text", 0][3:5], seq_first(text[0] + encoder.positional_embedding[3:5], n_cls))

    with torch.no_grad():
        torch.testing.assert_close(tower(pixels), hand_image(tower, pixels, vision))
        torch.testing.assert_close(encoder(model.prompt_learner(), model.tokenized_prompts),
                                   hand_text(encoder, model.prompt_learner, text, host_eot(trainer, 2) + 2))
    assert torch.isfinite(logits).all()


def test_zero_tokens_and_removed_hooks_leave_the_host_exactly_as_it_was(data_root, tmp_path):
    empty = save_artifact(tmp_path / "empty.safetensors", torch.zeros(1, 0, TEXT_WIDTH), torch.zeros(1, 0, VISION_WIDTH))
    assert BoostingArtifact.load(empty).n_text == 0 == BoostingArtifact.load(empty).n_vision
    plain = build(data_root, tmp_path / "plain", "HostCoOp")
    pixels = images()
    with torch.no_grad():
        expected, expected_image = plain.model(pixels), plain.model.image_encoder(pixels)

    zero = build(data_root, tmp_path / "zero", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", empty)
    assert zero.model.caspl_boosting.hooks == []
    assert torch.equal(zero.model.tokenized_prompts, plain.model.tokenized_prompts)
    with torch.no_grad():
        assert torch.equal(zero.model(pixels), expected)

    text_only = save_artifact(tmp_path / "text.safetensors", torch.randn(2, 2, TEXT_WIDTH), torch.zeros(1, 0, VISION_WIDTH))
    boosted = build(data_root, tmp_path / "text", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", text_only)
    with torch.no_grad():
        assert torch.equal(boosted.model.image_encoder(pixels), expected_image)
        assert not torch.allclose(boosted.model(pixels), expected)

    full = build(data_root, tmp_path / "full", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    attached = full.model.caspl_boosting
    assert len(attached.hooks) == 1 + 1 + 1 + 1  # prompt learner, text block 1, ln_pre, vision block 1
    with torch.no_grad():
        assert not torch.allclose(full.model.image_encoder(pixels), expected_image)
    attached.remove()
    assert not hasattr(full.model, "caspl_boosting")
    assert torch.equal(full.model.tokenized_prompts, plain.model.tokenized_prompts)
    assert full.model.prompt_learner.tokenized_prompts is full.model.tokenized_prompts
    with torch.no_grad():
        assert torch.equal(full.model(pixels), expected)


def test_hooks_take_cocoop_and_maple_shapes(data_root, tmp_path):
    """CoCoOp's prompt learner returns ``[B, n_cls, L, W]``; MaPLe's a tuple, and its blocks take lists."""
    trainer = build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.HOSTCOOP.N_CTX", 3,
                    "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    model, group = trainer.model, trainer.boosting_group
    learner_hook = model.prompt_learner._forward_hooks[model.caspl_boosting.hooks[0].id]
    per_image = torch.zeros(4, 5, TINY["context_length"], TEXT_WIDTH)
    out = learner_hook(model.prompt_learner, (), per_image)
    assert out.shape == per_image.shape and torch.equal(out[:, :, 4:6], group.text[0].expand(4, 5, -1, -1))
    maple_out = learner_hook(model.prompt_learner, (), (per_image[0], "shared_ctx", ["deep"]))
    assert torch.equal(maple_out[0][:, 4:6], group.text[0].expand(5, -1, -1)) and maple_out[1:] == ("shared_ctx", ["deep"])

    block = model.image_encoder.transformer.resblocks[1]
    block_hook = next(iter(block._forward_pre_hooks.values()))
    x = torch.zeros(BASE + 3, 2, VISION_WIDTH)
    (replaced,) = block_hook(block, ([x, ["compound"], 0],))
    assert isinstance(replaced, list) and replaced[1:] == [["compound"], 0]
    assert torch.equal(replaced[0][BASE:], seq_first(group.vision[1], 2)) and not replaced[0][:BASE].any()


def test_fp16_host_gets_fp16_boosting_tokens(data_root, tmp_path):
    trainer = build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.HOSTCOOP.PREC", "fp16",
                    "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    model, group = trainer.model, trainer.boosting_group
    seen = {}
    model.image_encoder.ln_pre.register_forward_pre_hook(lambda _m, args: seen.__setitem__("vision", args[0]))
    with torch.no_grad():
        prompts = model.prompt_learner()
        logits = model(images())
    assert prompts.dtype == torch.float16 and torch.equal(prompts[:, 5:7], group.text[0].half().expand(len(prompts), -1, -1))
    assert seen["vision"].dtype == torch.float16 and torch.equal(seen["vision"][:, BASE:], group.vision[0].half().expand(2, -1, -1))
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


def test_unknown_clip_names_the_trainer_the_modules_and_the_fix(data_root, tmp_path):
    with pytest.raises(TypeError) as error:
        build(data_root, tmp_path, "CasPL_HostNoClip", "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    message = str(error.value)
    assert "trainer CasPL_HostNoClip" in message
    assert "model: torch.nn.modules.container.Sequential" in message
    assert "OpenAI clip, CoOp/CoCoOp layout" in message and "OpenAI clip fork with deep prompts" in message
    assert "ClipAdapter" in message and "caspl_clip_adapters" in message


def test_artifact_of_other_widths_is_refused(data_root, tmp_path):
    narrow = save_artifact(tmp_path / "narrow.safetensors", torch.randn(1, 2, 32), geometry=dict(HOST_GEOMETRY, text_width=32))
    with pytest.raises(ArtifactMismatchError, match="text_width: artifact 32 vs student 48"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", narrow)


def test_reloading_with_another_artifact_is_refused(data_root, tmp_path):
    first, other = random_artifact(tmp_path / "a.safetensors", seed=0), random_artifact(tmp_path / "b.safetensors", seed=1)
    trained = build(data_root, tmp_path / "run", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", first)
    with torch.no_grad():
        trained.model.prompt_learner.ctx.add_(1.0)
    trained.save_model(0, str(tmp_path / "run"))
    with pytest.raises(ArtifactMismatchError, match="trained with boosting artifact"):
        build(data_root, tmp_path / "eval", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", other).load_model(str(tmp_path / "run"), epoch=1)
    same = build(data_root, tmp_path / "eval2", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", first)
    same.load_model(str(tmp_path / "run"), epoch=1)
    assert torch.equal(same.model.prompt_learner.ctx, trained.model.prompt_learner.ctx)


def test_host_layouts_the_adapters_cannot_serve_are_refused_clearly(data_root, tmp_path):
    from caspl_plugin.toy import domain

    boosting = random_artifact(tmp_path / "b.safetensors", text=(1, 4))
    with pytest.raises(ValueError, match="TRAINER.HOSTCOOP.CLASS_TOKEN_POSITION is 'middle'"):  # before the build
        build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.HOSTCOOP.CLASS_TOKEN_POSITION", "middle",
              "TRAINER.CASPL.BOOSTING", boosting)
    with pytest.raises(ValueError, match="do not fit the context length 32") as error:  # SOS + 24 + name . EOS + 4 > 32
        build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.HOSTCOOP.N_CTX", 24, "TRAINER.CASPL.BOOSTING", boosting)
    assert any(repr(name) in str(error.value) for name in domain.class_names())


def test_learnable_boosting_ablation_trains_through_the_hooks(data_root, tmp_path):
    trainer = build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.CASPL.LEARNABLE_BOOSTING", True,
                    "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    group = trainer.boosting_group
    before = {k: v.clone() for k, v in group.state_dict().items()}
    batch = next(iter(trainer.train_loader_x))
    trainer.batch_idx, trainer.num_batches = 0, 2
    for _ in range(2):  # a second step re-reads the (updated) tokens
        trainer.forward_backward(batch)
    assert all(not torch.equal(before[k], v) for k, v in group.state_dict().items())


# --- the authors' depth rule (TRAINER.CASPL.BOOSTING_DEPTH method) ----------------------------------

def authors_layout(trained, depth, width, generator):
    """By hand: ``depth`` rows of N(0, 0.02) from ``generator``, the trained rows copied over the first ones."""
    fill = torch.empty(depth, trained.shape[1], width).normal_(0.0, 0.02, generator=generator)
    rows = min(depth, trained.shape[0])
    fill[:rows] = trained[:rows]
    return fill


def test_method_depth_places_the_authors_layout_in_a_host(data_root, tmp_path):
    """Boosting trained at depth 1 (the domain-generalisation route) into an IVLP fork of depth 3: rows
    1-2 are frozen seeded N(0, 0.02) tokens; the forward equals the hand-built one with that layout."""
    g = torch.Generator().manual_seed(6)
    text, vision = torch.randn(1, 2, TEXT_WIDTH, generator=g), torch.randn(1, 3, VISION_WIDTH, generator=g)
    path = save_artifact(tmp_path / "shallow.safetensors", text, vision)
    opts = ("TRAINER.HOSTIVLP.PROMPT_DEPTH_TEXT", 3, "TRAINER.HOSTIVLP.PROMPT_DEPTH_VISION", 3, "TRAINER.CASPL.BOOSTING", path,
            "TRAINER.CASPL.BOOSTING_DEPTH", "method", "TRAINER.CASPL.BOOSTING_SEED", 7)
    trainer = build(data_root, tmp_path / "m", "CasPL_HostIVLP", *opts)
    seeded = torch.Generator().manual_seed(7)
    expected_text = authors_layout(text, 3, TEXT_WIDTH, seeded)  # text first, then vision (documented order)
    expected_vision = authors_layout(vision, 3, VISION_WIDTH, seeded)
    group = trainer.boosting_group
    assert torch.equal(group.text.detach(), expected_text) and torch.equal(group.vision.detach(), expected_vision)
    assert not group.learnable and abs(float(group.text[1:].std()) - 0.02) < 0.01
    model, pixels = trainer.model, images()
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(pixels), hand_image(model.image_encoder, pixels, expected_vision))
        torch.testing.assert_close(model.text_encoder(model.prompt_learner(), model.tokenized_prompts),
                                   hand_text(model.text_encoder, model.prompt_learner, expected_text, host_eot(trainer, 2) + 2))
        artifact_depth = build(data_root, tmp_path / "a", "CasPL_HostIVLP", *opts[:-4])
        assert artifact_depth.boosting_group.text.shape[0] == 1
        assert not torch.allclose(artifact_depth.model(pixels), model(pixels))
    # the fill is part of what was trained with: another seed is refused on reload
    trainer.save_model(0, str(tmp_path / "m"))
    other_seed = build(data_root, tmp_path / "o", "CasPL_HostIVLP", *opts[:-1], 8)
    with pytest.raises(ArtifactMismatchError, match="BOOSTING_DEPTH / BOOSTING_SEED"):
        other_seed.load_model(str(tmp_path / "m"), epoch=1)


def test_method_depth_fillers_follow_the_run_seed_by_default(data_root, tmp_path):
    """BOOSTING_SEED -1 (the default): the fillers come from the run's SEED, as in the authors' runs:
    seeds 1 and 2 differ, the same seed repeats."""
    g = torch.Generator().manual_seed(6)
    path = save_artifact(tmp_path / "shallow.safetensors", torch.randn(1, 2, TEXT_WIDTH, generator=g),
                         torch.randn(1, 3, VISION_WIDTH, generator=g))
    opts = ("TRAINER.HOSTIVLP.PROMPT_DEPTH_TEXT", 3, "TRAINER.HOSTIVLP.PROMPT_DEPTH_VISION", 3, "TRAINER.CASPL.BOOSTING", path,
            "TRAINER.CASPL.BOOSTING_DEPTH", "method")
    fillers = {}
    for run, seed in (("a", 1), ("b", 2), ("c", 1)):
        group = build(data_root, tmp_path / run, "CasPL_HostIVLP", *opts, "SEED", seed).boosting_group
        fillers[run] = group.text.detach()[1:].clone()
        seeded = torch.Generator().manual_seed(seed)
        assert torch.equal(group.text.detach()[1:], authors_layout(torch.zeros(1, 2, TEXT_WIDTH), 3, TEXT_WIDTH, seeded)[1:])
    assert not torch.equal(fillers["a"], fillers["b"]) and torch.equal(fillers["a"], fillers["c"])


def test_method_depth_drops_trained_layers_below_the_hosts_depth(data_root, tmp_path):
    g = torch.Generator().manual_seed(8)
    text, vision = torch.randn(3, 2, TEXT_WIDTH, generator=g), torch.randn(3, 3, VISION_WIDTH, generator=g)
    trainer = build(data_root, tmp_path, "CasPL_HostIVLP", "TRAINER.CASPL.BOOSTING", save_artifact(tmp_path / "deep.safetensors", text, vision),
                    "TRAINER.CASPL.BOOSTING_DEPTH", "method")  # the host's depth is 2
    group = trainer.boosting_group
    assert torch.equal(group.text.detach(), text[:2]) and torch.equal(group.vision.detach(), vision[:2])
    coop = build(data_root, tmp_path / "c", "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", str(tmp_path / "deep.safetensors"),
                 "TRAINER.CASPL.BOOSTING_DEPTH", "method")  # no deep prompts of its own: the artifact's depth
    assert torch.equal(coop.boosting_group.text.detach(), text)


def test_missing_or_bad_artifact_fails_before_the_host_builds_anything(data_root, tmp_path, monkeypatch):
    from caspl_plugin.artifacts.store import ArtifactError, save_artifact as save_raw

    built = []
    monkeypatch.setattr(host.HostCoOp, "build_clip", lambda self: built.append("clip"))
    from dassl.engine.trainer import SimpleTrainer

    monkeypatch.setattr(SimpleTrainer, "build_data_loader", lambda self: built.append("data"))
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    save_raw(tmp_path / "classifier.safetensors", {"w": torch.zeros(2)}, {"format": "caspl-classifier", "format_version": 1})
    good = random_artifact(tmp_path / "good.safetensors")
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray((tmp_path / "good.safetensors").read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    cases = [(tmp_path / "missing.safetensors", FileNotFoundError, "no boosting artifact"),
             (tmp_path / "garbage.safetensors", ArtifactError, "not a safetensors file"),
             (tmp_path / "classifier.safetensors", ArtifactError, "'caspl-classifier' artifact"),
             (tampered, ArtifactError, "TRAINER.CASPL.BOOSTING")]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", str(path))
    with pytest.raises(ValueError, match="BOOSTING_DEPTH"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", good, "TRAINER.CASPL.BOOSTING_DEPTH", "deepest")
    assert built == []
