"""Integrity of artifacts: the hash covers the metadata, `caspl inspect` validates every kind, recorded
weights are verified by digest, and corrupted files only ever raise the package's own errors."""
import json
import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from caspl_plugin.artifacts import ArtifactError, BoostingArtifact, content_hash, load_artifact, save_artifact
from caspl_plugin.artifacts.store import LEGACY_HASH_NOTICE
from caspl_plugin.boosting import BoostingConfig, make_boosting_group
from caspl_plugin.cli import main as caspl
from caspl_plugin.clip import create_clip
from caspl_plugin.clip import weights as weights_module
from caspl_plugin.inference import load_classifier, save_classifier
from caspl_plugin.methods import get_method
from caspl_plugin.prompts import PromptedCLIP

GEOMETRY = {"backbone": "caspl-tiny-student", "arch": "caspl-tiny-student", "text_width": 64, "text_depth": 3,
            "vision_width": 64, "vision_depth": 3}
CLASSES = ["red circle", "blue square", "green star"]


def boosting_artifact(path):
    generator = torch.Generator().manual_seed(0)
    artifact = BoostingArtifact.from_group_tensors(
        torch.randn(2, 2, 64, generator=generator), torch.randn(1, 2, 64, generator=generator), student=GEOMETRY,
        teacher="caspl-tiny-teacher", class_names=CLASSES, dataset="toy", training={"epochs": 1},
    )
    artifact.save(path)
    return path


def write_student_weights(path, seed=0):
    torch.manual_seed(seed)
    state = create_clip("caspl-tiny-student", "random").model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return write_student_weights(tmp_path_factory.mktemp("weights") / "student.safetensors")


@pytest.fixture
def classifier(weights_file, tmp_path):
    clip = PromptedCLIP(create_clip("caspl-tiny-student", str(weights_file)))
    group = make_boosting_group(clip, BoostingConfig(2, 2, 2, 1), learnable=False)
    model = get_method("coop")(clip, CLASSES, n_ctx=2, boosting=group)
    path = tmp_path / "clf.safetensors"
    save_classifier(path, model)
    return path


