"""The text tower's short paths (trimmed to the longest EOT; shared prefix run once) give the numbers
of the full 77-token path, for every method, cascade, class position and depth, and run only the
positions they promise."""
import json

import open_clip
import pytest
import torch

from caspl_plugin.boosting.model import BoostingConfig, ZeroShotTeacher, boosting_student, make_boosting_group
from caspl_plugin.boosting.teacher import TextOnlyCLIP, TextTower
from caspl_plugin.clip import create_clip
from caspl_plugin.methods import IVLP, CoCoOp, CoOp, MaPLe, PromptSRC, ZeroShotCLIP
from caspl_plugin.methods.promptsrc import IMAGENET_TEMPLATES
from caspl_plugin.prompts import PromptedCLIP, PromptGroup, PromptSpec, Slot, collect_tokens
import caspl_plugin.prompts.text as text_module
from caspl_plugin.prompts.text import TEXT_MODES, PackedText, encode_token_ids, plan_text

DEPTH = 12  # text blocks of the deep tiny CLIP (ViT-B/16's depth), so prompt depths 9 and 12 exist
CONTEXT = 40
SHORT = ["cat", "sea lion", "golden retriever", "golden eagle"]


def _config(tmp_path_factory, name, **text):
    folder = tmp_path_factory.mktemp(name)
    cfg = {
        "embed_dim": 16, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": DEPTH, **text},
    }
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    return create_clip(name, weights="random")


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    return _config(tmp_path_factory, "caspl-test-deep-text")


@pytest.fixture(scope="module")
def noncausal(tmp_path_factory):
    return _config(tmp_path_factory, "caspl-test-noncausal-text", no_causal_mask=True)


@pytest.fixture(autouse=True)
def _always_share(monkeypatch):
    """The cost model takes the shared layout whenever anything is shared (at these tiny sizes it
    could pick the trimmed one): the shared path is what these tests check."""
    monkeypatch.setattr(text_module, "PIECE_PRICE", {"cpu": 0})


def _boosting(clip, depth, n=4):
    config = BoostingConfig(n_text=n, n_vision=2, depth_text=depth, depth_vision=min(depth, 2), ctx_init="")
    return make_boosting_group(clip, config, learnable=True, generator=torch.Generator().manual_seed(5))


def _longest_fitting_name(model) -> str:
    """A class name whose prompt fills the context (to a token): the tokenizer's limit. PromptSRC's
    anchor prompts (its 60 templates) must fit too."""
    templates = [model.template]
    if isinstance(model, PromptSRC):
        templates.append(max(IMAGENET_TEMPLATES, key=lambda t: len(model.clip.tokenizer.encode(t.format("")))))
    fitting = "x"
    for words in range(1, CONTEXT):
        name = " ".join(["zebra"] * words)
        try:
            for template in templates:
                model.clip.text_inputs([name], model.text_slots(), template, model.class_position)
        except ValueError:
            break
        fitting = name
    longest = max(int(model.clip.text_inputs([fitting], model.text_slots(), t, model.class_position).eot_index[0])
                  for t in templates)
    assert longest >= CONTEXT - 2  # at the limit (a word may take 1 token)
    return fitting


def _build(method, clip, depth, boosted, class_position="end", csc=False):
    boosting = _boosting(clip, depth) if boosted else None
    kwargs = {"boosting": boosting, "learnable_boosting": True}
    if method == "zeroshot":
        return ZeroShotCLIP(clip, SHORT, **kwargs)
    if method == "distiller":
        return boosting_student(clip, SHORT, _boosting(clip, depth))
    if method == "coop":
        return CoOp(clip, SHORT, n_ctx=4, class_position=class_position, csc=csc, **kwargs)
    if method == "cocoop":
        return CoCoOp(clip, SHORT, n_ctx=4, ctx_init="", **kwargs)
    if method == "ivlp":
        return IVLP(clip, SHORT, n_ctx_text=3, n_ctx_vision=2, depth_text=depth, depth_vision=2, ctx_init="", **kwargs)
    if method == "maple":
        return MaPLe(clip, SHORT, n_ctx=3, depth=depth, ctx_init="", **kwargs)
    if method == "promptsrc":
        return PromptSRC(clip, SHORT, n_ctx_text=3, n_ctx_vision=2, depth_text=depth, depth_vision=2, ctx_init="", **kwargs)
    raise AssertionError(method)


