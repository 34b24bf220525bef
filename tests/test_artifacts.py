"""Artifact store (safetensors + JSON metadata), boosting artifacts and ``caspl inspect``."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import logging  # noqa: E402

import pytest
import torch
from safetensors.torch import save_file

from caspl_plugin.artifacts import (
    ArtifactError,
    ArtifactMismatchError,
    BoostingArtifact,
    class_names_sha256,
    content_hash,
    load_artifact,
    save_artifact,
)
from caspl_plugin import cli
from caspl_plugin.artifacts import store
from caspl_plugin.cli import main
from caspl_plugin.clip import create_clip

METADATA = {"format": "test-kind", "format_version": 1, "nested": {"name": "é café", "values": [1, 2.5, None]}}


def _tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "weights": torch.randn(3, 4, generator=generator),
        "half": torch.randn(5, generator=generator).half(),
        "index": torch.arange(6).reshape(2, 3),
    }


@pytest.fixture(autouse=True)
def only_inspect_command(monkeypatch):
    """The parser imports every subcommand module; test ``inspect`` independently of the others."""
    monkeypatch.setattr(cli, "COMMANDS", {"inspect": cli.COMMANDS["inspect"]})


@pytest.fixture(scope="module")
def student_geometry():
    return create_clip("caspl-tiny-student").describe()


@pytest.fixture(scope="module")
def teacher_geometry():
    return create_clip("caspl-tiny-teacher").describe()


def _prompts(geometry, n_text=4, n_vision=3, depth_text=None, depth_vision=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    depth_text = depth_text or geometry["text_depth"]
    depth_vision = depth_vision or geometry["vision_depth"]
    text = torch.randn(depth_text, n_text, geometry["text_width"], generator=generator)
    vision = torch.randn(depth_vision, n_vision, geometry["vision_width"], generator=generator)
    return text, vision


def _artifact(geometry, **kwargs):
    text, vision = _prompts(geometry, **kwargs)
    return BoostingArtifact.from_group_tensors(
        text,
        vision,
        student=geometry,
        teacher="caspl-tiny-teacher",
        teacher_weights="random",
        template="a photo of a {}.",
        class_names=[f"class_{i}" for i in range(12)],
        dataset="toy",
        training={"lr": 0.0025, "epochs": 2},
    )


# -- store -------------------------------------------------------------------------------------------


def test_store_round_trip(tmp_path):
    tensors = _tensors()
    path = tmp_path / "sub" / "artifact.safetensors"
    digest = save_artifact(path, tensors, METADATA)
    loaded, metadata = load_artifact(path, expected_format="test-kind", supported_versions=(1,))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert metadata == dict(METADATA, content_sha256=digest, content_sha256_covers="metadata+tensors")
    assert digest == content_hash(loaded, metadata) != content_hash(loaded)
    assert os.listdir(path.parent) == ["artifact.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_content_hash_depends_on_bytes_names_and_dtype_not_order():
    tensors = _tensors()
    reordered = dict(reversed(list(tensors.items())))
    assert content_hash(tensors) == content_hash(reordered)
    changed = dict(tensors, weights=tensors["weights"].clone())
    changed["weights"][0, 0] += 1
    assert content_hash(changed) != content_hash(tensors)
    renamed = {("w" if k == "weights" else k): v for k, v in tensors.items()}
    assert content_hash(renamed) != content_hash(tensors)
    assert content_hash(dict(tensors, index=tensors["index"].int())) != content_hash(tensors)


def test_store_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "artifact.safetensors"
    save_artifact(path, {"x": torch.ones(2)}, METADATA)
    before = path.read_bytes()

    def fail_midway(fd):  # the temporary file is written but not yet in place
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "fsync", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(path, {"x": torch.zeros(2)}, METADATA)
    assert path.read_bytes() == before
    with pytest.raises(OSError):
        save_artifact(tmp_path / "new.safetensors", {"x": torch.zeros(2)}, METADATA)
    assert sorted(os.listdir(tmp_path)) == ["artifact.safetensors"]


def test_store_refuses_bad_metadata_on_save(tmp_path):
    with pytest.raises(ArtifactError, match="format"):
        save_artifact(tmp_path / "a.safetensors", {"x": torch.ones(1)}, {"format_version": 1})
    with pytest.raises(ArtifactError, match="JSON"):
        save_artifact(tmp_path / "a.safetensors", {"x": torch.ones(1)}, dict(METADATA, bad=torch.ones(1)))
    assert os.listdir(tmp_path) == []


def test_store_refuses_tampered_tensor_bytes(tmp_path):
    path = tmp_path / "artifact.safetensors"
    save_artifact(path, _tensors(), METADATA)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="content hash") as error:
        load_artifact(path)
    assert str(path) in str(error.value)
    tensors, _ = load_artifact(path, verify=False)  # inspection can still read it
    assert set(tensors) == set(_tensors())


def test_store_refuses_new_tensors_with_old_metadata(tmp_path):
    path = tmp_path / "artifact.safetensors"
    save_artifact(path, _tensors(), METADATA)
    header = {"caspl": json.dumps(load_artifact(path)[1])}
    save_file(dict(_tensors(), weights=torch.zeros(3, 4)), str(path), metadata=header)
    with pytest.raises(ArtifactError, match=f"{path}.*content hash"):
        load_artifact(path)


def test_store_refuses_wrong_format_and_version(tmp_path):
    path = tmp_path / "artifact.safetensors"
    save_artifact(path, _tensors(), dict(METADATA, format_version=2))
    with pytest.raises(ArtifactError, match="format version 2.*reads version\\(s\\) 1"):
        load_artifact(path, supported_versions=(1,))
    with pytest.raises(ArtifactError, match="'test-kind' artifact, expected 'caspl-boosting'"):
        load_artifact(path, expected_format="caspl-boosting")


def test_store_errors_for_missing_foreign_and_non_caspl_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_artifact(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ArtifactError, match="junk.safetensors is not a safetensors file"):
        load_artifact(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.ones(1)}, str(plain))
    with pytest.raises(ArtifactError, match="no 'caspl' metadata"):
        load_artifact(plain)


# -- boosting artifacts ------------------------------------------------------------------------------


def test_boosting_round_trip(tmp_path, student_geometry):
    artifact = _artifact(student_geometry)
    path = tmp_path / "boost.safetensors"
    digest = artifact.save(path)
    loaded = BoostingArtifact.load(path)
    assert loaded.path == str(path) and loaded.content_sha256 == digest
    assert torch.equal(loaded.text, artifact.text) and torch.equal(loaded.vision, artifact.vision)
    assert loaded.metadata == artifact.metadata
    meta = loaded.metadata
    assert meta["format"] == "caspl-boosting" and meta["format_version"] == 1
    assert meta["prompts"] == {"n_text": 4, "n_vision": 3, "depth_text": 3, "depth_vision": 3}
    assert meta["student"] == {k: student_geometry[k] for k in meta["student"]}
    assert meta["num_classes"] == 12 and meta["class_names_sha256"] == class_names_sha256(meta["class_names"])
    assert meta["teacher"] == {"name": "caspl-tiny-teacher", "weights": "random"}
    assert meta["library_version"]
    assert loaded.text.shape == (3, 4, 64) and loaded.vision.shape == (3, 3, 64)


def test_boosting_single_encoder_and_fp32_conversion(tmp_path, student_geometry):
    vision = torch.randn(2, 5, 64).half()
    artifact = BoostingArtifact.from_group_tensors(torch.zeros(3, 0, 64), vision, student=student_geometry)
    assert set(artifact.tensors) == {"vision"} and artifact.n_text == 0 and artifact.depth_text == 0
    assert artifact.vision.dtype == torch.float32 and torch.equal(artifact.vision, vision.float())
    artifact.save(tmp_path / "v.safetensors")
    assert BoostingArtifact.load(tmp_path / "v.safetensors").text is None


def test_boosting_load_checks_shapes_against_metadata(tmp_path, student_geometry):
    artifact = _artifact(student_geometry)
    metadata = dict(artifact.metadata, prompts=dict(artifact.metadata["prompts"], n_text=5))
    path = tmp_path / "inconsistent.safetensors"
    save_artifact(path, artifact.tensors, metadata)  # a valid hash, but shapes disagree with the metadata
    with pytest.raises(ArtifactError, match="'text' tensor has shape \\[3, 4, 64\\].*\\[3, 5, 64\\]"):
        BoostingArtifact.load(path)


def test_boosting_load_refuses_other_format_version(tmp_path, student_geometry):
    artifact = _artifact(student_geometry)
    path = tmp_path / "future.safetensors"
    save_artifact(path, artifact.tensors, dict(artifact.metadata, format_version=2))
    with pytest.raises(ArtifactError, match="format version 2"):
        BoostingArtifact.load(path)


def test_check_compatible_passes_for_fitting_students(student_geometry, caplog):
    _artifact(student_geometry).check_compatible(student_geometry)
    shallower = _artifact(student_geometry, depth_text=1, depth_vision=2)
    shallower.check_compatible(student_geometry)
    renamed = dict(student_geometry, backbone="other-name")
    with caplog.at_level(logging.WARNING):
        shallower.check_compatible(renamed)
    assert "learned on caspl-tiny-student" in caplog.text and "other-name" in caplog.text


def test_check_compatible_names_every_differing_field(tmp_path, student_geometry, teacher_geometry):
    artifact = _artifact(teacher_geometry)
    artifact.save(tmp_path / "teacher_sized.safetensors")
    with pytest.raises(ArtifactMismatchError) as error:
        BoostingArtifact.load(tmp_path / "teacher_sized.safetensors").check_compatible(student_geometry)
    message = str(error.value)
    assert "teacher_sized.safetensors" in message
    assert "text_width: artifact 96 vs student 64" in message
    assert "vision_width: artifact 96 vs student 64" in message
    assert "depth_text: artifact 4 vs student text_depth 3" in message
    assert "depth_vision: artifact 4 vs student vision_depth 3" in message
    assert isinstance(error.value, ValueError)


def test_check_compatible_ignores_encoders_without_prompts(student_geometry, teacher_geometry):
    student = dict(student_geometry, vision_width=96)
    text_only = BoostingArtifact.from_group_tensors(torch.randn(2, 4, 64), None, student=student)
    text_only.check_compatible(student_geometry)
    with pytest.raises(ArtifactMismatchError, match="^(?!.*vision).*text_width: artifact 64 vs student 96"):
        text_only.check_compatible(teacher_geometry)


# -- caspl inspect -----------------------------------------------------------------------------------


def test_inspect_prints_metadata(tmp_path, student_geometry, capsys):
    path = tmp_path / "boost.safetensors"
    digest = _artifact(student_geometry).save(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "caspl-boosting",
        "student.text_width",
        "prompts.depth_vision",
        "teacher.name",
        "12: class_0, class_1, class_2, class_3, class_4, ... (+7)",
        "tensor.text",
        "[3, 4, 64] float32",
        f"{digest} (ok, metadata+tensors)",
        "validation           : ok",
    ):
        assert expected in out, expected
    assert "class_11" not in out


def test_inspect_json(tmp_path, student_geometry, capsys):
    path = tmp_path / "boost.safetensors"
    artifact = _artifact(student_geometry)
    artifact.save(path)
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == artifact.metadata


def test_inspect_reports_mismatch_and_bad_files(tmp_path, student_geometry, capsys):
    path = tmp_path / "boost.safetensors"
    _artifact(student_geometry).save(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert "(MISMATCH, metadata+tensors)" in captured.out and "MISMATCH" in captured.err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 32)
    assert main(["inspect", str(junk)]) == 2
    assert "junk.safetensors" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