def edit_header(path, edit):
    """Rewrite the JSON header with ``edit(metadata)`` applied, keeping the recorded hash."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = json.loads(handle.metadata()["caspl"])
    edit(metadata)
    save_file(tensors, str(path), metadata={"caspl": json.dumps(metadata)})


# -- the hash covers the metadata --------------------------------------------------------------------


BOOSTING_EDITS = {
    "width": lambda m: m["student"].update(text_width=96),
    "class count": lambda m: m.update(num_classes=4),
    "class names": lambda m: m.update(class_names=["red circle", "blue square", "yellow star"]),
    "training": lambda m: m["training"].update(epochs=20),
}
CLASSIFIER_EDITS = {
    "width": lambda m: m["student"].update(vision_width=128),
    "class names": lambda m: m.update(class_names=["a", "b", "c"]),
    "class count": lambda m: m.update(num_classes=2),
    "boosting hash": lambda m: m["boosting"].update(sha256="0" * 64),
    "weights path": lambda m: m["student"].update(weights="file:/elsewhere/ViT-B-16.pt"),
    "weights digest": lambda m: m["student"].update(weights_sha256="f" * 64),
}


@pytest.mark.parametrize("edit", sorted(BOOSTING_EDITS))
def test_boosting_header_edits_are_refused_by_inspect_and_the_loader(edit, tmp_path, capsys):
    path = boosting_artifact(tmp_path / "boost.safetensors")
    assert caspl(["inspect", str(path)]) == 0
    edit_header(path, BOOSTING_EDITS[edit])
    assert caspl(["inspect", str(path)]) == 2
    assert "content hash MISMATCH" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="metadata and tensors do not match the content hash"):
        BoostingArtifact.load(path)


@pytest.mark.parametrize("edit", sorted(CLASSIFIER_EDITS))
def test_classifier_header_edits_are_refused_by_inspect_and_the_loader(edit, classifier, capsys):
    assert caspl(["inspect", str(classifier)]) == 0
    assert "validation" in capsys.readouterr().out
    edit_header(classifier, CLASSIFIER_EDITS[edit])
    assert caspl(["inspect", str(classifier)]) == 2
    assert "content hash MISMATCH" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="content hash"):
        load_classifier(classifier)


def test_inconsistent_metadata_with_a_valid_hash_fails_validation(classifier, capsys):
    tensors, metadata = load_artifact(classifier)
    save_artifact(classifier, tensors, {**metadata, "num_classes": 5})
    assert caspl(["inspect", str(classifier)]) == 2
    captured = capsys.readouterr()
    assert "validation" in captured.out and "num_classes is 5 but there are 3 class names" in captured.err
    with pytest.raises(ArtifactError, match="num_classes is 5"):
        load_classifier(classifier)


def test_unknown_settings_key_is_an_artifact_error(classifier, capsys):
    tensors, metadata = load_artifact(classifier)
    save_artifact(classifier, tensors, {**metadata, "settings": {**metadata["settings"], "n_ctxx": 4}})
    with pytest.raises(ArtifactError, match=r"unknown setting\(s\) \['n_ctxx'\] for method 'coop'"):
        load_classifier(classifier)
    assert caspl(["inspect", str(classifier)]) == 2
    assert "n_ctxx" in capsys.readouterr().err


def test_older_files_are_read_with_a_notice(tmp_path, caplog, capsys):
    path = boosting_artifact(tmp_path / "boost.safetensors")
    tensors, metadata = load_artifact(path)
    del metadata["content_sha256_covers"]
    metadata["content_sha256"] = content_hash(tensors)  # what older versions recorded: the tensors only
    save_file(tensors, str(path), metadata={"caspl": json.dumps(metadata)})
    with caplog.at_level(logging.WARNING):
        assert BoostingArtifact.load(path).metadata["content_sha256"] == content_hash(tensors)
    assert "written by an older version" in caplog.text and "metadata is not covered" in caplog.text
    assert caspl(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(ok, tensors only)" in out and LEGACY_HASH_NOTICE in out
    tensors["text"] = tensors["text"] + 1  # the tensors are still protected
    save_file(tensors, str(path), metadata={"caspl": json.dumps(metadata)})
    with pytest.raises(ArtifactError, match="its tensors do not match"):
        BoostingArtifact.load(path)


# -- recorded weights are verified -------------------------------------------------------------------


def test_recorded_weights_are_used_only_with_their_digest(classifier, weights_file, tmp_path, capsys):
    metadata = load_artifact(classifier)[1]
    assert metadata["student"]["weights_sha256"] == weights_module.file_sha256(weights_file)
    assert load_classifier(classifier).class_names == tuple(CLASSES)

    replaced = write_student_weights(tmp_path / "replaced.safetensors", seed=1)
    tensors, metadata = load_artifact(classifier)
    metadata["student"]["weights"] = f"file:{replaced}"
    save_artifact(classifier, tensors, metadata)  # a consistent file that names other weights
    with pytest.raises(ArtifactError, match=r"replaced.safetensors do not match the digest.*--weights"):
        load_classifier(classifier)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)  # a readable image: the model is what fails
    assert caspl(["classify", "--model", str(classifier), str(image)]) == 2
    assert "do not match the digest" in capsys.readouterr().err
    assert caspl(["inspect", str(classifier)]) == 2
    assert "student weights" in capsys.readouterr().err
    explicit = load_classifier(classifier, weights=str(replaced))  # the user's choice is used as given
    assert torch.equal(explicit.clip.clip.visual.conv1.weight, create_clip("caspl-tiny-student", str(replaced))
                       .model.visual.conv1.weight)

    metadata["student"].update(weights=f"file:{weights_file}", weights_sha256=None)
    save_artifact(classifier, tensors, metadata)
    with pytest.raises(ArtifactError, match=r"records no digest.*cannot be verified.*--weights"):
        load_classifier(classifier)


def test_package_and_random_weights_record_what_they_can(tmp_path):
    for name, expected in (("toy-student", "package"), ("caspl-tiny-student", None)):
        clip = PromptedCLIP(create_clip(name))
        model = get_method("zeroshot")(clip, CLASSES)
        path = tmp_path / f"{name}.safetensors"
        save_classifier(path, model)
        student = load_artifact(path)[1]["student"]
        if expected == "package":
            assert student["weights"] == "package:toy-student"
            assert student["weights_sha256"] == weights_module.file_sha256(weights_module.package_weights_file(name))
        else:
            assert student["weights"] == "random" and student["weights_sha256"] is None
        assert load_classifier(path).class_names == tuple(CLASSES)


def test_file_digests_are_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = weights_module.file_sha256(path)
    monkeypatch.setattr(weights_module, "open", lambda *a, **k: pytest.fail("re-read"), raising=False)
    assert weights_module.file_sha256(path) == first
    monkeypatch.undo()
    path.write_bytes(b"b" * 1001)
    assert weights_module.file_sha256(path) != first


# -- random corruption only raises the package's errors ----------------------------------------------


@pytest.fixture(scope="module")
def artifact_bytes(tmp_path_factory):
    return boosting_artifact(tmp_path_factory.mktemp("fuzz") / "boost.safetensors").read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_mutations_raise_only_artifact_errors(artifact_bytes, tmp_path, data):
    mutated = bytearray(artifact_bytes)
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(mutated) - 1), st.integers(0, 255)), min_size=1,
                               max_size=4))
    for position, value in edits:
        mutated[position] = value
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))]
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(mutated))
    if bytes(mutated) == artifact_bytes:
        BoostingArtifact.load(path)
        return
    try:
        BoostingArtifact.load(path)
    except ArtifactError:
        pass
