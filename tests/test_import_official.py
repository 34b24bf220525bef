"""Restricted checkpoint reader and the import of the authors' phase-1 checkpoints."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import collections  # noqa: E402
import pickle  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from caspl_plugin import cli  # noqa: E402
from caspl_plugin.artifacts import ArtifactError, ArtifactMismatchError, BoostingArtifact  # noqa: E402
from caspl_plugin.artifacts.checkpoint_reader import (  # noqa: E402
    CheckpointError,
    CheckpointReader,
    PickledObject,
    TensorRef,
    read_checkpoint,
)
from caspl_plugin.boosting.official import import_official, read_class_names  # noqa: E402

TEXT_WIDTH, VISION_WIDTH = 512, 768  # ViT-B/16, the official student


def official_state_dict(n_text=8, n_vision=8, depth_text=12, depth_vision=12, seed=0):
    """A state dict laid out like the official phase-1 model: prompts among unrelated tensors."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, dtype=torch.float16):
        return torch.randn(*shape, generator=generator).to(dtype)

    state = collections.OrderedDict()
    state["prompt_learner_teacher.ctx"] = randn(n_text, TEXT_WIDTH)  # fp16, the CLIP dtype
    state["prompt_learner_teacher.token_prefix"] = randn(4, 1, TEXT_WIDTH)
    state["prompt_learner_teacher.ZS_image_encoder_teacher.conv1.weight"] = randn(64, 3, 14, 14)
    state["image_encoder.VPT"] = randn(n_vision, VISION_WIDTH)  # unused, frozen: must not be taken
    state["image_encoder.VPT_FIRST"] = randn(n_vision, VISION_WIDTH, dtype=torch.float32)
    state["image_encoder.conv1.weight"] = randn(VISION_WIDTH, 3, 2, 2)
    for i in range(1, max(depth_text, depth_vision)):
        if i < depth_text:
            state[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = randn(n_text, TEXT_WIDTH)
            state[f"text_encoder.transformer.resblocks.{i}.VPT_shallow_FIRST"] = randn(n_text, TEXT_WIDTH)
        if i < depth_vision:
            state[f"image_encoder.transformer.resblocks.{i}.VPT_shallow_FIRST"] = randn(n_vision, VISION_WIDTH)
        state[f"image_encoder.transformer.resblocks.{i}.attn.in_proj_weight"] = randn(8, VISION_WIDTH)
    return state


def write_official_checkpoint(path, state, epoch=20, legacy=False):
    """Save like Dassl does, with a real scheduler object in the file (what weights_only refuses)."""
    params = [torch.nn.Parameter(state["image_encoder.VPT_FIRST"].clone())]
    optimizer = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    scheduler.step()
    checkpoint = {
        "state_dict": state,
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler,
        "val_result": None,
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def official_path(tmp_path, dataset="oxford_pets"):
    folder = tmp_path / dataset / "shots_all" / "CasPL" / "vit_b16_c2_ep20_batch4_8+8ctx_l12" / "seed1" / "CasPL"
    folder.mkdir(parents=True)
    return folder / "model.pth.tar-20"


# -- the restricted reader ---------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_loads_what_weights_only_refuses(tmp_path, legacy):
    state = official_state_dict(depth_text=3, depth_vision=3)
    path = write_official_checkpoint(tmp_path / "model.pth.tar-20", state, legacy=legacy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    checkpoint = read_checkpoint(path)
    assert checkpoint["epoch"] == 20 and checkpoint["val_result"] is None
    assert list(checkpoint["state_dict"]) == list(state)
    for key, tensor in state.items():
        loaded = checkpoint["state_dict"][key]
        assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor), key
    scheduler = checkpoint["scheduler"]
    assert isinstance(scheduler, PickledObject)
    assert scheduler.pickled_global == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert scheduler.state["T_max"] == 20 and isinstance(scheduler.state["optimizer"], PickledObject)
    groups = checkpoint["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == 0.0025 and groups[0]["momentum"] == 0.9
    momentum = checkpoint["optimizer"]["state"][0]["momentum_buffer"]  # first step: grad + wd * param
    assert torch.allclose(momentum, 1 + 5e-4 * state["image_encoder.VPT_FIRST"])


def test_reader_keeps_views_and_strides(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    path = tmp_path / "views.pt"
    extras = {"tags": {"a", "b"}, "raw": b"\x00\xff", "size": torch.Size([2, 3]), "dtype": torch.float16}
    views = {"base": base, "column": base[:, 2], "transposed": base.t(), "scalar": torch.tensor(3.5)}
    torch.save({**views, **extras}, path)
    loaded = read_checkpoint(path)
    assert {key: loaded[key] for key in extras} == dict(extras, size=(2, 3))
    assert torch.equal(loaded["column"], base[:, 2]) and torch.equal(loaded["transposed"], base.t())
    assert loaded["scalar"].item() == 3.5
    assert loaded["column"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()


def test_reader_reads_tensors_lazily(tmp_path):
    state = official_state_dict(depth_text=2, depth_vision=2)
    path = write_official_checkpoint(tmp_path / "model.pth.tar-20", state)
    with CheckpointReader(path) as reader:
        entry = reader.load()["state_dict"]["image_encoder.VPT_FIRST"]
        assert isinstance(entry, TensorRef) and entry.shape == (8, VISION_WIDTH)
        assert reader._cache == {}
        assert torch.equal(entry.load(), state["image_encoder.VPT_FIRST"])
        assert len(reader._cache) == 1


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def test_reader_never_executes_pickled_code(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "malicious.pt"
    torch.save({"weights": torch.ones(2), "payload": _RunsCommand(f"touch {marker}"), "eval": _Evals()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = read_checkpoint(path)
    assert not marker.exists()
    payload = loaded["payload"]
    assert isinstance(payload, PickledObject) and payload.pickled_global.endswith(".system")
    assert payload.args == (f"touch {marker}",)
    assert isinstance(loaded["eval"], PickledObject) and loaded["eval"].pickled_global == "builtins.eval"
    assert torch.equal(loaded["weights"], torch.ones(2))


def test_reader_rejects_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt"):
        read_checkpoint(text)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="magic number"):
        read_checkpoint(plain_pickle)
    path = write_official_checkpoint(tmp_path / "model.pth.tar-20", official_state_dict(depth_text=1, depth_vision=1))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        read_checkpoint(truncated)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pth")


# -- import_official ---------------------------------------------------------------------------------


def test_import_official_8x8_depth12(tmp_path):
    state = official_state_dict()
    checkpoint = write_official_checkpoint(official_path(tmp_path), state)
    names = tmp_path / "classes.txt"
    names.write_text("abyssinian\namerican_bulldog\n\n  beagle  \n")
    out = tmp_path / "out" / "boosting.safetensors"
    artifact = import_official(checkpoint, out, class_names=names, template="a photo of a {}, a type of pet.")

    expected_text = torch.stack(
        [state["prompt_learner_teacher.ctx"]]
        + [state[f"text_encoder.transformer.resblocks.{i}.VPT_shallow_FIRST"] for i in range(1, 12)]
    ).float()
    expected_vision = torch.stack(
        [state["image_encoder.VPT_FIRST"]]
        + [state[f"image_encoder.transformer.resblocks.{i}.VPT_shallow_FIRST"] for i in range(1, 12)]
    ).float()
    loaded = BoostingArtifact.load(out)
    for result in (artifact, loaded):
        assert result.text.dtype == torch.float32 and torch.equal(result.text, expected_text)
        assert torch.equal(result.vision, expected_vision)
    meta = loaded.metadata
    assert meta["prompts"] == {"n_text": 8, "n_vision": 8, "depth_text": 12, "depth_vision": 12}
    assert meta["student"]["backbone"] == "ViT-B/16" and meta["student"]["text_width"] == TEXT_WIDTH
    assert meta["teacher"] == {"name": "ViT-L/14", "weights": "openai"}
    assert meta["class_names"] == ["abyssinian", "american_bulldog", "beagle"] and meta["num_classes"] == 3
    assert meta["dataset"] == "oxford_pets"
    assert meta["template"] == "a photo of a {}, a type of pet."
    assert meta["source"]["file"] == "model.pth.tar-20" and meta["source"]["epoch"] == 20
    assert meta["training"]["optimizer_initial_lr"] == 0.0025


def test_import_official_infers_depth_per_encoder(tmp_path):
    state = official_state_dict(n_text=4, n_vision=2, depth_text=3, depth_vision=1)
    checkpoint = write_official_checkpoint(tmp_path / "model.pth.tar-20", state)
    artifact = import_official(checkpoint, None, dataset="dtd")
    assert artifact.text.shape == (3, 4, TEXT_WIDTH) and artifact.vision.shape == (1, 2, VISION_WIDTH)
    assert artifact.metadata["dataset"] == "dtd" and artifact.class_names is None


def test_import_official_refuses_gaps_and_misfits(tmp_path):
    state = official_state_dict(depth_text=4, depth_vision=2)
    del state["text_encoder.transformer.resblocks.2.VPT_shallow_FIRST"]
    gapped = write_official_checkpoint(tmp_path / "gapped.pth", state)
    with pytest.raises(CheckpointError, match="blocks \\[1, 3\\]"):
        import_official(gapped, None)

    too_deep = write_official_checkpoint(tmp_path / "deep.pth", official_state_dict(depth_text=13, depth_vision=2))
    with pytest.raises(ArtifactMismatchError, match="depth_text: artifact 13 vs student text_depth 12"):
        import_official(too_deep, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()

    fits = write_official_checkpoint(tmp_path / "fits.pth", official_state_dict(depth_text=2, depth_vision=2))
    with pytest.raises(ArtifactError, match="'text' tensor has shape \\[2, 8, 512\\].*\\[2, 8, 64\\]"):
        import_official(fits, None, student="caspl-tiny-student")

    empty = tmp_path / "empty.pth"
    torch.save({"state_dict": {"image_encoder.conv1.weight": torch.ones(1)}, "epoch": 1}, empty)
    with pytest.raises(CheckpointError, match="no boosting prompts"):
        import_official(empty, None)


def test_read_class_names_rejects_empty_file(tmp_path):
    empty = tmp_path / "classes.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="classes.txt is empty"):
        read_class_names(empty)


# -- caspl import-official ---------------------------------------------------------------------------


@pytest.fixture
def commands(monkeypatch):
    """The parser imports every subcommand module; test these two independently of the others."""
    monkeypatch.setattr(cli, "COMMANDS", {name: cli.COMMANDS[name] for name in ("import-official", "inspect")})


def test_cli_import_official_then_inspect(tmp_path, capsys, commands):
    state = official_state_dict(depth_text=2, depth_vision=3)
    checkpoint = write_official_checkpoint(official_path(tmp_path, "eurosat"), state)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"class_{i}" for i in range(10)))
    out = tmp_path / "eurosat.safetensors"
    template = "a centered satellite photo of {}."
    argv = ["import-official", str(checkpoint), "-o", str(out), "--class-names", str(names), "--template", template]
    assert cli.main(argv) == 0
    assert "text 8 tokens x depth 2, vision 8 tokens x depth 3" in capsys.readouterr().out
    assert cli.main(["inspect", str(out)]) == 0
    report = capsys.readouterr().out
    for expected in ("dataset", "eurosat", "10: class_0, class_1", "source.file", "model.pth.tar-20", "(ok, metadata+tensors)", "validation"):
        assert expected in report, expected


def test_cli_import_official_bad_input(tmp_path, capsys, commands):
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"\x00garbage")
    assert cli.main(["import-official", str(bogus), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "bogus.pth" in capsys.readouterr().err
    assert cli.main(["import-official", str(tmp_path / "none.pth"), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert not (tmp_path / "o.safetensors").exists()
