"""CLIP backbones: names, weight sources, file formats, activation safety and not-found errors.

Every model here is a tiny config except one ViT-B/16 (the shared session fixture).
"""
import argparse
import copy
import json
import time
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from caspl_plugin.clip import (
    PACKAGE_WEIGHT_LOADERS,
    IncompatibleWeightsError,
    WeightsNotFoundError,
    create_clip,
    resolve_model_name,
    resolve_weights,
    uses_quick_gelu,
)
from caspl_plugin.clip.weights import offline_reason

TINY = "caspl-tiny-student"
OPENAI_INTS = {"input_resolution": 32, "context_length": 32, "vocab_size": 49408}
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# GELU architectures like ViT-B-16: one with a "-quickgelu" sibling, one without
GELU_ARCH, SOLO_GELU_ARCH = "cliptest-gelu", "cliptest-gelu-solo"


@pytest.fixture(scope="module", autouse=True)
def test_configs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model_configs")
    for arch, quick in ((GELU_ARCH, False), (f"{GELU_ARCH}-quickgelu", True), (SOLO_GELU_ARCH, False)):
        (directory / f"{arch}.json").write_text(json.dumps({**TINY_CFG, "quick_gelu": quick}))
    open_clip.add_model_config(directory)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Offline, no weights directory, and empty open_clip / CoOp / Hugging Face caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CASPL_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def features(backbone):
    """encode_image / encode_text of fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size, generator=generator)
    tokens = backbone.tokenizer(["a photo of a cat.", "a blurry photo of a dog."])
    with torch.no_grad():
        return backbone.model.encode_image(images), backbone.model.encode_text(tokens)


def assert_same_outputs(loaded, source):
    for got, expected in zip(features(loaded), features(source)):
        assert got.dtype == torch.float32
        assert torch.equal(got, expected)


def state_of(backbone):
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def save_torchscript(backbone, path, openai_ints=True):
    """A TorchScript archive holding the model's modules and parameters under the CLIP keys, plus
    OpenAI's integer entries (as OpenAI's JIT files have them)."""
    clip = copy.deepcopy(backbone.model)
    archive = torch.nn.Module()
    for name, child in clip.named_children():
        archive.add_module(name, child)
    for name, parameter in clip.named_parameters(recurse=False):
        archive.register_parameter(name, parameter)
    if openai_ints:
        for key, value in OPENAI_INTS.items():
            archive.register_buffer(key, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still reads/writes
        torch.jit.save(torch.jit.script(archive), str(path))
    return path


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(123)
    return create_clip(TINY, "random")


# --- names ---------------------------------------------------------------------------------------


def test_dassl_names_map_to_open_clip_architectures():
    assert resolve_model_name("ViT-B/16") == "ViT-B-16"
    assert resolve_model_name("ViT-B/16", quick_gelu=True) == "ViT-B-16-quickgelu"
    assert resolve_model_name("ViT-L/14", quick_gelu=True) == "ViT-L-14-quickgelu"
    assert resolve_model_name("ViT-L/14@336px") == "ViT-L-14-336"
    assert resolve_model_name("ViT-B-16-quickgelu", quick_gelu=False) == "ViT-B-16"
    assert resolve_model_name("ViT-B-16-quickgelu") == "ViT-B-16-quickgelu"
    assert resolve_model_name(TINY, quick_gelu=True) == TINY


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"Unknown CLIP model 'ViT-B/61'.*Did you mean: .*ViT-B/16"):
        create_clip("ViT-B/61")


def test_unknown_tag_lists_the_model_tags():
    with pytest.raises(ValueError, match=r"Unknown weights 'laion2b'.*laion2b_s34b_b88k.*Did you mean"):
        resolve_weights("ViT-B/16", "laion2b")


def test_vit_b16_geometry(vit_b16):
    assert vit_b16.arch == "ViT-B-16"
    assert vit_b16.describe() == {
        "backbone": "ViT-B/16", "arch": "ViT-B-16", "text_width": 512, "text_depth": 12, "vision_width": 768,
        "vision_depth": 12, "embed_dim": 512, "context_length": 77, "image_size": 224,
    }  # fmt: skip


# --- file formats round trip ---------------------------------------------------------------------


def write_plain(state, path):
    torch.save(state, path / "weights.pt")
    return path / "weights.pt"


def write_safetensors(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "weights.safetensors"))
    return path / "weights.safetensors"


def write_checkpoint_wrapper(state, path):
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path / "ckpt.pth")
    return path / "ckpt.pth"


def write_openai_state_dict(state, path):
    torch.save({**state, **OPENAI_INTS}, path / "openai_state.pt")
    return path / "openai_state.pt"


@pytest.mark.parametrize(
    "write, openai_format",
    [(write_plain, False), (write_safetensors, False), (write_checkpoint_wrapper, False), (write_openai_state_dict, True)],
)
def test_state_dict_files_round_trip(source, tmp_path, write, openai_format):
    path = write(state_of(source), tmp_path)
    loaded = create_clip(TINY, str(path))
    assert loaded.weights.kind == "file" and loaded.weights.location == str(path)
    assert loaded.weights.openai_format is openai_format
    assert_same_outputs(loaded, source)


def test_torchscript_archive_round_trip(source, tmp_path):
    path = save_torchscript(source, tmp_path / "ViT-tiny.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = create_clip(TINY, path)
    assert loaded.weights.openai_format and loaded.weights.quick_gelu
    assert_same_outputs(loaded, source)


def test_fp16_openai_weights_are_loaded_as_fp32(source, tmp_path):
    half = {k: v.half() if v.is_floating_point() else v for k, v in state_of(source).items()}
    loaded = create_clip(TINY, write_openai_state_dict(half, tmp_path))
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    reference = create_clip(TINY, "random")
    reference.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    assert_same_outputs(loaded, reference)


def test_model_is_frozen_eval_and_on_the_requested_device(source, tmp_path):
    loaded = create_clip(TINY, write_plain(state_of(source), tmp_path), device="cpu")
    assert not loaded.model.training
    assert all(not p.requires_grad and p.device.type == "cpu" for p in loaded.model.parameters())


# --- activation: OpenAI weights need QuickGELU ------------------------------------------------------


@pytest.fixture(scope="module")
def openai_style_source():
    torch.manual_seed(7)
    return create_clip(f"{GELU_ARCH}-quickgelu", "random")


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_openai_weights_turn_a_gelu_name_into_quickgelu(openai_style_source, tmp_path, fmt):
    if fmt == "torchscript":
        path = save_torchscript(openai_style_source, tmp_path / "clip.pt")
    else:
        path = write_openai_state_dict(state_of(openai_style_source), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = create_clip(GELU_ARCH, path)
    assert loaded.arch == f"{GELU_ARCH}-quickgelu"
    assert uses_quick_gelu(loaded.model)
    assert_same_outputs(loaded, openai_style_source)


def test_openai_weights_get_quickgelu_without_a_quickgelu_sibling(openai_style_source, tmp_path):
    loaded = create_clip(SOLO_GELU_ARCH, write_openai_state_dict(state_of(openai_style_source), tmp_path))
    assert loaded.arch == SOLO_GELU_ARCH
    assert uses_quick_gelu(loaded.model)
    assert_same_outputs(loaded, openai_style_source)


def test_openai_weights_refuse_an_explicit_gelu(openai_style_source, tmp_path):
    path = write_openai_state_dict(state_of(openai_style_source), tmp_path)
    with pytest.raises(IncompatibleWeightsError, match=r"trained with QuickGELU.*quick_gelu=False"):
        create_clip(GELU_ARCH, path, quick_gelu=False)


def test_open_clip_gelu_weights_are_not_forced_to_quickgelu(tmp_path):
    torch.manual_seed(3)
    gelu = create_clip(GELU_ARCH, "random")
    assert not uses_quick_gelu(gelu.model)
    loaded = create_clip(GELU_ARCH, write_plain(state_of(gelu), tmp_path))
    assert loaded.arch == GELU_ARCH and not uses_quick_gelu(loaded.model)
    assert_same_outputs(loaded, gelu)
    # a TorchScript archive of a GELU model keeps GELU, even under a QuickGELU name
    script = save_torchscript(gelu, tmp_path / "gelu.pt", openai_ints=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = create_clip(f"{GELU_ARCH}-quickgelu", script)
    assert loaded.arch == GELU_ARCH and not uses_quick_gelu(loaded.model)
    assert_same_outputs(loaded, gelu)


def test_quick_gelu_override_for_weights_of_unknown_activation(source, tmp_path):
    loaded = create_clip(TINY, write_plain(state_of(source), tmp_path), quick_gelu=False)
    assert not uses_quick_gelu(loaded.model)
    assert not torch.equal(features(loaded)[1], features(source)[1])


# --- strict loading and unsafe files ----------------------------------------------------------------


def test_missing_and_unexpected_keys_name_the_file_and_the_model(source, tmp_path):
    state = state_of(source)
    del state["text_projection"]
    state["extra.weight"] = torch.zeros(1)
    path = write_plain(state, tmp_path)
    with pytest.raises(IncompatibleWeightsError) as error:
        create_clip(TINY, path)
    message = str(error.value)
    for part in (str(path), TINY, "1 missing key(s) [text_projection]", "1 unexpected key(s) [extra.weight]"):
        assert part in message


def test_weights_of_another_size_are_refused(tmp_path):
    torch.manual_seed(0)
    teacher = create_clip("caspl-tiny-teacher", "random")
    path = write_safetensors(state_of(teacher), tmp_path)
    with pytest.raises(IncompatibleWeightsError, match=rf"(?s){path}.*{TINY}.*size mismatch for positional_embedding"):
        create_clip(TINY, path)


def test_pickled_python_objects_are_not_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": argparse.Namespace(x=1)}, path)
    with pytest.raises(IncompatibleWeightsError, match="without unpickling"):
        create_clip(TINY, path)


# --- where weights are found ------------------------------------------------------------------------


def test_weights_dir_comes_before_the_environment(source, tmp_path, monkeypatch):
    configured, env = tmp_path / "configured", tmp_path / "env"
    configured.mkdir(), env.mkdir()
    write_safetensors(state_of(source), env).rename(env / f"{TINY}.safetensors")
    monkeypatch.setenv("CASPL_WEIGHTS_DIR", str(env))
    from_env = create_clip(TINY)
    assert from_env.weights.location == str(env / f"{TINY}.safetensors")
    assert_same_outputs(from_env, source)

    torch.save(state_of(source), configured / f"{TINY}.pt")
    assert create_clip(TINY, weights_dir=configured).weights.location == str(configured / f"{TINY}.pt")
    assert create_clip(TINY, configured).weights.location == str(configured / f"{TINY}.pt")


@pytest.mark.parametrize("name, file_name", [("ViT-B/16", "ViT-B-16.pt"), ("ViT-L/14@336px", "ViT-L-14-336px.pt")])
def test_dassl_names_find_coop_style_file_names(tmp_path, name, file_name):
    (tmp_path / file_name).write_bytes(b"not read by resolve_weights")
    found = resolve_weights(name, weights_dir=tmp_path)
    assert (found.kind, found.location) == ("file", str(tmp_path / file_name))


def test_openai_tag_is_found_in_the_coop_download_cache(tmp_path):
    cached = tmp_path / "home" / ".cache" / "clip" / "ViT-B-16.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not read by resolve_weights")
    for weights in ("openai", None):
        found = resolve_weights("ViT-B/16", weights)
        assert (found.kind, found.location, found.path) == ("tag", "openai", str(cached))
        assert found.openai_format and found.quick_gelu


def test_tags_are_found_in_the_hugging_face_cache(tmp_path):
    repo = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    cached = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not read by resolve_weights")
    found = resolve_weights("ViT-B-16", "openai")
    assert (found.kind, found.path, found.quick_gelu) == ("tag", str(cached), True)


def test_package_weight_loaders_are_the_default_for_package_models(source, monkeypatch):
    monkeypatch.setitem(PACKAGE_WEIGHT_LOADERS, TINY, lambda: state_of(source))
    loaded = create_clip(TINY)
    assert (loaded.weights.kind, loaded.weights.location) == ("package", TINY)
    assert_same_outputs(loaded, source)
    assert create_clip(TINY, "random").weights.kind == "random"


def test_no_weights_offline_is_one_fast_error_listing_every_place(tmp_path, monkeypatch):
    configured, env = tmp_path / "configured", tmp_path / "env"
    configured.mkdir(), env.mkdir()
    monkeypatch.setenv("CASPL_WEIGHTS_DIR", str(env))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        create_clip("ViT-B/16", weights_dir=configured)
    assert time.perf_counter() - start < 2.0
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    expected = [str(d / f"ViT-B-16{ext}") for d in (configured, env) for ext in (".pt", ".pth", ".bin", ".safetensors")]
    expected += [
        str(tmp_path / "home" / ".cache" / "clip" / "ViT-B-16.pt"),
        str(tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_clip_224.openai"),
    ]
    for part in ["'ViT-B/16'", "HF_HUB_OFFLINE=1", "weights_dir", "CASPL_WEIGHTS_DIR", "weights='random'", *expected]:
        assert part in message


def test_a_missing_file_is_a_not_found_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"(?s)'caspl-tiny-student'.*nope\.pt \(no such file\)"):
        create_clip(TINY, tmp_path / "nope.pt")


def test_unresolvable_hosts_count_as_offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    assert "no-such-host.invalid cannot be resolved" in offline_reason("no-such-host.invalid")
    assert time.perf_counter() - start < 2.5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline_reason("huggingface.co") == "HF_HUB_OFFLINE=1"
