"""TorchScript archives (OpenAI's CLIP .pt files) are read as data: their code never runs."""
import re
import sys
import warnings
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch import nn

from caspl_plugin.artifacts.checkpoint_reader import CheckpointError, read_torchscript
from caspl_plugin.clip import IncompatibleWeightsError, create_clip, uses_quick_gelu

sys.path.insert(0, str(Path(__file__).parent))
from host_project.openai_clip import CLIP, to_fp16  # noqa: E402

# the geometry of caspl-tiny-student, in OpenAI's layout
STUDENT_GEOMETRY = dict(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=3, vision_heads=2,
                        context_length=32, text_width=64, text_layers=3, text_heads=2)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated but still writes archives
        return function(*args, **kwargs)


def traced_openai_clip(path: Path, half: bool = True) -> dict:
    """An OpenAI-style JIT archive: the OpenAI-layout CLIP traced (encode_image / encode_text), in
    fp16 with fp32 LayerNorms, with OpenAI's integer buffers. Returns the module's own state dict."""
    torch.manual_seed(5)
    model = CLIP(STUDENT_GEOMETRY).eval()
    if half:
        to_fp16(model)
    del model.context_length  # OpenAI's JIT files keep it as an integer tensor
    for key, value in {"input_resolution": 32, "context_length": 32, "vocab_size": 49408}.items():
        model.register_buffer(key, torch.tensor(value))
    inputs = {
        "encode_image": torch.randn(1, 3, 32, 32).to(model.dtype),
        "encode_text": torch.randint(0, 100, (1, 32)),
    }
    traced = _quiet(torch.jit.trace_module, model, inputs, check_trace=False)
    _quiet(torch.jit.save, traced, str(path))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_traced_openai_layout_clip_loads_with_quickgelu_and_equal_tensors(tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    expected = traced_openai_clip(path)
    archive = read_torchscript(path)
    assert list(archive.state_dict) == list(expected)
    for key, tensor in expected.items():
        assert archive.state_dict[key].dtype == tensor.dtype and torch.equal(archive.state_dict[key], tensor), key
    assert "QuickGELU" in archive.class_names

    loaded = create_clip("caspl-tiny-student", path)
    assert loaded.weights.openai_format and loaded.weights.quick_gelu
    assert uses_quick_gelu(loaded.model)
    got = loaded.model.state_dict()
    assert torch.equal(got["visual.conv1.weight"], expected["visual.conv1.weight"].float())
    assert torch.equal(got["text_projection"], expected["text_projection"].float())
    block = "transformer.resblocks.1"
    for suffix in ("attn.in_proj_weight", "mlp.c_fc.weight", "ln_2.bias"):
        assert torch.equal(got[f"{block}.{suffix}"], expected[f"{block}.{suffix}"].float()), suffix


class _Scripted(nn.Module):
    """A scripted module with a buffer, a plain tensor attribute (not state) and a bias-free Linear."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2, bias=False)
        self.norm = nn.LayerNorm(4)
        self.register_buffer("steps", torch.arange(3))
        self.plain = torch.ones(3)

    def forward(self, x):
        return self.head(self.norm(self.fc(x + self.plain)))


def test_a_scripted_archive_gives_the_same_state_dict_as_the_module(tmp_path):
    module = _Scripted()
    _quiet(torch.jit.save, _quiet(torch.jit.script, module), str(tmp_path / "scripted.pt"))
    state = read_torchscript(tmp_path / "scripted.pt").state_dict
    expected = module.state_dict()
    assert list(state) == list(expected)  # buffers and parameters only: "plain" is not state
    assert all(torch.equal(state[k], v) for k, v in expected.items())


class _WritesAFile(nn.Module):
    """Its TorchScript __setstate__ creates (and sizes) a file when the archive is loaded."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.weight = nn.Parameter(torch.zeros(2))
        self.mapped = torch.zeros(16)

    def forward(self, x):
        return x + self.weight + self.mapped[:2]

    @torch.jit.export
    def __getstate__(self):
        return (self.path, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]):
        self.path = state[0]
        self.weight = state[1]
        self.training = state[2]
        self.mapped = torch.from_file(self.path, True, 16)


class _Carrier(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.inner = _WritesAFile(path)
        self.proj = nn.Linear(2, 2)

    def forward(self, x):
        return self.proj(self.inner(x))


def test_an_archive_whose_setstate_writes_a_file_never_creates_it(tmp_path):
    target = tmp_path / "written-by-the-archive.bin"
    archive = tmp_path / "ViT-B-16.pt"
    _quiet(torch.jit.save, _quiet(torch.jit.script, _Carrier(str(target))), str(archive))
    assert not target.exists()

    with pytest.raises(CheckpointError, match=r"inner .*custom pickled state"):
        read_torchscript(archive)
    with pytest.raises(IncompatibleWeightsError, match=r"ViT-B-16.pt cannot be read as an OpenAI TorchScript CLIP"):
        create_clip("caspl-tiny-student", archive)
    assert not target.exists()

    # the archive is a real attack: torch's own loader runs its code and creates the file
    _quiet(torch.jit.load, str(archive))
    assert target.exists()


def test_a_checkpoint_is_not_a_torchscript_archive(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a TorchScript archive"):
        read_torchscript(tmp_path / "plain.pt")


def test_no_torch_jit_load_in_the_package():
    package = Path(__file__).resolve().parents[1] / "caspl_plugin"
    call = re.compile(r"jit\s*\.\s*load\s*\(")
    offenders = [str(p) for p in package.rglob("*.py") if call.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