def _features_and_grads(model, mode, image_features):
    model.clip.text_mode = mode
    model.zero_grad(set_to_none=True)
    if model.image_conditioned_text:
        features = model.conditioned_class_features(image_features)
    else:
        features = model.encode_classes()
    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(7)).to(features.device)
    (features * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return features.detach(), grads


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _assert_paths_agree(model):
    model.set_class_names(SHORT + [_longest_fitting_name(model)])
    image_features = torch.randn(3, model.clip.embed_dim, generator=torch.Generator().manual_seed(2))
    full, full_grads = _features_and_grads(model, "full", image_features)
    assert full_grads, "no prompt gradients to compare"
    if not model.image_conditioned_text:  # CoCoOp's plan is checked by counting positions below
        plan = plan_text(model.text_inputs(), [p for p in model.text_prompts() if p.n], "shared", "cpu")
        assert isinstance(plan, PackedText) and plan.prefix > 1
    for mode in ("trimmed", "shared"):
        features, grads = _features_and_grads(model, mode, image_features)
        assert _relative(features, full) <= 1e-5, mode
        assert grads.keys() == full_grads.keys()
        for name in grads:
            assert _relative(grads[name], full_grads[name]) <= 1e-5, (mode, name)
    model.clip.text_mode = "shared"


CASES = [
    (method, depth, boosted)
    for method in ("zeroshot", "coop", "cocoop", "ivlp", "maple", "promptsrc", "distiller")
    for boosted in (False, True)
    for depth in (1, 9, 12)
    # zero-shot without boosting has no prompts (one case); the distiller always has its group
    if not (method == "zeroshot" and not boosted and depth != 1) and not (method == "distiller" and not boosted)
]


@pytest.mark.parametrize("method,depth,boosted", CASES)
def test_short_paths_equal_the_full_path(deep, method, depth, boosted):
    clip = PromptedCLIP(deep)
    model = _build(method, clip, depth, boosted)
    if method == "zeroshot" and not boosted:  # nothing learnable: features only
        model.set_class_names(SHORT + [_longest_fitting_name(model)])
        outs = {}
        for mode in TEXT_MODES:
            clip.text_mode = mode
            with torch.no_grad():
                outs[mode] = model.encode_classes()
        assert _relative(outs["shared"], outs["full"]) <= 1e-5 and _relative(outs["trimmed"], outs["full"]) <= 1e-5
        return
    _assert_paths_agree(model)


@pytest.mark.parametrize("class_position", ["end", "middle", "front"])
@pytest.mark.parametrize("boosted", [False, True])
@pytest.mark.parametrize("csc", [False, True])
def test_coop_class_positions_and_class_specific_context(deep, class_position, boosted, csc):
    clip = PromptedCLIP(deep)
    model = CoOp(clip, SHORT + ["placeholder"], n_ctx=4, class_position=class_position, csc=csc,
                 boosting=_boosting(clip, 9) if boosted else None, learnable_boosting=True)
    long_name = _longest_fitting_name(model)
    model.set_class_names(SHORT + [long_name])
    image_features = torch.randn(2, clip.embed_dim)
    full, full_grads = _features_and_grads(model, "full", image_features)
    shared, grads = _features_and_grads(model, "shared", image_features)
    assert _relative(shared, full) <= 1e-5
    assert all(_relative(grads[n], full_grads[n]) <= 1e-5 for n in full_grads)


def test_promptsrc_anchor_features_equal_the_full_path(deep):
    clip = PromptedCLIP(deep)
    model = PromptSRC(clip, SHORT, n_ctx_text=3, n_ctx_vision=2, depth_text=9, depth_vision=2, ctx_init="",
                      boosting=_boosting(clip, 12), anchor="boosted")
    anchors = {}
    for mode in ("full", "shared"):
        clip.text_mode = mode
        model._fixed_text_cache = None
        anchors[mode] = model.fixed_text_features()
    assert _relative(anchors["shared"], anchors["full"]) <= 1e-5


def _count_positions(clip):
    """Positions each text block runs, read from a hook on its first LayerNorm (hooks on the block
    itself would make it run its own forward)."""
    counts = []
    width = clip.text_width
    hooks = [block.ln_1.register_forward_hook(lambda m, args, out: counts.append(args[0].numel() // width))
             for block in clip.clip.transformer.resblocks]
    return counts, hooks


def test_positions_run_per_block(deep):
    clip = PromptedCLIP(deep)
    group = PromptGroup("boosting", "boosting", PromptSpec(4, 0, DEPTH, 1), clip.text_width, clip.vision_width)
    names = [f"{word} {i}" for i in range(10) for word in SHORT] + ["a much longer class name with many more words in it"]
    inputs = clip.text_inputs(names, [Slot("boosting", "boosting", 4)], "a photo of a {}.")
    prompts = collect_tokens([group], "text")
    rows, longest = len(names), int(inputs.eot_index.max()) + 1
    counts, hooks = _count_positions(clip)
    try:
        seen = {}
        for mode in TEXT_MODES:
            clip.text_mode = mode
            counts.clear()
            clip.encode_text(inputs, prompts)
            assert len(counts) == DEPTH and len(set(counts)) == 1
            seen[mode] = counts[0]
    finally:
        for hook in hooks:
            hook.remove()
    packed = plan_text(inputs, prompts, "shared", "cpu")
    assert isinstance(packed, PackedText)
    prefix = 1 + 4 + 4  # [SOS], 4 boosting tokens, "a photo of a" (the class names differ from there)
    buckets = packed.attention.buckets  # (suffix length, rows, groups)
    assert packed.prefix == prefix and packed.groups == 1
    assert seen["full"] == rows * CONTEXT
    assert seen["trimmed"] == rows * longest
    assert seen["shared"] == packed.tokens == prefix + sum(length * count for length, count, _ in buckets)
    assert seen["shared"] <= prefix + rows * (longest - prefix)
    assert sum(count for _, count, _ in buckets) == rows
    # at no price per bucket, one bucket per suffix length: the long name does not pad the short ones
    assert [length for length, _, _ in buckets] == sorted(set((inputs.eot_index + 1 - prefix).tolist()))
    assert len(buckets) >= 2 and buckets[-1][0] == longest - prefix


def test_cocoop_runs_one_prefix_per_image(deep):
    clip = PromptedCLIP(deep)
    model = CoCoOp(clip, SHORT, n_ctx=4, ctx_init="", boosting=_boosting(clip, 12))
    counts, hooks = _count_positions(clip)
    try:
        model.conditioned_class_features(torch.randn(3, clip.embed_dim))
    finally:
        for hook in hooks:
            hook.remove()
    inputs = model.text_inputs()
    prefix = 1 + 4 + 4  # [SOS], the per-image context, the boosting tokens
    suffix = int(inputs.eot_index.max()) + 1 - prefix
    assert counts[0] <= 3 * prefix + 3 * len(SHORT) * suffix < 3 * len(SHORT) * (prefix + suffix)


def test_no_prompts_equal_open_clip_encode_text(deep):
    clip = PromptedCLIP(deep)
    names = SHORT + ["x " * 50]  # one name longer than the context: open_clip truncates it
    texts = [f"a photo of a {n}." for n in names]
    reference = deep.model.encode_text(deep.tokenizer(texts))
    model = ZeroShotCLIP(clip, SHORT)
    with torch.no_grad():
        ours = model.encode_classes()
        assert _relative(ours, reference[: len(SHORT)]) <= 1e-5
        assert _relative(encode_token_ids(deep.model, deep.tokenizer(texts)), reference) <= 1e-5


def test_teacher_class_features_equal_encode_text_for_both_tower_kinds(deep):
    names = SHORT
    texts = [f"a photo of a {n}." for n in names]
    reference = torch.nn.functional.normalize(deep.model.encode_text(deep.tokenizer(texts)), dim=-1)
    teacher = ZeroShotTeacher(deep, names)
    assert _relative(teacher.text_features, reference) <= 1e-5
    text_only = TextOnlyCLIP(_text_tower(deep), deep.model.logit_scale)
    tower = TextTower(deep.name, deep.arch, text_only, deep.tokenizer, None, "")
    assert _relative(ZeroShotTeacher(tower, names, image_tower=False).text_features, reference) <= 1e-5


def _text_tower(backbone):
    """The backbone's text side as open_clip's own TextTransformer (what a cached run builds)."""
    cfg = open_clip.get_model_config(backbone.arch)
    text = open_clip.model._build_text_tower(cfg["embed_dim"], cfg["text_cfg"], True, None)
    state = {k: v for k, v in backbone.model.state_dict().items()
             if k.split(".", 1)[0] in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")}
    text.load_state_dict(state, strict=False)
    return text.eval()


def test_non_causal_tower_keeps_the_full_path(noncausal):
    clip = PromptedCLIP(noncausal)
    assert clip.text_path == "full"
    model = ZeroShotCLIP(clip, SHORT)
    with torch.no_grad():
        ours = model.encode_classes()
    reference = noncausal.model.encode_text(noncausal.tokenizer([f"a photo of a {n}." for n in SHORT]))
    assert _relative(ours, reference) <= 1e-5


def test_module_blocks_and_hooked_blocks_fall_back_to_trimmed(deep):
    clip = PromptedCLIP(deep)
    assert clip.text_path == "shared"
    clip.block_mode = "module"
    assert clip.text_path == "trimmed"
    clip.block_mode = "fused"
    hook = clip.clip.transformer.resblocks[3].register_forward_hook(lambda *args: None)
    try:
        assert clip.text_path == "trimmed"
    finally:
        hook.remove()
    clip.text_mode = "full"
    assert clip.text_path == "full"
    with pytest.raises(ValueError, match="text mode"):
        clip.text_mode = "fast"


@pytest.mark.parametrize("method", ["ivlp", "cocoop"])
def test_chunked_class_sets_equal_one_pass(deep, method):
    """``text_chunk``: at most that many prompts per pass, recomputed in backward; the same numbers."""
    clip = PromptedCLIP(deep)
    model = _build(method, clip, 9, True)
    model.set_class_names([f"{word} {i}" for i in range(6) for word in SHORT[:3]])  # 18 classes
    image_features = torch.randn(2, clip.embed_dim)
    one_pass, one_pass_grads = _features_and_grads(model, "shared", image_features)
    clip.text_chunk = 5
    counts, hooks = _count_positions(clip)
    try:
        chunked, grads = _features_and_grads(model, "shared", image_features)
    finally:
        for hook in hooks:
            hook.remove()
    rows = 18 * (2 if method == "cocoop" else 1)
    passes = -(-rows // 5)
    assert len(counts) == 2 * passes * DEPTH  # each pass ran forward, and again in backward
    assert _relative(chunked, one_pass) <= 1e-5
    assert all(_relative(grads[n], one_pass_grads[n]) <= 1e-5 for n in one_pass_grads)
    with pytest.raises(ValueError, match="max_rows"):
        clip.text_chunk = 0
        model.encode_classes() if method == "ivlp" else model.conditioned_class_features(image_features)


@pytest.mark.parametrize("command", ["distill", "adapt"])
def test_text_chunk_flag_is_checked(command, capsys):
    from caspl_plugin.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--text-chunk", "0", "-o", "unused.safetensors"])
    assert exit_info.value.code == 2
    assert "--text-chunk" in capsys.readouterr().err


def test_cost_model_takes_the_trimmed_layout_when_sharing_costs_more(deep, monkeypatch):
    clip = PromptedCLIP(deep)
    model = ZeroShotCLIP(clip, SHORT, boosting=_boosting(clip, 12))
    prompts = model.text_prompts()
    monkeypatch.setattr(text_module, "PIECE_PRICE", {"cpu": 10**6})  # an attention call dearer than any positions
    plan = plan_text(model.text_inputs(), prompts, "shared", "cpu")
    assert not isinstance(plan, PackedText) and plan.length == int(model.text_inputs().eot_index.max()) + 1
    with torch.no_grad():
        trimmed = model.encode_classes()
        clip.text_mode = "full"
        assert _relative(trimmed, model.encode_classes()) <= 1e-5
    assert text_module.bucket_lengths(torch.tensor([3, 3, 4, 9]), price=10**6)[0] == [9]
    assert text_module.bucket_lengths(torch.tensor([3, 3, 4, 9]), price=0) == ([3, 4, 9], 3 + 3 + 4 + 9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels of the short paths")
@pytest.mark.parametrize("method", ["ivlp", "cocoop", "promptsrc"])
def test_short_paths_equal_the_full_path_on_cuda(deep, method):
    clip = PromptedCLIP(deep).to("cuda")
    model = _build(method, clip, 12, True).to("cuda")
    model.set_class_names([f"{word} {i}" for i in range(8) for word in SHORT])
    image_features = torch.randn(2, clip.embed_dim, device="cuda")
    full, full_grads = _features_and_grads(model, "full", image_features)
    for mode in ("trimmed", "shared"):
        features, grads = _features_and_grads(model, mode, image_features)
        assert _relative(features, full) <= 1e-4, mode
        assert all(_relative(grads[n], full_grads[n]) <= 1e-4 for n in full_grads), mode
